"""Per-graph DAG preparation as a PyG transform, and the batched view layers consume.

:class:`PrepareDAG` runs once per graph (ideally as a ``pre_transform``) and stores on a
:class:`DAGData` everything a forward pass needs. ``DAGData`` tells PyG's collation how to
offset the new attributes, so a ``DataLoader`` batch is the disjoint union of its graphs:

================== ============== ====================================================
attribute          shape          offset when batched
================== ============== ====================================================
dag_edge_index     [2, E]         by the node count (PyG's rule for ``*index*`` keys)
dag_edge_attr      [E, D]         none
dag_level          [N]            none (levels are per graph and stay valid in a union)
dag_level_rev      [N]            none
line_index_p       [2, L]         by the DAG edge count (indices into ``dag_edge_index``)
line_index_d       [2, L_D]       by the DAG edge count
line_index_d_rev   [2, L_Dr]      by the DAG edge count
================== ============== ====================================================

The reversed DAG is ``dag_edge_index.flip(0)`` with the same edge ids; its full line graph is
``line_index_p.flip(0)``, so it is not stored. Its multitree is, since pruning depends on the
direction.

``PrepareDAG(line_graphs=...)`` leaves out the line graphs that no layer of the model will
use (``line_index_p`` for ``"P"``, the multitrees for ``"D"``); :meth:`PrepareDAG.for_model`
derives them from the model's layers.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from .dag import (DagSchedule, _multitree_checked, build_node_schedule, build_schedule,
                  line_graph, topological_levels)
from .dag.orientation import ORIENTATIONS, check_edge_attr_rows, orient

#: the line graphs PrepareDAG can store: "P" the full one (line_index_p, and flipped for the
#: reversed DAG), "D" the multitrees (line_index_d, line_index_d_rev)
LINE_GRAPHS = ("P", "D")
_EDGE_OFFSET_KEYS = ("line_index_p", "line_index_d", "line_index_d_rev")


class DAGData(Data):
    """A :class:`~torch_geometric.data.Data` whose line-graph indices collate correctly:
    ``line_index_*`` point into the DAG's edges, so batching offsets them by edge counts."""

    def __inc__(self, key: str, value: Any, *args, **kwargs) -> Any:
        if key in _EDGE_OFFSET_KEYS:
            return self.dag_edge_index.size(1)
        return super().__inc__(key, value, *args, **kwargs)


# InMemoryDataset stores the data class next to the tensors and reloads with weights_only=True
torch.serialization.add_safe_globals([DAGData])


def _line_graph_names(line_graphs) -> Tuple[str, ...]:
    names = (line_graphs,) if isinstance(line_graphs, str) else line_graphs
    try:
        names = tuple(names) if names is not None else ()
    except TypeError:
        names = (line_graphs,)
    bad = [n for n in names if n not in LINE_GRAPHS]
    if bad:
        raise ValueError(f"line_graphs takes names from {LINE_GRAPHS} (e.g. ('P', 'D'), 'D' or "
                         f"()), got {line_graphs!r}")
    return tuple(n for n in LINE_GRAPHS if n in names)


def required_line_graphs(model: torch.nn.Module) -> Tuple[str, ...]:
    """The line graphs the :class:`~plstm_graph.nn.PLSTMConv` layers of ``model`` cannot run
    without: ``"D"`` if any layer is in D-mode (its multitree), ``"P"`` if a P-mode layer has
    per-arc transitions (edge features with ``transition_form="arc"``). P-mode layers
    without edge features or with ``transition_form="factorised"`` need none: they run on
    node-level transitions."""
    from .nn.conv import PLSTMConv

    convs = [m for m in model.modules() if isinstance(m, PLSTMConv)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no PLSTMConv layer to derive the line "
                         f"graphs from; pass PrepareDAG(line_graphs=...) instead")
    need = {"D" if c.mode == "D" else "P" for c in convs
            if c.mode == "D" or not c.node_level_transitions()}
    return tuple(n for n in LINE_GRAPHS if n in need)


