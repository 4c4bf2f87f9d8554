"""``PLSTMConv``: the pLSTM layer as a PyG ``MessagePassing`` module."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear, Parameter
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.dense.linear import Linear as LazyLinear
from torch_geometric.nn.dense.linear import is_uninitialized_parameter
from torch_geometric.utils import scatter

from ..dag import (DagSchedule, NodeSchedule, _multitree_checked, build_node_schedule,
                   build_schedule, check_edge_index, line_graph, topological_levels)
from ..ops import plstm_dag
from ..dag.orientation import ORIENTATIONS, orient
from .inputs import GraphCache
from .functional import rms_norm, split_linear

MODES = ("P", "D")
# how a P-mode layer with edge features computes T_{a->b}: one logit per arc from
# [x_n; e_a; e_b] (O(L)), or a node factor times an outgoing-edge factor (O(E), no line graph)
TRANSITION_FORMS = ("arc", "factorised")
# MessagePassing arguments whose other values the recurrence cannot honour
_SUM_AGGRS = (None, "add", "sum")
# Transition bias that starts an arc with a single successor deep in the carrying regime:
# P-mode 6 / (0.5 + 6) = 0.92, D-mode tanh(2) = 0.96. Chosen over (3, 1.25) on the long-range
# example (4 of 4 seeds at 1.000 against 2 of 4) at equal MUTAG and AST accuracy (README,
# "Defaults").
DEFAULT_TRANSITION_BIAS = {"P": 6.0, "D": 2.0}
# Node-level transitions do O(E) work where the line graph does O(L). On sparse graphs (L about
# E: molecules, trees, small DAGs) the per-arc form with its closed form is faster (8-node
# DAGs in batches of 128: about 25% per PLSTMNet epoch); on dense ones the node form wins by
# far (600 nodes, 14k edges, L = 15 E: 14x). A layer that can use node-level transitions does
# so when the line graph would have more than this many arcs per edge.
NODE_LEVEL_MIN_ARCS_PER_EDGE = 2.0


def prefers_node_level(num_arcs: int, num_edges: int) -> bool:
    """Whether a graph with this many line-graph arcs and edges runs faster on node-level
    transitions (see :data:`NODE_LEVEL_MIN_ARCS_PER_EDGE`)."""
    return num_arcs > NODE_LEVEL_MIN_ARCS_PER_EDGE * num_edges


def count_arcs(edge_index: Tensor, num_nodes: int) -> int:
    """Arcs of the full line graph, ``sum_n indeg(n) outdeg(n)``, without building it."""
    indeg = torch.bincount(edge_index[1], minlength=num_nodes)
    outdeg = torch.bincount(edge_index[0], minlength=num_nodes)
    return int((indeg * outdeg).sum())


def _small_normal_(weight: Tensor) -> None:
    """N(0, 2 / (5 fan_in)), the pLSTM paper's init for the q/k/v/out projections."""
    if not is_uninitialized_parameter(weight):  # lazy layers are initialised on first use
        torch.nn.init.normal_(weight, std=math.sqrt(2.0 / (5.0 * weight.size(1))))


class _Gate(torch.nn.Module):
    """A scalar gate per head computed from node features plus optional edge features.

    The linear map on ``[x_node; e_1; e_2; ...]`` is split into one map per part so that node
    features are projected once per node and edge features once per edge, then gathered; it is
    the same function as a linear layer on the concatenation without materialising it. The
    node part (``self.node``) is evaluated by the layer, fused with the other node projections.
    """

    def __init__(self, node_dim: int, edge_dims: tuple, heads: int, bias: float):
        super().__init__()
        self.init_bias = bias
        self.node = LazyLinear(node_dim, heads, bias=True)  # node_dim=-1: lazy
        self.edges = torch.nn.ModuleList(Linear(d, heads, bias=False) for d in edge_dims)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if not is_uninitialized_parameter(self.node.weight):
            torch.nn.init.zeros_(self.node.weight)
        torch.nn.init.constant_(self.node.bias, self.init_bias)
        for lin in self.edges:
            torch.nn.init.zeros_(lin.weight)

    def forward(self, node_logits: Tensor, node, edge_feats=(), edge_ids=()) -> Tensor:
        """``node_logits = self.node(x)``, gathered at ``node``, plus the edge parts."""
        out = node_logits[node]
        for lin, feat, ids in zip(self.edges, edge_feats, edge_ids):
            out = out + lin(feat)[ids]
        return out


class _PreparedGraph:
    """What one layer needs of one input graph: the DAG it runs on, the map from input edges
    to DAG edges (``None`` when the input was already the DAG), its line graph, levels and
    schedule. With node-level transitions ``line_index`` is ``None`` and ``schedule`` a
    :class:`~plstm_graph.dag.NodeSchedule`."""

    __slots__ = ("edge_index", "edge_map", "first_edge", "line_index", "node_level", "schedule")

    def __init__(self, edge_index, edge_map, first_edge, line_index, node_level, schedule):
        # edge_map [E_in] -> DAG edge; first_edge [E_dag] -> the input edge whose attributes
        # the DAG edge keeps
        self.edge_index = edge_index
        self.edge_map = edge_map
        self.first_edge = first_edge
        self.line_index = line_index
        self.node_level = node_level
        self.schedule = schedule


