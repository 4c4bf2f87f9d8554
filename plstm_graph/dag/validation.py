"""Checks of the index tensors every entry point takes: ``edge_index``, ``line_index`` and a
precomputed ``node_level``. Bad input raises ``TypeError`` (wrong type or dtype) or
``ValueError`` (wrong shape, device or values) naming what is wrong."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _common


def _check_index_tensor(index: object, name: str) -> Tensor:
    if not isinstance(index, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(index).__name__}")
    if index.dtype != torch.long:
        raise TypeError(f"{name} must have dtype torch.long (int64), got {index.dtype}")
    if index.dim() != 2 or index.size(0) != 2:
        raise ValueError(f"{name} must have shape [2, num], got {list(index.shape)}")
    return index


def _num_nodes_arg(num_nodes: Optional[int]) -> int:
    """``num_nodes`` as the native ops take it: -1 for "max id + 1"."""
    if num_nodes is None:
        return -1
    if not isinstance(num_nodes, int) or isinstance(num_nodes, bool) or num_nodes < 0:
        raise ValueError(f"num_nodes must be a non-negative int, got {num_nodes!r}")
    return num_nodes


def check_edge_index(edge_index: Tensor, num_nodes: Optional[int] = None,
                     allow_self_loops: bool = False) -> int:
    """Validate ``edge_index`` and return the number of nodes.

    Raises ``TypeError`` for a non-tensor or non-``long`` index and ``ValueError`` for a wrong
    shape, a negative or out-of-range id, or a self-loop (which is a cycle of length one).
    """
    _check_index_tensor(edge_index, "edge_index")
    num_edges = edge_index.size(1)
    native_num_nodes = _num_nodes_arg(num_nodes)
    if _common.native_cpu(edge_index):  # one pass instead of four torch calls and three syncs
        return torch.ops.plstm_graph.check_edge_index(edge_index, native_num_nodes,
                                                      allow_self_loops)
    if num_nodes is None:
        num_nodes = int(edge_index.max()) + 1 if num_edges > 0 else 0
    if num_edges == 0:
        return num_nodes
    lo, hi = int(edge_index.min()), int(edge_index.max())
    if lo < 0:
        raise ValueError(f"edge_index contains a negative node id ({lo})")
    if hi >= num_nodes:
        raise ValueError(f"edge_index contains node id {hi}, out of range for "
                         f"{num_nodes} nodes")
    if not allow_self_loops:
        e = _first(edge_index[0] == edge_index[1])
        if e is not None:
            raise ValueError(f"edge_index contains a self-loop at node {int(edge_index[0, e])} "
                             f"(edge {e}); a DAG has none")
    return num_nodes


def check_line_index(edge_index: Tensor, line_index: Tensor) -> None:
    """Validate that every arc ``a -> b`` of ``line_index`` joins edges that meet."""
    _check_index_tensor(line_index, "line_index")
    if line_index.device != edge_index.device:
        raise ValueError(f"line_index is on {line_index.device} but edge_index is on "
                         f"{edge_index.device}")
    num_edges = edge_index.size(1)
    if line_index.numel() == 0:
        return
    lo, hi = int(line_index.min()), int(line_index.max())
    if lo < 0:
        raise ValueError(f"line_index contains a negative edge id ({lo})")
    if hi >= num_edges:
        raise ValueError(f"line_index contains edge id {hi}, out of range for "
                         f"{num_edges} edges")
    j = _first(edge_index[1, line_index[0]] != edge_index[0, line_index[1]])
    if j is not None:
        a, b = int(line_index[0, j]), int(line_index[1, j])
        raise ValueError(
            f"line_index arc {j} ({a} -> {b}) joins edges that do not meet: edge {a} ends at "
            f"node {int(edge_index[1, a])} but edge {b} starts at node {int(edge_index[0, b])}")


def check_node_level(edge_index: Tensor, node_level: Tensor, num_nodes: int) -> None:
    """Validate a precomputed leveling: every edge must climb at least one level.

    This is exactly the condition the scan needs, and it implies that the graph is acyclic.
    """
    _check_level_tensor(edge_index, node_level, num_nodes)
    if num_nodes > 0 and int(node_level.min()) < 0:
        raise ValueError("node_level contains a negative level")
    if edge_index.size(1) == 0:
        return
    e = _first(node_level[edge_index[0]] >= node_level[edge_index[1]])
    if e is not None:
        u, w = int(edge_index[0, e]), int(edge_index[1, e])
        raise ValueError(
            f"node_level is not a topological leveling of edge_index: edge {e} ({u} -> {w}) "
            f"goes from level {int(node_level[u])} to level {int(node_level[w])}")


def _check_level_tensor(edge_index: Tensor, node_level: Tensor, num_nodes: int) -> None:
    """Type, shape and device of a leveling (no look at its values)."""
    if not isinstance(node_level, Tensor):
        raise TypeError(f"node_level must be a torch.Tensor, got {type(node_level).__name__}")
    if node_level.dtype != torch.long:
        raise TypeError(f"node_level must have dtype torch.long, got {node_level.dtype}")
    if node_level.dim() != 1 or node_level.numel() != num_nodes:
        raise ValueError(f"node_level must have shape [{num_nodes}], got "
                         f"{list(node_level.shape)}")
    if node_level.device != edge_index.device:
        raise ValueError(f"node_level is on {node_level.device} but edge_index is on "
                         f"{edge_index.device}")


def _first(mask: Tensor) -> Optional[int]:
    """The position of the first True in a 1-D mask (the entry an error message names)."""
    hits = mask.nonzero()
    return int(hits[0, 0]) if hits.numel() > 0 else None
