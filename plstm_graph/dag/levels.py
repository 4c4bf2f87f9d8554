"""Topological levels: :func:`topological_levels` and its backends (the native C++ pass, the
torch Kahn's algorithm, networkx as an independent reference)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _common
from ._common import csr as _csr
from .validation import _check_index_tensor, _num_nodes_arg, check_edge_index


def _node_on_cycle(edge_index: Tensor, remaining: Tensor) -> int:
    """A node on a directed cycle, given a boolean mask of nodes Kahn's algorithm never freed.

    Every such node has a predecessor that is also never freed, so walking predecessors must
    revisit a node, and the first revisited node lies on a cycle.
    """
    src, dst = edge_index[0].tolist(), edge_index[1].tolist()
    rem = remaining.tolist()
    pred = {}
    for u, w in zip(src, dst):
        if rem[u] and rem[w] and w not in pred:
            pred[w] = u
    node = int(remaining.nonzero()[0, 0])
    seen = set()
    while node not in seen:
        seen.add(node)
        node = pred[node]
    return node


LEVEL_METHODS = ("auto", "native", "torch", "networkx")


def topological_levels(edge_index: Tensor, num_nodes: Optional[int] = None,
                       method: str = "auto") -> Tensor:
    """Topological generation of every node: sources are level 0, and every other node sits one
    level above its highest predecessor (the generations of ``networkx.topological_generations``).

    Args:
        edge_index: ``[2, E]`` directed edges.
        num_nodes: number of nodes (default ``max id + 1``).
        method: ``"auto"`` (``"native"`` where the compiled ops are loaded and the tensor is
            on the CPU, else ``"torch"``), ``"native"`` (Kahn's algorithm in C++, one pass),
            ``"torch"`` (Kahn's algorithm one level at a time: a vectorised step for a wide
            level, a short Python loop for a narrow one) or ``"networkx"`` (an independent
            reference for the tests; needs networkx). All four give the same levels.

    Raises ``ValueError`` naming a node on a directed cycle.
    """
    if method not in LEVEL_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {LEVEL_METHODS}")
    if method == "auto":
        method = "native" if _common.native_cpu(edge_index) else "torch"
    if method == "native":
        from ..ops import native

        if not native.WITH_NATIVE:
            raise RuntimeError(f"method='native' was requested but "
                               f"{native.unavailable_reason(edge_index.device)}")
        _check_index_tensor(edge_index, "edge_index")
        return torch.ops.plstm_graph.topological_levels(
            edge_index.cpu(), _num_nodes_arg(num_nodes)).to(edge_index.device)
    num_nodes = check_edge_index(edge_index, num_nodes)
    device = edge_index.device
    if method == "networkx":
        import networkx as nx

        graph = nx.DiGraph()
        graph.add_nodes_from(range(num_nodes))
        graph.add_edges_from(edge_index.t().tolist())
        level = torch.empty(num_nodes, dtype=torch.long)
        try:
            for depth, generation in enumerate(nx.topological_generations(graph)):
                level[generation] = depth
        except nx.NetworkXUnfeasible:
            cycle = nx.find_cycle(graph)
            raise ValueError(f"edge_index has a directed cycle through node {cycle[0][0]}; "
                             f"pLSTM needs a DAG") from None
        return level.to(device)
    return _levels_torch(edge_index, num_nodes)


_SMALL_FRONTIER = 256  # fan-out below which one level is cheaper in Python than in torch


def _levels_torch(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Kahn's algorithm one level at a time, on the CPU.

    A level whose frontier has many out-edges is one vectorised step (gather, ``index_add_``,
    ``unique``); a level with few (a deep, narrow DAG such as a long chain, where a torch step's
    fixed cost of some 50 microseconds would dominate) is a short Python loop that updates the
    same in-degree buffer through a NumPy view. Without NumPy every level is a torch step.
    """
    device = edge_index.device
    edge_index = edge_index.cpu()
    src, dst = edge_index[0], edge_index[1]
    ptr, by_src = _csr(src, num_nodes)
    heads_by_src = dst[by_src]
    indeg = torch.bincount(dst, minlength=num_nodes)
    level = torch.full((num_nodes,), -1, dtype=torch.long)
    frontier = (indeg == 0).nonzero().view(-1)
    try:
        import numpy  # noqa: F401

        indeg_np, level_np = indeg.numpy(), level.numpy()
    except (ImportError, RuntimeError):
        indeg_np = level_np = None
    ptr_list = heads_list = None
    depth = 0
    while True:
        if isinstance(frontier, list):
            if not frontier:
                break
            fan = sum(ptr_list[u + 1] - ptr_list[u] for u in frontier)
            if fan > _SMALL_FRONTIER:
                frontier = torch.tensor(frontier, dtype=torch.long)
        elif (indeg_np is not None and frontier.numel() <= 64 and
              int((ptr[frontier + 1] - ptr[frontier]).sum()) <= _SMALL_FRONTIER):
            if ptr_list is None:
                ptr_list, heads_list = ptr.tolist(), heads_by_src.tolist()
            frontier = frontier.tolist()
        if isinstance(frontier, list):  # a narrow level: plain Python on the shared buffers
            nxt = []
            for u in frontier:
                level_np[u] = depth
                for w in heads_list[ptr_list[u]:ptr_list[u + 1]]:
                    left = indeg_np[w] - 1
                    indeg_np[w] = left
                    if left == 0:
                        nxt.append(w)
            frontier = nxt
            depth += 1
            continue
        if frontier.numel() == 0:
            break
        level[frontier] = depth
        fan = ptr[frontier + 1] - ptr[frontier]
        total = int(fan.sum())
        if total == 0:
            break
        start = torch.cumsum(fan, 0) - fan
        at = torch.arange(total) + torch.repeat_interleave(ptr[frontier] - start, fan,
                                                         output_size=total)
        heads = heads_by_src[at]
        indeg.index_add_(0, heads, torch.full_like(heads, -1))
        candidates = torch.unique(heads)
        frontier = candidates[indeg[candidates] == 0]
        depth += 1
    remaining = level < 0
    if bool(remaining.any()):
        node = _node_on_cycle(edge_index, remaining)
        raise ValueError(f"edge_index has a directed cycle through node {node}; "
                         f"pLSTM needs a DAG")
    return level.to(device)