class PLSTMConv(MessagePassing):
    r"""The pLSTM operator on directed acyclic graphs from `"pLSTM: parallelizable Linear
    Source Transition Mark networks" <https://arxiv.org/abs/2506.11997>`_.

    Every edge :math:`e = (u \to w)` carries a :math:`K \times V` state per head, written at
    the tail, carried along the line graph and read out at the head:

    .. math::
        \mathbf{C}_e &= S_e\, \mathbf{k}_u \mathbf{v}_u^\top
            + \sum_{a \to e} T_{a \to e}\, \mathbf{C}_a

        \mathbf{y}_w &= \sum_{e \to w} M_e\, \mathbf{C}_e^\top \mathbf{q}_w
            + D_w\, (\mathbf{q}_w \cdot \mathbf{k}_w)\, \mathbf{v}_w

        \mathbf{x}'_w &= \mathbf{W}_o\, \mathrm{RMSNorm}_{\text{per head}}(\mathbf{y}_w)

    with :math:`\mathbf{q}, \mathbf{k}, \mathbf{v}` linear in :math:`\mathbf{x}`,
    :math:`S_e = \sigma(\cdot)` from :math:`[\mathbf{x}_u; \mathbf{a}_e]`,
    :math:`M_e = \sigma(\cdot)` from :math:`[\mathbf{x}_w; \mathbf{a}_e]`,
    :math:`D_w = \sigma(\cdot)` from :math:`\mathbf{x}_w`, and the transition logit
    :math:`t_{a \to b}` from :math:`[\mathbf{x}_{n}; \mathbf{a}_a; \mathbf{a}_b]` at the shared
    node :math:`n`. In P-mode (propagation, full line graph)
    :math:`T_{a \to b} = t_{a \to b} / (\alpha + \sum_{b'} |t_{a \to b'}|)` over the arcs
    leaving :math:`a`; in D-mode (distribution) :math:`T = \tanh(t)` on the line graph pruned to
    a multitree. Heads are independent; no :math:`1/\sqrt{K}` scaling.

    P-mode without edge features runs on node-level transitions (docs/contract.md, "Node-level transitions"): ``t`` comes
    from the shared node alone and its normalisation is per node,
    :math:`T_n = t_n / (\alpha + \deg(n) |t_n|)` (``deg`` = out-degree for
    ``normalize_over="source"``, in-degree for ``"target"``), which equals the per-arc
    normalisation exactly; the layer then builds no line graph and runs in
    :math:`O(E K V)` time and :math:`O(N K V)` state (see :func:`~plstm_graph.plstm_dag` with
    ``line_index=None``). A ``line_index`` passed to :meth:`forward` (a prepared plan) keeps
    the per-arc path.

    With edge features, ``transition_form="factorised"`` makes P-mode node-level too: the
    per-arc logit becomes the product :math:`t_n \beta_b` of a node factor :math:`t_n` from
    :math:`\mathbf{x}_n` and an edge factor :math:`\beta_b` from
    :math:`[\mathbf{x}_n; \mathbf{a}_b]` of the *outgoing* edge, normalised as every P-mode
    logit is: :math:`T_{a \to b} = t_n \beta_b / (\alpha + |t_n| \sum_{b'} |\beta_{b'}|)`
    over the edges :math:`b'` leaving :math:`n` (``"source"``; ``"target"`` divides by
    :math:`\alpha + \deg_{in}(n) |t_n \beta_b|`), so the transitions leaving any incoming
    edge still sum to less than one in absolute value. This is :math:`T_n g_b` with
    :math:`g_b` the op's ``carry``, O(E) without a line graph (on sparse graphs the layer
    computes the same :math:`T_n g_b` per arc, as without edge features, because it is faster
    there; :data:`NODE_LEVEL_MIN_ARCS_PER_EDGE`). The incoming edge's features
    :math:`\mathbf{a}_a` cannot enter: the node-level recurrence carries the *sum*
    :math:`\mathbf{H}_n = \sum_a \mathbf{C}_a` into every outgoing edge with one factor, and
    a term that depends on :math:`a` would have to weigh every :math:`\mathbf{C}_a`
    separately for every :math:`b`, one term per pair :math:`(a, b)`: the line graph again.
    It is a different parametrisation from ``"arc"`` (not the same function), starts from
    the same transitions (:math:`\beta = 1`, zero weights) and exists in P-mode only:
    D-mode's multitree keeps some arcs of a node and drops others, which no node factor can
    express.

    The layer takes an ordinary PyG graph: an undirected one (every edge stored in both
    directions) is oriented from the lower to the higher node id (``orient``), a directed one
    must be acyclic. The DAG preparation (orientation, levels, line graph, schedule) is kept
    for the last ``edge_index`` seen and reused while the same tensor comes back unmodified,
    so a node-level task on one graph prepares it once. Batches of many graphs are prepared
    fastest once per graph with :class:`~plstm_graph.transforms.PrepareDAG` and
    :class:`~plstm_graph.transforms.DAGPlan` (pass ``**plan.view(mode)``).

    As a :class:`~torch_geometric.nn.conv.MessagePassing` layer: messages are summed by the
    recurrence itself, so ``aggr`` must be ``"add"``/``"sum"``; ``flow="target_to_source"``
    runs the reversed DAG (the same as the layer on ``edge_index.flip(0)``); propagate hooks
    (:meth:`register_propagate_forward_pre_hook`, :meth:`register_propagate_forward_hook`)
    fire around the recurrence; message and aggregate hooks are refused (there is no separate
    message step). Explainer edge masks (``edge_mask_type="object"``) scale the state each
    input edge carries (its source gate and every transition into it), so a mask of 0 cuts the
    edge out of every path and 1 leaves it as it is; both stored directions of an undirected
    edge act on the one DAG edge they become.

    Args:
        in_channels (int): Size of each input sample, or :obj:`-1` to derive it from the
            first input (lazy initialisation).
        out_channels (int): Size of each output sample.
        heads (int, optional): Number of heads :math:`H`. (default: :obj:`4`)
        mode (str, optional): :obj:`"P"` (propagation) or :obj:`"D"` (distribution).
            (default: :obj:`"P"`)
        edge_dim (int, optional): Edge feature dimensionality; :obj:`None` for no edge
            features. (default: :obj:`None`)
        key_dim (int, optional): Key/query width :math:`K` per head.
            (default: :obj:`out_channels // heads`)
        value_dim (int, optional): Value width :math:`V` per head.
            (default: :obj:`out_channels // heads`)
        transition_bias (float or dict, optional): Initial transition logit :math:`t_0`, or a
            dict ``{"P": t_P, "D": t_D}`` (a missing mode keeps its default); the default
            puts an arc with a single successor at :math:`T \approx 0.92` (:obj:`6.0` in P-mode)
            or :math:`0.96` (:obj:`2.0` in D-mode), so that long routes are trainable from the
            start.
        alpha (float, optional): P-mode normaliser offset :math:`\alpha`. (default: :obj:`0.5`)
        normalize_over (str, optional): P-mode normalisation axis: :obj:`"source"` sums over
            the arcs leaving the incoming edge (the paper), :obj:`"target"` over the arcs
            entering the outgoing edge (the authors' edge-feature code).
            (default: :obj:`"source"`)
        gate_bias (float, optional): Initial bias of the source, mark and direct gates:
            :obj:`0` starts them at :math:`\sigma(0) = 0.5`, where the graph path and a node's
            own term are of one size. The pLSTM authors' :obj:`-5` (0.007) starts the graph
            path at about 1/140 of the direct term, and models built with it stayed at the
            majority class on the bundled node and graph tasks. (default: :obj:`0.0`)
        norm_eps (float, optional): :math:`\epsilon` of the per-head RMSNorm,
            :math:`y / \sqrt{\overline{y^2} + \epsilon}`. A tiny value keeps only the
            direction of :math:`y`: the scale (how much arrived along the graph) is lost and
            the output flips sign wherever :math:`y` crosses zero, which made MUTAG training
            noisy; :obj:`1e-2` keeps small outputs small. (default: :obj:`1e-2`)
        orient (str, optional): How :meth:`forward` turns ``edge_index`` into a DAG:
            :obj:`"auto"` orients a graph that stores both directions of every edge from the
            lower to the higher node id and takes any other graph as a DAG; :obj:`"id"` always
            orients by id; :obj:`"bfs"` points every edge away from the root of a
            breadth-first search per connected component (the numbering of the input does
            not matter; see ``PLSTMNet``'s ``orient``); :obj:`"none"` never orients.
            (default: :obj:`"auto"`)
        cached (bool, optional): Reuse the DAG preparation while the same unmodified
            ``edge_index`` tensor comes back (see above; cleared by
            :meth:`reset_parameters`). (default: :obj:`True`)
        backend (str, optional): :obj:`"torch"`, :obj:`"native"` or :obj:`None` (best
            available), passed to :func:`~plstm_graph.plstm_dag`. (default: :obj:`None`)
        algorithm (str, optional): :obj:`"scan"`, :obj:`"closed_form"` or :obj:`None`
            (the faster one for the batch), passed to :func:`~plstm_graph.plstm_dag`.
            (default: :obj:`None`)
        recompute (bool, optional): Keep only the inputs for backward and recompute the states
            then (level scan). (default: :obj:`False`)
        transition_form (str, optional): P-mode transitions with edge features:
            :obj:`"arc"`, one logit per line-graph arc from
            :math:`[\mathbf{x}_n; \mathbf{a}_a; \mathbf{a}_b]`, :math:`O(L)`; or
            :obj:`"factorised"`, :math:`t_n \beta_b` (see above), :math:`O(E)` and no line
            graph. Needs ``edge_dim`` and ``mode="P"``. (default: :obj:`"arc"`)
        **kwargs (optional): Additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing` (``flow``; ``aggr`` only as a sum).

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F_{in})`, edge indices
          :math:`(2, |\mathcal{E}|)` (a DAG, or an undirected graph to orient), edge features
          :math:`(|\mathcal{E}|, D)` *(optional)*; for a prepared DAG also line-graph arcs
          :math:`(2, L)`, node levels :math:`(|\mathcal{V}|)` and its schedule *(optional)*
        - **output:** node features :math:`(|\mathcal{V}|, F_{out})`
    """

    def __init__(self, in_channels: int, out_channels: int, heads: int = 4, mode: str = "P",
                 edge_dim: Optional[int] = None, key_dim: Optional[int] = None,
                 value_dim: Optional[int] = None, transition_bias=None,
                 alpha: float = 0.5, normalize_over: str = "source", gate_bias: float = 0.0,
                 norm_eps: float = 1e-2, orient: str = "auto", cached: bool = True,
                 backend: Optional[str] = None, algorithm: Optional[str] = None,
                 recompute: bool = False, transition_form: str = "arc", **kwargs):
        aggr = kwargs.pop("aggr", "add")
        if not (aggr in _SUM_AGGRS if isinstance(aggr, (str, type(None))) else False):
            raise ValueError(f"PLSTMConv sums over the in-edges of a node by definition of the "
                             f"pLSTM recurrence and cannot aggregate with aggr={aggr!r}; leave "
                             f"aggr at 'add' (or 'sum')")
        if kwargs.get("node_dim", -2) not in (-2, 0):
            raise ValueError(f"PLSTMConv takes node features of shape [N, F] (node_dim=-2), "
                             f"got node_dim={kwargs['node_dim']!r}")
        if kwargs.get("decomposed_layers", 1) != 1:
            raise ValueError("PLSTMConv cannot be decomposed (decomposed_layers must be 1): "
                             "the recurrence is one fused operation")
        super().__init__(aggr="add", **kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be 'P' or 'D', got {mode!r}")
        if normalize_over not in ("source", "target"):
            raise ValueError(f"normalize_over must be 'source' or 'target', got "
                             f"{normalize_over!r}")
        if orient not in ORIENTATIONS:
            raise ValueError(f"orient must be one of {ORIENTATIONS}, got {orient!r}")
        if not isinstance(transition_form, str) or transition_form not in TRANSITION_FORMS:
            raise ValueError(f"transition_form must be one of {TRANSITION_FORMS}, got "
                             f"{transition_form!r}")
        if transition_form == "factorised" and mode != "P":
            raise ValueError("transition_form='factorised' exists in P-mode only: D-mode runs "
                             "on the multitree, which keeps some arcs of a node and drops "
                             "others, so its transitions cannot factor through the node; use "
                             "transition_form='arc' for D-mode layers")
        if transition_form == "factorised" and edge_dim is None:
            raise ValueError("transition_form='factorised' factorises edge-feature transitions "
                             "and needs edge_dim; without edge features P-mode transitions "
                             "are node-level already (leave transition_form='arc')")
        if not isinstance(in_channels, int) or (in_channels < 1 and in_channels != -1):
            raise ValueError(f"in_channels must be a positive int or -1 (lazy), got "
                             f"{in_channels!r}")
        if heads < 1:
            raise ValueError(f"heads must be positive, got {heads}")
        key_dim = key_dim if key_dim is not None else out_channels // heads
        value_dim = value_dim if value_dim is not None else out_channels // heads
        if key_dim < 1 or value_dim < 1:
            raise ValueError(f"key_dim and value_dim must be positive; out_channels="
                             f"{out_channels} with heads={heads} gives {key_dim}/{value_dim}, "
                             f"pass key_dim/value_dim explicitly")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.mode = mode
        self.edge_dim = edge_dim
        self.key_dim = key_dim
        self.value_dim = value_dim
        if isinstance(transition_bias, dict):  # one per mode, e.g. from PLSTMNet(...)
            transition_bias = transition_bias.get(mode)
        self.transition_bias = (DEFAULT_TRANSITION_BIAS[mode] if transition_bias is None
                                else float(transition_bias))
        self.alpha = alpha
        self.normalize_over = normalize_over
        self.gate_bias = gate_bias
        self.norm_eps = norm_eps
        self.orient = orient
        self.cached = cached
        self.backend = backend
        self.algorithm = algorithm
        self.recompute = recompute
        self.transition_form = transition_form
        # P-mode without edge features runs on node-level transitions (no line graph); True
        # forces the per-arc path, the same function (kept reachable to test the two agree)
        self._arc_transitions = False
        self._cache = GraphCache()

        self.lin_query = LazyLinear(in_channels, heads * key_dim, bias=False)
        self.lin_key = LazyLinear(in_channels, heads * key_dim, bias=False)
        self.lin_value = LazyLinear(in_channels, heads * value_dim, bias=False)
        one_edge = (edge_dim,) if edge_dim is not None else ()
        two_edges = (edge_dim, edge_dim) if edge_dim is not None else ()
        self.source_gate = _Gate(in_channels, one_edge, heads, gate_bias)
        self.mark_gate = _Gate(in_channels, one_edge, heads, gate_bias)
        self.direct_gate = _Gate(in_channels, (), heads, gate_bias)
        if transition_form == "factorised":
            # t_n from x_n; beta_b from [x_n; a_b] starts at 1, so the layer starts with the
            # transitions of the arc form (zero weights, logit t0 on every arc)
            self.transition_gate = _Gate(in_channels, (), heads, self.transition_bias)
            self.transition_factor_gate = _Gate(in_channels, one_edge, heads, 1.0)
        else:
            self.transition_gate = _Gate(in_channels, two_edges, heads, self.transition_bias)
        self.norm_weight = Parameter(torch.empty(heads, value_dim))
        self.lin_out = Linear(heads * value_dim, out_channels, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for lin in (self.lin_query, self.lin_key, self.lin_value, self.lin_out):
            _small_normal_(lin.weight)
        for gate in self._gate_modules():
            gate.reset_parameters()
        torch.nn.init.ones_(self.norm_weight)
        self._cache.clear()

    def node_level_transitions(self) -> bool:
        """Whether the layer runs on one transition per shared node (P-mode without edge
        features): ``t_n`` comes from ``x_n`` alone and the normalisation over the arcs
        leaving an incoming edge of ``n`` (``outdeg(n)`` arcs, all ``t_n``; or entering an
        outgoing one, ``indeg(n)`` arcs, with ``normalize_over="target"``) is per node too,
        so ``T_n = t_n / (alpha + deg(n) |t_n|)`` exactly, and no line graph is built.
        Also true with ``transition_form="factorised"``: ``T_n`` times the op's ``carry``."""
        return (self.mode == "P" and (self.edge_dim is None or
                                      self.transition_form == "factorised")
                and not self._arc_transitions)

    def _gate_modules(self):
        gates = (self.source_gate, self.mark_gate, self.direct_gate, self.transition_gate)
        if self.transition_form == "factorised":
            gates += (self.transition_factor_gate,)
        return gates

    def _node_linears(self):
        return (self.lin_query, self.lin_key, self.lin_value) + tuple(
            g.node for g in self._gate_modules())

    def initialize_parameters(self, x: Tensor) -> None:
        """Materialise the input-side weights of a lazy layer (``in_channels=-1``) from the
        width of ``x`` and give them the layer's initialisation."""
        if not any(is_uninitialized_parameter(lin.weight) for lin in self._node_linears()):
            return
        for lin in self._node_linears():
            lin(x[:0])  # PyG's lazy Linear materialises its weight on first call
        self.in_channels = x.size(-1)
        for lin in (self.lin_query, self.lin_key, self.lin_value):
            _small_normal_(lin.weight)
        for gate in self._gate_modules():
            gate.reset_parameters()

    # MessagePassing has message/aggregate steps with their own hooks; the recurrence fuses
    # both, so a hook there would silently never run.
    def _no_separate_step(self, *args, **kwargs):
        raise ValueError("PLSTMConv has no separate message or aggregate step (the pLSTM "
                         "recurrence fuses them); use register_propagate_forward_pre_hook / "
                         "register_propagate_forward_hook, which fire around it")

    register_message_forward_pre_hook = _no_separate_step
    register_message_forward_hook = _no_separate_step
    register_aggregate_forward_pre_hook = _no_separate_step
    register_aggregate_forward_hook = _no_separate_step

    def node_projections(self, x: Tensor):
        """Query, key, value ``[N, H, K|V]`` and the node parts of the source, mark, direct
        and transition gates ``[N, H]`` each, from one matrix product (one pass over ``x``
        instead of seven)."""
        gates = self._gate_modules()
        gate_weight = torch.cat([g.node.weight for g in gates])
        q, k, v, logits = split_linear(x, (self.lin_query.weight, self.lin_key.weight,
                                           self.lin_value.weight, gate_weight))
        # only the gates have a bias: added to their few columns after the product, it spares
        # a broadcast copy into all [N, 3HK + ...] outputs and its reduction in backward
        logits = logits + torch.cat([g.node.bias for g in gates])
        n, h = x.size(0), self.heads
        return (q.reshape(n, h, self.key_dim), k.reshape(n, h, self.key_dim),
                v.reshape(n, h, self.value_dim), logits.split(h, dim=-1))

    def gates(self, x: Tensor, edge_index: Tensor, line_index: Tensor,
              edge_attr: Optional[Tensor] = None, node_logits=None,
              edge_mask: Optional[Tensor] = None, return_carry: bool = False):
        """Source, transition, mark and direct gates ``[E,H], [L,H], [E,H], [N,H]``.

        ``line_index=None`` (P-mode without edge features, or ``transition_form=
        "factorised"``): node-level transitions ``[N, H]``, ``T_n = t_n / (alpha + deg(n)
        |t_n|)`` (see :meth:`node_level_transitions`), or the factorised ``T_n`` whose edge
        factor is the op's ``carry``.
        ``node_logits``: the node parts from :meth:`node_projections` (computed when absent).
        ``edge_mask``: ``[E]`` weights that scale the state each edge carries (its source gate
        and the transitions into it). With node-level transitions only the source gate is
        scaled in the gates; the carried part is in the ``carry``.
        ``return_carry``: also return the op's ``carry`` ``[E, H]`` (``None`` when there is
        nothing to carry: per-arc transitions, or node-level without mask or factor).
        """
        if node_logits is None:
            node_logits = [g.node(x) for g in self._gate_modules()]
        src, dst = edge_index[0], edge_index[1]
        factorised = self.transition_form == "factorised"
        one = (edge_attr,) if edge_attr is not None else ()
        mask = edge_mask.to(node_logits[0].dtype).unsqueeze(-1) if edge_mask is not None \
            else None
        carry = None
        if line_index is None and (self.mode != "P" or (edge_attr is not None and
                                                        not factorised)):
            raise ValueError("node-level transitions (line_index=None) exist in P-mode "
                             "without edge features or with transition_form='factorised' "
                             "only; pass the line graph")
        source = torch.sigmoid(self.source_gate(node_logits[0], src, one, (slice(None),)))
        if mask is not None:
            source = source * mask
        mark = torch.sigmoid(self.mark_gate(node_logits[1], dst, one, (slice(None),)))
        direct = torch.sigmoid(node_logits[2])
        if line_index is None:
            if factorised:
                transition, carry = self._factorised_transitions(node_logits, edge_index,
                                                                 edge_attr, x.size(0))
                if mask is not None:
                    carry = carry * mask
            else:
                t = node_logits[3]
                axis = src if self.normalize_over == "source" else dst
                degree = torch.bincount(axis, minlength=x.size(0)).to(t.dtype)
                transition = t / (self.alpha + degree[:, None] * t.abs())
                if mask is not None:
                    carry = mask.expand(-1, self.heads)
            gates = (source, transition, mark, direct)
            return gates + (carry,) if return_carry else gates
        arc_in, arc_out = line_index[0], line_index[1]
        shared = dst[arc_in]
        two = (edge_attr, edge_attr) if edge_attr is not None else ()
        if factorised:  # the same per-arc transitions, T_n g_b, on a given line graph
            node_t, factor = self._factorised_transitions(node_logits, edge_index, edge_attr,
                                                          x.size(0))
            transition = node_t[shared] * factor[arc_out]
        else:
            logits = self.transition_gate(node_logits[3], shared, two, (arc_in, arc_out))
            if self.mode == "D":
                transition = torch.tanh(logits)
            else:
                axis = arc_in if self.normalize_over == "source" else arc_out
                total = scatter(logits.abs(), axis, dim=0, dim_size=edge_index.size(1),
                                reduce="sum")
                transition = logits / (self.alpha + total[axis])
        if mask is not None:
            transition = transition * mask[arc_out]
        gates = (source, transition, mark, direct)
        return gates + (carry,) if return_carry else gates

    def _factorised_transitions(self, node_logits, edge_index: Tensor, edge_attr: Tensor,
                                num_nodes: int) -> Tuple[Tensor, Tensor]:
        """``(T_n [N, H], g_b [E, H])`` with ``T_{a->b} = T_n g_b`` at ``n = tail(b)``: the
        per-arc logit ``t_n beta_b`` with the P-mode normalisation split between the two
        (``transition_form="factorised"``, see the class docstring)."""
        src = edge_index[0]
        t = node_logits[3]
        beta = self.transition_factor_gate(node_logits[4], src, (edge_attr,), (slice(None),))
        if self.normalize_over == "source":
            # over the arcs leaving any edge into n: sum_b' |t_n beta_b'|, one value per node
            total = scatter(beta.abs(), src, dim=0, dim_size=num_nodes, reduce="sum")
            return t / (self.alpha + t.abs() * total), beta
        # over the arcs entering b: indeg(n) copies of |t_n beta_b|, one value per edge b
        indeg = torch.bincount(edge_index[1], minlength=num_nodes).to(t.dtype)
        scale = (indeg[:, None] * t.abs())[src]
        return t, beta / (self.alpha + scale * beta.abs())

    # -----------------------------------------------------------------------------------------
    # input handling
    # -----------------------------------------------------------------------------------------
    def _check_features(self, x: Tensor, edge_index: Tensor,
                        edge_attr: Optional[Tensor]) -> Optional[Tensor]:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating tensor, got {x.dtype}")
        dtype = self.lin_out.weight.dtype
        if x.dtype != dtype:
            raise TypeError(f"x has dtype {x.dtype} but the layer's parameters are {dtype}; "
                            f"convert one of them (e.g. x.to({dtype}) or layer.to({x.dtype}))")
        if isinstance(edge_index, Tensor) and edge_index.layout != torch.strided:
            raise TypeError(f"PLSTMConv takes edge_index as a [2, E] index tensor, not a sparse "
                            f"adjacency ({edge_index.layout}); convert it with "
                            f"edge_index.coalesce().indices() or torch_geometric.utils."
                            f"to_edge_index")
        if not isinstance(edge_index, Tensor) or edge_index.dtype in (torch.float16,
                                                                     torch.bfloat16,
                                                                     torch.float32,
                                                                     torch.float64):
            what = (type(edge_index).__name__ if not isinstance(edge_index, Tensor)
                    else edge_index.dtype)
            hint = ("; to_dag returns (edge_index, edge_attr): pass to_dag(...)[0], or the "
                    "undirected graph itself (it is oriented by node id)"
                    if isinstance(edge_index, tuple) else
                    "; a SparseTensor adjacency is not supported")
            raise TypeError(f"edge_index must be a long tensor of shape [2, E], got {what}"
                            f"{hint}")
        expected = self.in_channels if self.in_channels > 0 else x.size(-1)
        if x.dim() != 2 or x.size(-1) != expected:
            raise ValueError(f"x must have shape [N, {expected}], got {list(x.shape)}")
        if self.edge_dim is None:
            return None
        if edge_attr is None:
            raise ValueError(f"this layer was built with edge_dim={self.edge_dim}; pass "
                             f"edge_attr")
        if not isinstance(edge_attr, Tensor) or not edge_attr.is_floating_point():
            what = edge_attr.dtype if isinstance(edge_attr, Tensor) else type(edge_attr)
            raise TypeError(f"edge_attr must be a floating tensor, got {what} (one-hot encode "
                            f"categorical edge types first)")
        if edge_attr.dtype != dtype:
            raise TypeError(f"edge_attr has dtype {edge_attr.dtype} but the layer's parameters "
                            f"are {dtype}; convert one of them")
        if edge_attr.dim() == 1:
            edge_attr = edge_attr.unsqueeze(-1)
        if edge_attr.shape != (edge_index.size(1), self.edge_dim):
            raise ValueError(f"edge_attr must have shape [E={edge_index.size(1)}, "
                             f"{self.edge_dim}], got {list(edge_attr.shape)}")
        return edge_attr

    # index bookkeeping is data-dependent: under torch.compile it runs eagerly (one graph
    # break); pass a prepared view (DAGPlan.view) to compile the whole forward
    @torch.compiler.disable
    def prepare(self, edge_index: Tensor, num_nodes: Optional[int] = None) -> _PreparedGraph:
        """Orient ``edge_index`` as :meth:`forward` does and build the line graph, levels and
        schedule of the DAG this layer runs on (cached, see the class docstring)."""
        num_nodes = check_edge_index(edge_index, num_nodes, allow_self_loops=True)
        key = (num_nodes, self.orient, self.flow, self.mode, self.node_level_transitions())
        if self.cached:
            hit = self._cache.get(edge_index, key)
            if hit is not None:
                return hit
        dag, edge_map, first = orient(edge_index, num_nodes, self.orient)
        if self.flow == "target_to_source":
            dag = dag.flip(0)
        try:
            level = topological_levels(dag, num_nodes)
        except ValueError as exc:
            if "cycle" not in str(exc):
                raise
            raise ValueError(f"{exc}. PLSTMConv runs on DAGs: pass a DAG, an undirected "
                             f"graph with both directions of every edge (oriented by node id "
                             f"with orient='auto'), or orient it yourself with "
                             f"plstm_graph.to_dag(edge_index)[0] or the PrepareDAG "
                             f"transform") from None
        if self.node_level_transitions() and prefers_node_level(count_arcs(dag, num_nodes),
                                                                dag.size(1)):
            # O(E) and no line graph (docs/contract.md, "Node-level transitions")
            schedule = build_node_schedule(dag, num_nodes, node_level=level, validate=False)
            prepared = _PreparedGraph(dag, edge_map, first, None, level, schedule)
        else:
            line = line_graph(dag, num_nodes)
            if self.mode == "D":
                line = _multitree_checked(dag, line, level)
            schedule = build_schedule(dag, line, num_nodes, node_level=level, validate=False)
            prepared = _PreparedGraph(dag, edge_map, first, line, level, schedule)
        if self.cached:
            self._cache.put(edge_index, key, prepared)
        return prepared

    def _explain_edge_mask(self, prepared: Optional[_PreparedGraph],
                           num_edges: int) -> Optional[Tensor]:
        """The Explainer's mask over the input edges (set by PyG's ``set_masks``), mapped to
        the DAG edges the layer runs on."""
        if not self.explain or self._edge_mask is None:
            return None
        mask = self._edge_mask.sigmoid() if self._apply_sigmoid else self._edge_mask
        if mask.numel() != num_edges:
            raise ValueError(f"the explainer's edge mask has {mask.numel()} entries but "
                             f"edge_index has {num_edges} edges")
        if prepared is None or prepared.edge_map is None:
            return mask
        # both stored directions of an undirected edge act on the one DAG edge
        out = mask.new_ones(prepared.edge_index.size(1))
        return out.scatter_reduce(0, prepared.edge_map, mask, "prod")

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Optional[Tensor] = None,
                line_index: Optional[Tensor] = None,
                node_level: Optional[Tensor] = None,
                schedule: Optional[DagSchedule] = None,
                edge_mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            x: node features ``[N, in_channels]``.
            edge_index: ``[2, E]``: a DAG, or an undirected PyG graph (both directions of
                every edge stored), which is oriented by node id (see ``orient``).
            edge_attr: ``[E, edge_dim]`` when the layer was built with ``edge_dim``.
            line_index: for a prepared DAG (``edge_index`` already the DAG this layer runs
                on, after any ``flow`` reversal): its line graph for this layer's mode (full
                for P, the multitree for D), e.g. from :meth:`DAGPlan.view
                <plstm_graph.transforms.DAGPlan.view>`. With it, ``edge_index`` is taken as
                given (no orientation, no reversal).
            node_level: with ``line_index``: the DAG's topological levels ``[N]``.
            schedule: with ``line_index``: a prebuilt :class:`~plstm_graph.dag.DagSchedule`
                for exactly this DAG and line graph; skips all index work.
            edge_mask: ``[E]`` weights in ``[0, 1]`` (e.g. an explanation) that scale the
                state each edge of ``edge_index`` carries; when given, it replaces a mask an
                explainer set on the layer.
        """
        edge_attr = self._check_features(x, edge_index, edge_attr)
        self.initialize_parameters(x)
        for hook in self._propagate_forward_pre_hooks.values():
            res = hook(self, (edge_index, None, dict(x=x, edge_attr=edge_attr)))
            if res is not None:
                edge_index, _, kwargs = res
                x, edge_attr = kwargs["x"], kwargs.get("edge_attr")
        num_edges_in = edge_index.size(1)
        prepared = None
        if line_index is None and isinstance(schedule, NodeSchedule):  # a prepared DAG
            if not self.node_level_transitions():
                raise ValueError("a NodeSchedule (DAGPlan.view(..., node_level_transitions="
                                 "True)) is for P-mode layers without edge features or with "
                                 "transition_form='factorised'; pass this layer its line "
                                 "graph (DAGPlan.view(mode))")
            dag_index = edge_index
        elif line_index is None:
            if node_level is not None or schedule is not None:
                raise ValueError("node_level and schedule describe a prepared DAG and need its "
                                 "line_index too (e.g. **DAGPlan.view(mode))")
            prepared = self.prepare(edge_index, x.size(0))
            if prepared.first_edge is not None and edge_attr is not None:
                edge_attr = edge_attr[prepared.first_edge]
            dag_index, line_index = prepared.edge_index, prepared.line_index
            node_level, schedule = prepared.node_level, prepared.schedule
        else:
            dag_index = edge_index
        if edge_mask is None:
            edge_mask = self._explain_edge_mask(prepared, num_edges_in)
        else:  # (an explicit mask, e.g. PLSTMNet's mapping of an explainer's, wins)
            if not isinstance(edge_mask, Tensor) or edge_mask.shape != (num_edges_in,):
                shape = list(edge_mask.shape) if isinstance(edge_mask, Tensor) else edge_mask
                raise ValueError(f"edge_mask must have shape [E={num_edges_in}], got {shape}")
            if prepared is not None and prepared.edge_map is not None:
                edge_mask = edge_mask.new_ones(dag_index.size(1)).scatter_reduce(
                    0, prepared.edge_map, edge_mask, "prod")

        num_nodes, heads = x.size(0), self.heads
        query, key, value, node_logits = self.node_projections(x)
        # node-level transitions: a mask on edge b = (u -> w) scales S_b and the state
        # T_u H_u carried into b (the op's carry, times the factorised edge factor), as
        # T_{a->b} m_b does per arc
        source, transition, mark, direct, carry = self.gates(
            x, dag_index, line_index, edge_attr, node_logits, edge_mask, return_carry=True)
        out = plstm_dag(query, key, value, source, transition, mark, direct, dag_index,
                        line_index, node_level=node_level, schedule=schedule,
                        backend=self.backend, algorithm=self.algorithm,
                        recompute=self.recompute, carry=carry)
        # the per-head norm weight scales the output projection's columns instead of the
        # [N, H, V] activations: the same function, one [N, H, V] product less each way
        out = rms_norm(out, self.norm_eps)
        out = out.reshape(num_nodes, heads * self.value_dim)
        weight = self.lin_out.weight * self.norm_weight.reshape(1, -1)
        out = F.linear(out, weight, self.lin_out.bias)
        for hook in self._propagate_forward_hooks.values():
            res = hook(self, (edge_index, None, dict(x=x, edge_attr=edge_attr)), out)
            if res is not None:
                out = res
        return out

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"heads={self.heads}, mode={self.mode!r}, edge_dim={self.edge_dim})")