def _orient(edge_index: Tensor, edge_attr: Optional[Tensor], num_nodes: int,
            how: str) -> Tuple[Tensor, Optional[Tensor]]:
    """The DAG and its edge features, oriented as the layers orient a plain graph."""
    if how not in ORIENTATIONS:
        raise ValueError(f"orient must be one of {ORIENTATIONS}, got {how!r}")
    dag, _, first = orient(edge_index, num_nodes, how)
    if first is None:
        return dag, edge_attr
    check_edge_attr_rows(edge_index, edge_attr)
    return dag, (edge_attr[first] if edge_attr is not None else None)


class PrepareDAG(BaseTransform):
    r"""Computes, once per graph, the DAG schedule that :class:`~plstm_graph.nn.PLSTMConv`
    and :class:`~plstm_graph.models.PLSTMNet` consume: the orientation, topological levels of
    the DAG and of its reverse, the full (P-mode) line graph and the multitree (D-mode) line
    graphs of both directions. Returns a :class:`DAGData`.

    Line graphs grow as :math:`\sum_n \deg_{in}(n) \deg_{out}(n)`, which on dense DAGs is
    many times the edge count; a model whose layers do not use one need not store, collate
    and move it. ``PrepareDAG.for_model(model)`` keeps only those the model's layers need
    (see :func:`required_line_graphs`), e.g. only the multitrees for a
    :class:`~plstm_graph.models.PLSTMNet` with ``transition_form="factorised"`` (its P-mode
    blocks then always run node-level, which is what dense graphs want; on sparse ones the
    per-arc form with the full line graph is somewhat faster, so keep ``"P"`` there). A layer
    that later needs a line graph that was left out gets a ``ValueError`` from
    :meth:`DAGPlan.view` naming it.

    Args:
        orient (str, optional): :obj:`"auto"` orients graphs that store both directions of
            every edge (PyG's undirected convention) from lower to higher node id and takes any
            other graph as a DAG; :obj:`"id"` always orients by id; :obj:`"bfs"` orients
            every edge away from a root, in the order of a breadth-first search from the
            lowest id of each connected component (:func:`~plstm_graph.dag.bfs_rank`; the
            input's directions are ignored); :obj:`"none"` never orients.
            (default: :obj:`"auto"`)
        reverse (bool, optional): Also prepare the reversed DAG. (default: :obj:`True`)
        level_method (str, optional): how the levels are computed, see
            :func:`~plstm_graph.topological_levels` (every method gives the same levels).
            (default: :obj:`"auto"`)
        line_graphs (str or tuple, optional): the line graphs to store: :obj:`"P"` the full
            one (``line_index_p``: P-mode layers with per-arc transitions), :obj:`"D"` the
            multitrees (``line_index_d``, ``line_index_d_rev``: D-mode layers), both, or
            :obj:`()` for none (every layer node-level). (default: :obj:`("P", "D")`)
    """

    def __init__(self, orient: str = "auto", reverse: bool = True,
                 level_method: str = "auto", line_graphs=LINE_GRAPHS):
        if orient not in ORIENTATIONS:
            raise ValueError(f"orient must be one of {ORIENTATIONS}, got {orient!r}")
        self.orient = orient
        self.reverse = reverse
        self.level_method = level_method
        self.line_graphs = _line_graph_names(line_graphs)

    @classmethod
    def for_model(cls, model: torch.nn.Module, **kwargs) -> "PrepareDAG":
        """The transform that stores only the line graphs ``model``'s layers need
        (:func:`required_line_graphs`); ``kwargs`` are the other arguments."""
        if "line_graphs" in kwargs:
            raise ValueError("for_model derives line_graphs from the model; pass "
                             "PrepareDAG(line_graphs=...) to choose them yourself")
        return cls(line_graphs=required_line_graphs(model), **kwargs)

    def forward(self, data: Data) -> DAGData:
        num_nodes = data.num_nodes
        edge_index = data.edge_index
        dag_edge_index, dag_edge_attr = _orient(edge_index, data.get("edge_attr"), num_nodes,
                                                self.orient)
        store: Dict[str, Any] = dict(data.to_dict())
        store["dag_edge_index"] = dag_edge_index
        if dag_edge_attr is not None:
            store["dag_edge_attr"] = dag_edge_attr
        level = topological_levels(dag_edge_index, num_nodes, method=self.level_method)
        store["dag_level"] = level
        need_p, need_d = "P" in self.line_graphs, "D" in self.line_graphs
        # the multitrees are pruned from the full line graph: built for D even when not kept
        line_p = line_graph(dag_edge_index, num_nodes) if need_p or need_d else None
        if need_p:
            store["line_index_p"] = line_p
        if need_d:
            store["line_index_d"] = _multitree_checked(dag_edge_index, line_p, level)
        if self.reverse:
            rev = dag_edge_index.flip(0)
            level_rev = topological_levels(rev, num_nodes, method=self.level_method)
            store["dag_level_rev"] = level_rev
            if need_d:
                store["line_index_d_rev"] = _multitree_checked(rev, line_p.flip(0), level_rev)
        out = DAGData.from_dict(store)
        out.num_nodes = num_nodes
        return out

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(orient={self.orient!r}, reverse={self.reverse}, "
                f"level_method={self.level_method!r}, line_graphs={self.line_graphs!r})")


