"""The schedules the kernels read: :class:`DagSchedule` / :func:`build_schedule` (edges by
level, arcs by edge, edges by node and by component) and :class:`NodeSchedule` /
:func:`build_node_schedule` (node-level transitions), plus :func:`component_positions`.

The ancestor-pair count (:attr:`DagSchedule.ancestor_pairs`, ``ANCESTOR_COUNT_*``) is a size
only the op layer's choice of algorithm reads; it lives here because the schedule caches it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar, List, Optional, Tuple

import torch
from torch import Tensor

from . import _common
from ._common import csr as _csr
from .levels import topological_levels
from .orientation import weakly_connected_components
from .validation import (_check_index_tensor, _check_level_tensor, _num_nodes_arg,
                         check_edge_index, check_line_index, check_node_level)


class _IndexTensors:
    """What both schedules share: their index tensors travel to the native ops as one list,
    in the order the dataclass declares them (:attr:`FIELDS`, set below each class from its
    own fields, so adding a field is one line in the dataclass)."""

    FIELDS: ClassVar[Tuple[str, ...]] = ()

    @property
    def num_edges(self) -> int:
        return self.edge_src.numel()

    def tensors(self) -> List[Tensor]:
        """The index tensors in :attr:`FIELDS` order: the ``schedule`` argument of the native
        ops (``csrc/checks.h`` lists the same fields)."""
        return [getattr(self, name) for name in self.FIELDS]


@dataclass
class DagSchedule(_IndexTensors):
    """Index tensors that drive both algorithms over one (batched) DAG: the level-parallel
    scan and the per-component closed form, plus the sizes the op layer needs to choose
    between them.

    An edge ``e = (u -> w)`` is computed at the level of its tail ``u``: all its predecessors
    end at ``u`` and so start at strictly lower levels. All tensors are ``long`` and live on the
    device of ``edge_index``, except ``level_ptr`` and ``arc_level_ptr``, which the host loop
    reads and which therefore stay on the CPU.

    The tensor fields, in the order they are declared here (:attr:`FIELDS`), are what the
    native ops take as their ``schedule`` argument (:meth:`tensors`); ``csrc/checks.h`` lists
    the same fields in the same order. A schedule from :func:`build_schedule` is consistent by
    construction (the graph is checked once, there); :meth:`check` checks one from elsewhere.

    Attributes:
        edge_src, edge_dst: ``[E]`` tail and head node of every edge.
        arc_src, arc_dst: ``[L]`` incoming and outgoing edge of every arc.
        edge_order: ``[E]`` edge ids sorted by level (then id).
        level_ptr: ``[num_levels + 1]`` CPU; edges of level ``l`` are
            ``edge_order[level_ptr[l]:level_ptr[l + 1]]``.
        arc_order: ``[L]`` arc ids sorted by the level of their outgoing edge (then id).
        arc_level_ptr: ``[num_levels + 1]`` CPU; same layout as ``level_ptr`` for arcs.
        in_ptr, in_arc: CSR of arcs by outgoing edge (``in_arc[in_ptr[e]:in_ptr[e + 1]]`` are
            the arcs that feed edge ``e``, in id order).
        out_ptr, out_arc: CSR of arcs by incoming edge (the arcs that edge ``e`` feeds).
        node_ptr, node_edge: CSR of edges by head node (the edges a node reads out).
        src_ptr, src_edge: CSR of edges by tail node (where the key and value gradients of a
            node are summed).
        comp_node_ptr, comp_node: CSR of nodes by weakly connected component, each component
            in topological order (level, then id): the layout of the closed form.
        comp_edge_ptr, comp_edge: CSR of edges by component, in level order within one.
        node_pos, edge_pos: ``[N]``, ``[E]`` position of every node (edge) inside its
            component's list (``comp_node`` / ``comp_edge``): the closed form's local layout,
            which its kernels read instead of rebuilding it on every call.
        max_component_nodes: nodes of the largest component.
        max_component_edges: edges of the component with the most edges.
        component_pairs: ``sum n_c (n_c - 1) / 2`` over components of ``n_c`` nodes.
        ancestor_pairs: (property) the (node, ancestor) pairs, which the closed form visits;
            counted on first use (a pass per level) when no component has more than
            :data:`ANCESTOR_COUNT_MAX_NODES` nodes, else ``component_pairs`` (an upper
            bound). The op layer asks only when cheaper bounds leave the choice open.
        path_work: ``sum (E_c + L_c + n_c) n_c`` over components, the size of the closed
            form's path-weight work.
    """

    num_nodes: int
    edge_src: Tensor
    edge_dst: Tensor
    arc_src: Tensor
    arc_dst: Tensor
    edge_order: Tensor
    level_ptr: Tensor
    arc_order: Tensor
    arc_level_ptr: Tensor
    in_ptr: Tensor
    in_arc: Tensor
    out_ptr: Tensor
    out_arc: Tensor
    node_ptr: Tensor
    node_edge: Tensor
    src_ptr: Tensor
    src_edge: Tensor
    comp_node_ptr: Tensor
    comp_node: Tensor
    comp_edge_ptr: Tensor
    comp_edge: Tensor
    node_pos: Tensor
    edge_pos: Tensor
    max_component_nodes: int = 0
    max_component_edges: int = 0
    component_pairs: int = 0
    path_work: int = 0
    _ancestor_pairs: Optional[int] = field(default=None, repr=False, compare=False)

    @property
    def num_arcs(self) -> int:
        return self.arc_src.numel()

    @property
    def num_levels(self) -> int:
        return self.level_ptr.numel() - 1

    index_tensors = _IndexTensors.tensors  # (the name before the ops took a list)

    def check(self) -> None:
        """Check the whole structure (every CSR a permutation under the right owner, arcs that
        climb levels, components that partition the graph), with the native ops; raises
        ``ValueError``. The kernels themselves check only the index ranges."""
        from ..ops import native  # deferred: the ops package imports this module

        if not native.WITH_NATIVE:
            raise RuntimeError(native.unavailable_reason("cpu"))
        torch.ops.plstm_graph.check_dag_schedule([t.cpu() for t in self.tensors()],
                                                 self.num_nodes)

    @property
    def num_components(self) -> int:
        return self.comp_node_ptr.numel() - 1

    @property
    def ancestor_pairs(self) -> int:
        if self._ancestor_pairs is None:
            self._ancestor_pairs = _count_ancestor_pairs(self)
        return self._ancestor_pairs


def component_positions(ptr: Tensor, members: Tensor, total: int) -> Tuple[Tensor, Tensor]:
    """Component and position inside it of every member (node or edge id) listed by the
    component CSR ``(ptr, members)``, e.g. ``DagSchedule.comp_node_ptr, comp_node``."""
    sizes = ptr[1:] - ptr[:-1]
    comp_sorted = torch.repeat_interleave(torch.arange(sizes.numel(), device=ptr.device), sizes,
                                          output_size=total)
    comp = torch.empty_like(members)
    position = torch.empty_like(members)
    comp[members] = comp_sorted
    position[members] = torch.arange(total, device=ptr.device) - ptr[comp_sorted]
    return comp, position


# Components up to this size get their ancestor pairs counted (an [N, this] byte matrix).
ANCESTOR_COUNT_MAX_NODES = 1024
_ANCESTOR_COUNT_MAX_BYTES = 1 << 26
# a vectorised level step costs about as much as this many edges on Python integers
_PER_EDGE_COUNT_EDGES_PER_LEVEL = 40


def _count_ancestor_pairs(s: "DagSchedule") -> int:
    """Number of (node, ancestor) pairs: a set of ancestor flags per node (by position in its
    component), merged along the edges in level order. Deep, narrow graphs (a long chain: a
    few edges per level) do it edge by edge on Python integers as bit sets; wide ones one
    vectorised step per level on a byte matrix."""
    num_nodes, width = s.num_nodes, s.max_component_nodes
    if (width == 0 or width > ANCESTOR_COUNT_MAX_NODES or
            num_nodes * width > _ANCESTOR_COUNT_MAX_BYTES):
        return s.component_pairs
    device = s.edge_src.device
    position = s.node_pos
    if s.num_edges < _PER_EDGE_COUNT_EDGES_PER_LEVEL * max(1, s.num_levels):
        src = s.edge_src[s.edge_order].tolist()
        dst = s.edge_dst[s.edge_order].tolist()
        pos = position.tolist()
        flags = [0] * num_nodes
        for u, w in zip(src, dst):  # level order: a tail's flags are final when it is read
            flags[w] |= flags[u] | (1 << pos[u])
        return sum(bin(f).count("1") for f in flags)
    reach = torch.zeros(num_nodes, width, dtype=torch.uint8, device=device)
    bounds = s.level_ptr.tolist()
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if lo == hi:
            continue
        edges = s.edge_order[lo:hi]
        u, w = s.edge_src[edges], s.edge_dst[edges]
        rows = reach[u]
        rows[torch.arange(u.numel(), device=device), position[u]] = 1
        reach.scatter_reduce_(0, w.unsqueeze(1).expand_as(rows), rows, "amax")
    return int(reach.sum())


_NO_LINE_GRAPH = object()  # (a line_index of None is a bad input check_line_index reports)


def _checked_levels(edge_index: Tensor, num_nodes: Optional[int], node_level: Optional[Tensor],
                    validate: bool, level_method: str,
                    line_index=_NO_LINE_GRAPH) -> Tuple[int, Tensor]:
    """The checks both schedule builders run first, in this order (so the first error a bad
    input gets is the same from both), then the node count and levels they build from."""
    if validate:
        num_nodes = check_edge_index(edge_index, num_nodes)
        if line_index is not _NO_LINE_GRAPH:
            check_line_index(edge_index, line_index)
    elif num_nodes is None:
        num_nodes = int(edge_index.max()) + 1 if edge_index.numel() else 0
    if node_level is None:
        node_level = topological_levels(edge_index, num_nodes, method=level_method)
    elif validate:
        check_node_level(edge_index, node_level, num_nodes)
    return num_nodes, node_level


def build_schedule(edge_index: Tensor, line_index: Tensor, num_nodes: Optional[int] = None,
                   node_level: Optional[Tensor] = None, validate: bool = True,
                   level_method: str = "auto", method: str = "auto") -> DagSchedule:
    """Build the :class:`DagSchedule` for ``edge_index`` and its (possibly pruned) line graph.

    ``node_level`` (for example from :class:`~plstm_graph.transforms.PrepareDAG`) skips the
    leveling; it is checked to climb along every edge when ``validate`` is true, which also
    proves the graph acyclic. Without it the levels come from :func:`topological_levels`
    with ``level_method`` (see there).

    ``method="native"`` builds every index in one C++ pass (``csrc/cpu/prepare_kernel.cpp``,
    CPU tensors), ``"torch"`` with torch calls (the reference, any device); ``"auto"`` takes
    the native one where it can. Both give identical tensors.
    """
    if method == "auto":
        method = "native" if _common.native_cpu(edge_index, line_index) else "torch"
    if method == "native":
        return _build_schedule_native(edge_index, line_index, num_nodes, node_level, validate)
    num_nodes, node_level = _checked_levels(edge_index, num_nodes, node_level, validate,
                                            level_method, line_index)
    device = edge_index.device
    num_edges = edge_index.size(1)
    edge_src, edge_dst = edge_index[0].contiguous(), edge_index[1].contiguous()
    arc_src, arc_dst = line_index[0].contiguous(), line_index[1].contiguous()

    edge_level = node_level[edge_src]
    num_levels = int(edge_level.max()) + 1 if num_edges > 0 else 0
    level_ptr, edge_order = _csr(edge_level, num_levels)
    arc_level = edge_level[arc_dst]
    arc_level_ptr, arc_order = _csr(arc_level, num_levels)
    in_ptr, in_arc = _csr(arc_dst, num_edges)
    out_ptr, out_arc = _csr(arc_src, num_edges)
    node_ptr, node_edge = _csr(edge_dst, num_nodes)
    src_ptr, src_edge = _csr(edge_src, num_nodes)

    comp, num_comps = weakly_connected_components(edge_index, num_nodes)
    by_level = torch.sort(node_level, stable=True).indices
    comp_node = by_level[torch.sort(comp[by_level], stable=True).indices]
    sizes = torch.bincount(comp, minlength=num_comps)
    comp_node_ptr = torch.zeros(num_comps + 1, dtype=torch.long, device=device)
    torch.cumsum(sizes, 0, out=comp_node_ptr[1:])
    edge_comp = comp[edge_src]
    comp_edge = edge_order[torch.sort(edge_comp[edge_order], stable=True).indices]
    comp_edge_ptr = torch.zeros(num_comps + 1, dtype=torch.long, device=device)
    torch.cumsum(torch.bincount(edge_comp, minlength=num_comps), 0, out=comp_edge_ptr[1:])
    _, node_pos = component_positions(comp_node_ptr, comp_node, num_nodes)
    _, edge_pos = component_positions(comp_edge_ptr, comp_edge, num_edges)
    max_component_nodes = int(sizes.max()) if num_comps > 0 else 0
    component_pairs = int((sizes * (sizes - 1)).sum()) // 2
    comp_arcs = torch.bincount(edge_comp[arc_dst], minlength=num_comps)
    comp_edges = comp_edge_ptr[1:] - comp_edge_ptr[:-1]
    max_component_edges = int(comp_edges.max()) if num_comps > 0 else 0
    path_work = int(((comp_edges + comp_arcs + sizes) * sizes).sum())
    return DagSchedule(
        num_nodes=num_nodes, edge_src=edge_src, edge_dst=edge_dst, arc_src=arc_src,
        arc_dst=arc_dst, edge_order=edge_order, level_ptr=level_ptr.cpu(), arc_order=arc_order,
        arc_level_ptr=arc_level_ptr.cpu(), in_ptr=in_ptr, in_arc=in_arc, out_ptr=out_ptr,
        out_arc=out_arc, node_ptr=node_ptr, node_edge=node_edge, src_ptr=src_ptr,
        src_edge=src_edge, comp_node_ptr=comp_node_ptr,
        comp_node=comp_node, comp_edge_ptr=comp_edge_ptr, comp_edge=comp_edge,
        node_pos=node_pos, edge_pos=edge_pos, max_component_nodes=max_component_nodes,
        max_component_edges=max_component_edges, component_pairs=component_pairs,
        path_work=path_work)


def _build_schedule_native(edge_index: Tensor, line_index: Tensor, num_nodes: Optional[int],
                           node_level: Optional[Tensor], validate: bool) -> DagSchedule:
    _check_index_tensor(edge_index, "edge_index")
    _check_index_tensor(line_index, "line_index")
    _num_nodes_arg(num_nodes)
    if node_level is None:
        node_level = topological_levels(edge_index, num_nodes, method="native")
    if num_nodes is None and isinstance(node_level, Tensor):
        num_nodes = node_level.numel()
    if validate:  # type, shape and device here; the values are checked in C++
        _check_level_tensor(edge_index, node_level, num_nodes)
    index, sizes = torch.ops.plstm_graph.build_schedule(edge_index, line_index, node_level,
                                                        num_nodes, validate)
    max_nodes, max_edges, pairs, path_work = sizes.tolist()
    return DagSchedule(node_level.numel(), *index, max_component_nodes=max_nodes,
                       max_component_edges=max_edges, component_pairs=pairs,
                       path_work=path_work)


# ---------------------------------------------------------------------------------------------
# node-level schedule (transitions that depend only on the shared node)
# ---------------------------------------------------------------------------------------------
@dataclass
class NodeSchedule(_IndexTensors):
    """Index tensors of the node-level scan (docs/contract.md, "Node-level transitions", transitions ``T_n`` per shared
    node): no line graph, only CSRs of the edges by level, by head and by tail node.

    Attributes:
        edge_src, edge_dst: ``[E]`` tail and head node of every edge.
        edge_order: ``[E]`` edge ids sorted by the level of their tail (then id).
        level_ptr: ``[num_levels + 1]`` CPU; edges of level ``l`` are
            ``edge_order[level_ptr[l]:level_ptr[l + 1]]``.
        node_order: ``[N]`` node ids sorted by level (then id).
        node_level_ptr: ``[num_levels + 1]`` CPU; nodes of level ``l`` are
            ``node_order[node_level_ptr[l]:node_level_ptr[l + 1]]``.
        in_ptr, in_edge: CSR of edges by head node, in id order within a node.
        out_ptr, out_edge: CSR of edges by tail node, in id order within a node.
    """

    num_nodes: int
    edge_src: Tensor
    edge_dst: Tensor
    edge_order: Tensor
    level_ptr: Tensor
    node_order: Tensor
    node_level_ptr: Tensor
    in_ptr: Tensor
    in_edge: Tensor
    out_ptr: Tensor
    out_edge: Tensor

    @property
    def num_levels(self) -> int:
        return self.node_level_ptr.numel() - 1


def build_node_schedule(edge_index: Tensor, num_nodes: Optional[int] = None,
                        node_level: Optional[Tensor] = None, validate: bool = True,
                        level_method: str = "auto") -> NodeSchedule:
    """Build the :class:`NodeSchedule` of ``edge_index`` (checks as :func:`build_schedule`:
    ids in range, no self-loop, acyclic or a valid ``node_level``)."""
    num_nodes, node_level = _checked_levels(edge_index, num_nodes, node_level, validate,
                                            level_method)
    edge_src, edge_dst = edge_index[0].contiguous(), edge_index[1].contiguous()
    num_levels = int(node_level.max()) + 1 if num_nodes > 0 else 0
    level_ptr, edge_order = _csr(node_level[edge_src], num_levels)
    node_level_ptr, node_order = _csr(node_level, num_levels)
    in_ptr, in_edge = _csr(edge_dst, num_nodes)
    out_ptr, out_edge = _csr(edge_src, num_nodes)
    return NodeSchedule(num_nodes=num_nodes, edge_src=edge_src, edge_dst=edge_dst,
                        edge_order=edge_order, level_ptr=level_ptr.cpu(),
                        node_order=node_order, node_level_ptr=node_level_ptr.cpu(),
                        in_ptr=in_ptr, in_edge=in_edge, out_ptr=out_ptr, out_edge=out_edge)


def _tensor_fields(cls) -> Tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if f.type in ("Tensor", Tensor))


# the one declaration of each schedule's field order: the dataclass itself
DagSchedule.FIELDS = _tensor_fields(DagSchedule)
NodeSchedule.FIELDS = _tensor_fields(NodeSchedule)
