"""Batching prepared graphs: the same ``Batch`` as PyG's, built with fewer operations.

A :class:`~plstm_graph.DAGData` carries seven index and level tensors besides ``x``,
``edge_index`` and ``y``. PyG's ``Batch.from_data_list`` adds every graph's offset to every
index tensor one graph at a time (one small op per graph and attribute) and asks each graph's
``__inc__``/``__cat_dim__`` per attribute; on batches of 32 molecules that is a few hundred
small tensor ops, about a tenth of a pLSTM training step. :func:`collate_dags` does one
``cat`` and one offset per attribute and returns exactly what ``Batch.from_data_list`` returns
(the same tensors and dtypes, the same ``batch``/``ptr``, and the same ``_slice_dict`` and
``_inc_dict``, so ``batch[i]``, ``batch.to_data_list()`` and ``batch.get_example(i)`` work).

The fast path knows the collation rules of :class:`~torch_geometric.data.Data` and
``DAGData``. Anything else goes to PyG unchanged: other graph classes (subclasses may
override ``__inc__``/``__cat_dim__``), heterogeneous graphs, non-tensor, sparse or nested
attributes, attributes whose dtype differs between graphs, ``*batch*`` and ``ptr`` keys, and
``DataLoader`` worker processes (PyG collates those into shared memory).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader

from .transforms import _EDGE_OFFSET_KEYS, DAGData

_FAST_CLASSES = (Data, DAGData)


def _incremented(cls, key: str) -> str:
    """What ``cls.__inc__`` offsets ``key`` by: ``"nodes"``, ``"edges"`` (the DAG edge count,
    DAGData's line-graph indices) or ``""`` (nothing)."""
    if cls is DAGData and key in _EDGE_OFFSET_KEYS:
        return "edges"
    if "index" in key or key == "face":
        return "nodes"
    return ""


def _plain_tensor(value) -> bool:
    return type(value) is Tensor and value.layout == torch.strided and not value.is_nested


def _cumsum0(sizes: Tensor) -> Tensor:
    out = sizes.new_zeros(sizes.numel() + 1)
    torch.cumsum(sizes, 0, out=out[1:])
    return out


def _fast_path_ok(data_list: Sequence, exclude: set) -> bool:
    cls = type(data_list[0])
    if cls not in _FAST_CLASSES or torch.utils.data.get_worker_info() is not None:
        return False
    first = data_list[0]._store._mapping
    for key, value in first.items():
        if key in exclude or key == "num_nodes":
            continue
        if key == "ptr" or "batch" in key:
            return False
        if not _plain_tensor(value):
            return False
        if value.dtype == torch.bool and _incremented(cls, key):
            return False  # bool + an int offset promotes; PyG's per-graph add decides
    for data in data_list[1:]:
        if type(data) is not cls:
            return False
        other = data._store._mapping
        # PyG ignores keys that only later graphs have; let it decide those
        if len(other) != len(first):
            return False
        for key, value in first.items():
            if key in exclude or key == "num_nodes":
                continue
            mine = other[key]
            if not _plain_tensor(mine) or mine.dtype != value.dtype:
                return False
    return True


def _check_graphs(data_list: Sequence, exclude: set) -> None:
    first = data_list[0]._store._mapping
    for i, data in enumerate(data_list):
        if not isinstance(data, Data):
            raise TypeError(f"graph {i} of the batch is a {type(data).__name__}, graph 0 a "
                            f"{type(data_list[0]).__name__}; a batch holds graphs of one kind")
        lacks = [k for k in first if k not in exclude and k not in data._store._mapping]
        if lacks:
            raise ValueError(f"graph {i} of the batch has no attribute {lacks[0]!r}, which graph "
                             f"0 has; every graph of a batch needs the same attributes (apply "
                             f"the same transform to all of them, or exclude_keys="
                             f"[{lacks[0]!r}])")


def collate_dags(data_list: Sequence[Data], follow_batch: Optional[Sequence[str]] = None,
                 exclude_keys: Optional[Sequence[str]] = None) -> Batch:
    """``Batch.from_data_list(data_list, follow_batch, exclude_keys)``, computed with one
    concatenation and one offset per attribute for :class:`~torch_geometric.data.Data` and
    :class:`~plstm_graph.DAGData` graphs (see the module docstring; other inputs go to PyG).

    Raises:
        ValueError: for an empty list, or a graph that lacks an attribute of graph 0.
        TypeError: for a list that mixes graphs with other objects.
    """
    if not isinstance(data_list, (list, tuple)):
        data_list = list(data_list)
    if len(data_list) == 0:
        raise ValueError("collate_dags needs at least one graph, got an empty list")
    exclude = set(exclude_keys or ())
    follow = set(follow_batch or ())
    if type(data_list[0]) in _FAST_CLASSES:
        _check_graphs(data_list, exclude)
    if not _fast_path_ok(data_list, exclude):
        return Batch.from_data_list(list(data_list), follow_batch=follow_batch,
                                    exclude_keys=exclude_keys)
    return _collate(data_list, follow, exclude)


def _collate(data_list: Sequence[Data], follow: set, exclude: set) -> Batch:
    cls = type(data_list[0])
    stores = [data._store for data in data_list]
    maps = [store._mapping for store in stores]
    out = Batch(_base_cls=cls)
    out_map = out._store._mapping
    slice_dict, inc_dict = {}, {}
    device = None
    num_nodes: Optional[Tensor] = None
    num_edges: Optional[Tensor] = None

    for key, first in maps[0].items():
        if key in exclude:
            continue
        values = [m[key] for m in maps]
        if key == "num_nodes":
            out._store._num_nodes = values
            out_map["num_nodes"] = sum(values)
            continue
        kind = _incremented(cls, key)
        cat_dim = -1 if kind else 0  # Data.__cat_dim__: the incremented keys are index keys
        if first.dim() == 0:
            value = torch.stack(values)
            sizes = torch.ones(len(values), dtype=torch.long)
        else:
            value = torch.cat(values, dim=cat_dim)
            sizes = torch.tensor([v.size(cat_dim) for v in values], dtype=torch.long)
        slices = _cumsum0(sizes)
        if not kind:
            incs = torch.zeros(len(values), dtype=torch.long)
        elif kind == "nodes":
            if num_nodes is None:
                num_nodes = torch.tensor([s.num_nodes for s in stores], dtype=torch.long)
            incs = _cumsum0(num_nodes[:-1])
        else:
            if num_edges is None:
                num_edges = torch.tensor([m["dag_edge_index"].size(1) for m in maps],
                                         dtype=torch.long)
            incs = _cumsum0(num_edges[:-1])
        if kind and int(incs[-1]) != 0:
            offset = torch.repeat_interleave(incs.to(value.device), sizes.to(value.device))
            shape = [1] * value.dim()
            shape[cat_dim] = -1
            value = value + offset.to(value.dtype).view(shape)
        if value.is_cuda:
            device = value.device
        out_map[key] = value
        slice_dict[key] = slices
        inc_dict[key] = incs
        if key in follow:
            out_map[f"{key}_batch"] = torch.repeat_interleave(
                torch.arange(len(values), device=device), sizes.to(device))
            out_map[f"{key}_ptr"] = slices.to(device)

    if stores[0].can_infer_num_nodes:
        counts = (num_nodes if num_nodes is not None else
                  torch.tensor([s.num_nodes or 0 for s in stores], dtype=torch.long))
        counts = counts.to(device)
        out_map["batch"] = torch.repeat_interleave(torch.arange(len(stores), device=device),
                                                   counts)
        out_map["ptr"] = _cumsum0(counts)
    out._num_graphs = len(data_list)
    out._slice_dict = slice_dict
    out._inc_dict = inc_dict
    return out


class DAGCollater:
    """A ``collate_fn`` for ``torch.utils.data.DataLoader`` that batches graphs with
    :func:`collate_dags` (any other sample type is handed to PyG's collater)."""

    def __init__(self, dataset=None, follow_batch: Optional[List[str]] = None,
                 exclude_keys: Optional[List[str]] = None):
        from torch_geometric.loader.dataloader import Collater

        self.follow_batch = follow_batch
        self.exclude_keys = exclude_keys
        self._pyg = Collater(dataset, follow_batch, exclude_keys)

    def __call__(self, batch: List):
        if len(batch) > 0 and isinstance(batch[0], Data):
            return collate_dags(batch, self.follow_batch, self.exclude_keys)
        return self._pyg(batch)


class DAGDataLoader(DataLoader):
    """PyG's :class:`~torch_geometric.loader.DataLoader` with :func:`collate_dags` as its
    collation: the same batches, about 2x faster to build for prepared molecules
    (``benchmarks/bench_prepare.py``). Takes the same arguments; a ``collate_fn`` is ignored, as PyG's
    loader ignores it."""

    def __init__(self, dataset, batch_size: int = 1, shuffle: bool = False,
                 follow_batch: Optional[List[str]] = None,
                 exclude_keys: Optional[List[str]] = None, **kwargs):
        super().__init__(dataset, batch_size, shuffle, follow_batch=follow_batch,
                         exclude_keys=exclude_keys, **kwargs)
        self.collate_fn = DAGCollater(dataset, follow_batch, exclude_keys)