class DAGPlan:
    """The DAG view of one (batched) graph that a stack of pLSTM layers shares.

    It hands each layer the edges, edge features, line graph and levels for a direction and a
    mode, and builds each :class:`~plstm_graph.dag.DagSchedule` once, so that four layers over
    the same batch do the index work once.

    Build it with :meth:`from_data` from a graph or batch that went through
    :class:`PrepareDAG` (no graph work at all), or with :meth:`from_graph` from a plain
    ``edge_index`` (orients, levels and prunes on the fly). A line graph left out
    (``PrepareDAG(line_graphs=...)``) is ``None`` here, and a view that needs it raises.
    """

    def __init__(self, edge_index: Tensor, num_nodes: int, level: Tensor,
                 line_index_p: Optional[Tensor] = None,
                 line_index_d: Optional[Tensor] = None,
                 edge_attr: Optional[Tensor] = None, level_rev: Optional[Tensor] = None,
                 line_index_d_rev: Optional[Tensor] = None, validate: bool = True):
        self.edge_index = edge_index
        self.edge_attr = edge_attr
        self.num_nodes = num_nodes
        self.level = level
        self.level_rev = level_rev
        self.line_index_p = line_index_p
        self.line_index_d = line_index_d
        self.line_index_d_rev = line_index_d_rev
        self.validate = validate
        self._schedules: Dict[Tuple[bool, str], DagSchedule] = {}

    @classmethod
    def from_data(cls, data: Data) -> "DAGPlan":
        missing = [k for k in ("dag_edge_index", "dag_level") if k not in data]
        if missing:
            raise ValueError(f"data lacks {missing}; apply plstm_graph.transforms.PrepareDAG "
                             f"first or use DAGPlan.from_graph")
        return cls(data.dag_edge_index, data.num_nodes, data.dag_level,
                   data.get("line_index_p"), data.get("line_index_d"),
                   edge_attr=data.get("dag_edge_attr"),
                   level_rev=data.get("dag_level_rev"),
                   line_index_d_rev=data.get("line_index_d_rev"))

    @classmethod
    def from_graph(cls, edge_index: Tensor, num_nodes: int, edge_attr: Optional[Tensor] = None,
                   orient: str = "auto", reverse: bool = True,
                   line_graphs=LINE_GRAPHS) -> "DAGPlan":
        """The plan of a plain graph; ``line_graphs`` as in :class:`PrepareDAG`."""
        data = Data(edge_index=edge_index, num_nodes=num_nodes)
        if edge_attr is not None:
            data.edge_attr = edge_attr
        return cls.from_data(PrepareDAG(orient=orient, reverse=reverse,
                                        line_graphs=line_graphs)(data))

    def view(self, mode: str = "P", reverse: bool = False,
             node_level_transitions: bool = False) -> Dict[str, Tensor]:
        """Keyword arguments for :meth:`PLSTMConv.forward
        <plstm_graph.nn.PLSTMConv.forward>` on this graph: ``edge_index``, ``edge_attr``,
        ``line_index``, ``node_level`` and the cached ``schedule``.

        ``node_level_transitions=True`` (P-mode only) is the view of a layer with one
        transition per shared node (:meth:`PLSTMConv.node_level_transitions
        <plstm_graph.nn.PLSTMConv.node_level_transitions>`): no line graph
        (``line_index=None``) and a :class:`~plstm_graph.dag.NodeSchedule`."""
        if mode not in ("P", "D"):
            raise ValueError(f"mode must be 'P' or 'D', got {mode!r}")
        if node_level_transitions and mode != "P":
            raise ValueError("node-level transitions exist in P-mode only")
        if reverse and self.level_rev is None:
            raise ValueError("this plan has no reversed DAG; prepare it with reverse=True")
        if not node_level_transitions and not self.has_line_graph(mode, reverse):
            what = ("the full (P-mode) line graph, which P-mode layers with per-arc "
                    "transitions (edge features, transition_form='arc') run on"
                    if mode == "P" else
                    f"the D-mode multitree{' of the reversed DAG' if reverse else ''}, which "
                    f"D-mode layers run on")
            raise ValueError(f"this plan was prepared without {what}; prepare with "
                             f"PrepareDAG(line_graphs=...) including {mode!r}, or with "
                             f"PrepareDAG.for_model(model)")
        if reverse:
            edge_index, level = self.edge_index.flip(0), self.level_rev
        else:
            edge_index, level = self.edge_index, self.level
        if node_level_transitions:
            line = None
        elif mode == "P":
            line = self.line_index_p.flip(0) if reverse else self.line_index_p
        else:
            line = self.line_index_d_rev if reverse else self.line_index_d
        key = (reverse, "node" if node_level_transitions else mode)
        if key not in self._schedules:
            self._schedules[key] = (
                build_node_schedule(edge_index, self.num_nodes, node_level=level,
                                    validate=self.validate) if line is None else
                build_schedule(edge_index, line, self.num_nodes, node_level=level,
                               validate=self.validate))
        return dict(edge_index=edge_index, edge_attr=self.edge_attr, line_index=line,
                    node_level=level, schedule=self._schedules[key])

    def has_line_graph(self, mode: str, reverse: bool = False) -> bool:
        """Whether the plan holds the line graph of a per-arc ``mode`` view (``False`` for
        one that ``PrepareDAG(line_graphs=...)`` left out)."""
        if mode == "P":
            return self.line_index_p is not None
        return (self.line_index_d_rev if reverse else self.line_index_d) is not None

    def build(self) -> "DAGPlan":
        """Build the schedules of every view the plan holds now (they are otherwise built on
        first use) and return the plan: call it outside a ``torch.compile``-d function, which
        can then take the plan as an input without tracing any index bookkeeping."""
        for reverse in ((False, True) if self.level_rev is not None else (False,)):
            for mode in ("P", "D"):
                if self.has_line_graph(mode, reverse):
                    self.view(mode, reverse)
            self.view("P", reverse, node_level_transitions=True)  # O(E), node-level P layers
        return self

    def to(self, device) -> "DAGPlan":
        def move(t):
            return t.to(device) if isinstance(t, Tensor) else t

        return DAGPlan(move(self.edge_index), self.num_nodes, move(self.level),
                       move(self.line_index_p), move(self.line_index_d),
                       edge_attr=move(self.edge_attr), level_rev=move(self.level_rev),
                       line_index_d_rev=move(self.line_index_d_rev), validate=self.validate)

    def __repr__(self) -> str:
        def arcs(line):
            return "skipped" if line is None else line.size(1)

        return (f"{self.__class__.__name__}(num_nodes={self.num_nodes}, "
                f"num_edges={self.edge_index.size(1)}, "
                f"num_arcs_p={arcs(self.line_index_p)}, "
                f"num_arcs_d={arcs(self.line_index_d)}, "
                f"reverse={self.level_rev is not None})")
