"""How the layers take an ordinary PyG graph: orientation of undirected input by node id, and
the cache that lets a layer reuse the preparation of a graph it sees again."""
from __future__ import annotations

import weakref
from typing import Optional, Tuple

import torch
from torch import Tensor


def orient_by_id(edge_index: Tensor, num_nodes: int) -> Tuple[Tensor, Tensor]:
    """The DAG of an undirected graph by node id (as :func:`~plstm_graph.to_dag`) and, for every
    input edge, the DAG edge it became (both stored directions map to one DAG edge)."""
    lo = torch.minimum(edge_index[0], edge_index[1])
    hi = torch.maximum(edge_index[0], edge_index[1])
    key, inverse = torch.unique(lo * max(num_nodes, 1) + hi, return_inverse=True)
    dag = torch.stack([key // max(num_nodes, 1), key % max(num_nodes, 1)])
    return dag, inverse


def first_occurrence(inverse: Tensor, size: int) -> Tensor:
    """For every DAG edge the first input edge that maps to it (whose attributes it keeps)."""
    first = torch.full((size,), inverse.numel(), dtype=torch.long, device=inverse.device)
    return first.scatter_reduce_(0, inverse, torch.arange(inverse.numel(),
                                                          device=inverse.device), "amin")


def is_undirected(edge_index: Tensor, num_nodes: int) -> bool:
    """Whether every edge is stored in both directions (PyG's undirected convention)."""
    if edge_index.numel() == 0:
        return False
    n = max(num_nodes, 1)
    fwd = torch.sort(edge_index[0] * n + edge_index[1]).values
    rev = torch.sort(edge_index[1] * n + edge_index[0]).values
    return bool(torch.equal(fwd, rev))


class GraphCache:
    """The last prepared graph of a layer, reused while the very same ``edge_index`` tensor,
    unmodified, comes back (node-level tasks call a layer on one graph every step).

    Keyed on the tensor object (a weak reference, so a freed tensor whose address is reused
    never hits) and its version counter (bumped by every in-place write), which makes it safe
    to leave on: a different or modified ``edge_index`` is prepared again.
    """

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self._ref = None
        self._version = -1
        self._key = None
        self._value = None

    def get(self, edge_index: Tensor, key) -> Optional[object]:
        if (self._ref is not None and self._ref() is edge_index and
                self._version == edge_index._version and self._key == key):
            return self._value
        return None

    def put(self, edge_index: Tensor, key, value) -> None:
        self._ref = weakref.ref(edge_index)
        self._version = edge_index._version
        self._key = key
        self._value = value
