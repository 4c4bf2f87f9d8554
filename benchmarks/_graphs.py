"""Graph builders and random op inputs shared by the benchmarks and the tests.

This module is meant for sharing: ``benchmarks/*.py`` import it directly and
``tests/harness.py`` re-exports it, so a benchmark never imports a test module. Every builder is
seeded and returns ``[2, E]`` long edges of a DAG whose node ids are a random permutation of a
hidden topological order (unless ``shuffle=False``), with the edges in random order, so that no
code under test can lean on ids or edge order.
"""
from __future__ import annotations

import random
from typing import Iterable, Tuple, Union

import torch
from torch import Tensor

__all__ = ["random_dag", "disjoint", "chain_dag", "windowed_dag", "uniform_dag",
           "butterfly_dag", "random_inputs"]


def random_dag(num_nodes: int, edge_prob: float = 0.3,
               seed: Union[int, random.Random] = 0, max_span=None,
               shuffle: bool = True) -> Tensor:
    """Every forward pair of a hidden order is an edge with probability ``edge_prob`` (only
    pairs at most ``max_span`` apart when given). ``seed`` is an int or a ``random.Random``
    to draw from."""
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    perm = list(range(num_nodes))
    if shuffle:
        rng.shuffle(perm)
    edges = []
    for i in range(num_nodes):
        hi = num_nodes if max_span is None else min(num_nodes, i + 1 + max_span)
        for j in range(i + 1, hi):
            if rng.random() < edge_prob:
                edges.append((perm[i], perm[j]))
    rng.shuffle(edges)
    if not edges:
        return torch.empty(2, 0, dtype=torch.long)
    return torch.tensor(edges, dtype=torch.long).t().contiguous()


def disjoint(graphs: Iterable[Tuple[Tensor, int]]) -> Tuple[Tensor, int]:
    """Disjoint union of ``(edge_index, num_nodes)`` pairs, in the order given (as PyG's
    collation lays out a batch): ``(edge_index, total_nodes)``."""
    parts, off = [], 0
    for edge_index, n in graphs:
        parts.append(edge_index + off)
        off += n
    if not parts:
        return torch.empty(2, 0, dtype=torch.long), 0
    return torch.cat(parts, 1), off


# ---------------------------------------------------------------------------------------------
# large graphs (vectorised)
# ---------------------------------------------------------------------------------------------
def chain_dag(length: int, seed: int = 0) -> Tuple[Tensor, Tensor]:
    """A path of ``length`` edges over ``length + 1`` shuffled node ids, edges in shuffled
    order. Returns ``(edge_index, nodes)`` with ``nodes`` the node ids along the path."""
    g = torch.Generator().manual_seed(seed)
    nodes = torch.randperm(length + 1, generator=g)
    edge_index = torch.stack([nodes[:-1], nodes[1:]])
    return edge_index[:, torch.randperm(length, generator=g)].contiguous(), nodes


def _finish(key: Tensor, num_nodes: int, num_edges: int, g: torch.Generator) -> Tensor:
    """Distinct pair keys ``lo * N + hi`` -> ``num_edges`` of them behind shuffled ids."""
    key = torch.unique(key)
    key = key[torch.randperm(key.numel(), generator=g)[:num_edges]]
    perm = torch.randperm(num_nodes, generator=g)
    return torch.stack([perm[key // num_nodes], perm[key % num_nodes]]).contiguous()


def windowed_dag(num_nodes: int, num_edges: int, window: int = 1000, seed: int = 0) -> Tensor:
    """Every edge joins a node to a uniformly random one among the ``window`` nodes before it
    (in the hidden order): a few in-edges per node, long paths, about ``N / window`` wide."""
    g = torch.Generator().manual_seed(seed)
    m = int(num_edges * 1.1) + 16
    child = torch.randint(1, num_nodes, (m,), generator=g)
    parent = child - torch.randint(1, window + 1, (m,), generator=g)
    ok = parent >= 0
    return _finish(parent[ok] * num_nodes + child[ok], num_nodes, num_edges, g)


def uniform_dag(num_nodes: int, num_edges: int, seed: int = 0) -> Tensor:
    """Edges between uniformly random pairs, oriented along the hidden order: shallow, with
    many source nodes and hence many roots in the line graph."""
    g = torch.Generator().manual_seed(seed)
    m = int(num_edges * 1.1) + 16
    a = torch.randint(0, num_nodes, (m,), generator=g)
    b = torch.randint(0, num_nodes, (m,), generator=g)
    ok = a != b
    lo, hi = torch.minimum(a, b)[ok], torch.maximum(a, b)[ok]
    return _finish(lo * num_nodes + hi, num_nodes, num_edges, g)


def butterfly_dag(log_width: int, shuffle: bool = True) -> Tensor:
    """The FFT butterfly with ``2 ** log_width`` lanes: a multitree whose line-graph root sets
    grow to the full width (the case where sparse root sets must turn into bitsets). Without
    ``shuffle`` node ``layer * width + lane`` and the edges in layer order."""
    width = 1 << log_width
    lane = torch.arange(width)
    parts = []
    for layer in range(log_width):
        for partner in (lane, lane ^ (1 << layer)):
            parts.append(torch.stack([layer * width + lane, (layer + 1) * width + partner]))
    edge_index = torch.cat(parts, 1) if parts else torch.empty(2, 0, dtype=torch.long)
    if not shuffle:
        return edge_index.contiguous()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm((log_width + 1) * width, generator=g)
    edge_index = perm[edge_index]
    return edge_index[:, torch.randperm(edge_index.size(1), generator=g)].contiguous()


# ---------------------------------------------------------------------------------------------
# op inputs
# ---------------------------------------------------------------------------------------------
def random_inputs(num_nodes: int, num_edges: int, num_arcs: int, heads: int = 2, kdim: int = 3,
                  vdim: int = 4, seed: int = 0, dtype=torch.float64,
                  requires_grad: bool = False) -> dict:
    """The seven inputs of ``plstm_dag`` by name, drawn in float64 and cast: queries, keys and
    values in [-1, 1], source, mark and direct gates in [0, 1], transitions in [-0.6, 0.6]
    (``num_arcs`` rows: arcs, or nodes for node-level transitions)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, lo=-1.0, hi=1.0):
        x = torch.rand(*shape, generator=g, dtype=torch.float64) * (hi - lo) + lo
        return x.to(dtype).requires_grad_(requires_grad)

    return dict(
        query=r(num_nodes, heads, kdim), key=r(num_nodes, heads, kdim),
        value=r(num_nodes, heads, vdim), source=r(num_edges, heads, lo=0, hi=1),
        transition=r(num_arcs, heads, lo=-0.6, hi=0.6), mark=r(num_edges, heads, lo=0, hi=1),
        direct=r(num_nodes, heads, lo=0, hi=1))
