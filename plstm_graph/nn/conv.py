"""``PLSTMConv``: the pLSTM layer as a PyG ``MessagePassing`` module."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear, Parameter
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter

from ..dag import DagSchedule, line_graph, multitree
from ..ops import plstm_dag

MODES = ("P", "D")
# Transition bias that starts an arc with a single successor in the carrying regime
# (T ~ 0.85), see the spec: P-mode 3 / (0.5 + 3), D-mode tanh(1.25).
DEFAULT_TRANSITION_BIAS = {"P": 3.0, "D": 1.25}


def _small_normal_(weight: Tensor) -> None:
    """N(0, 2 / (5 fan_in)), the pLSTM paper's init for the q/k/v/out projections."""
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
        self.node = Linear(node_dim, heads, bias=True)
        self.edges = torch.nn.ModuleList(Linear(d, heads, bias=False) for d in edge_dims)
        self.reset_parameters()

    def reset_parameters(self) -> None:
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


def _rms_norm(y: Tensor, eps: float) -> Tensor:
    """``y / sqrt(mean(y^2) + eps)`` over the last dimension (torch's own where it has one)."""
    if hasattr(F, "rms_norm"):
        return F.rms_norm(y, (y.size(-1),), None, eps)
    return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)


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

    Args:
        in_channels (int): Size of each input sample.
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
        transition_bias (float, optional): Initial transition logit :math:`t_0`; the default
            puts an arc with a single successor at :math:`T \approx 0.85` (:obj:`3.0` in P-mode,
            :obj:`1.25` in D-mode), so that long routes are trainable from the start.
        alpha (float, optional): P-mode normaliser offset :math:`\alpha`. (default: :obj:`0.5`)
        normalize_over (str, optional): P-mode normalisation axis: :obj:`"source"` sums over
            the arcs leaving the incoming edge (the paper), :obj:`"target"` over the arcs
            entering the outgoing edge (the authors' edge-feature code).
            (default: :obj:`"source"`)
        gate_bias (float, optional): Initial bias of the source, mark and direct gates.
            (default: :obj:`-5.0`)
        norm_eps (float, optional): :math:`\epsilon` of the per-head RMSNorm,
            :math:`y / \sqrt{\overline{y^2} + \epsilon}`. A tiny value keeps only the
            direction of :math:`y`: the scale (how much arrived along the graph) is lost and
            the output flips sign wherever :math:`y` crosses zero, which made MUTAG training
            noisy; :obj:`1e-2` keeps small outputs small. (default: :obj:`1e-2`)
        backend (str, optional): :obj:`"torch"`, :obj:`"native"` or :obj:`None` (best
            available), passed to :func:`~plstm_graph.plstm_dag`. (default: :obj:`None`)
        algorithm (str, optional): :obj:`"scan"`, :obj:`"closed_form"` or :obj:`None`
            (the faster one for the batch), passed to :func:`~plstm_graph.plstm_dag`.
            (default: :obj:`None`)
        recompute (bool, optional): Keep only the inputs for backward and recompute the states
            then (level scan). (default: :obj:`False`)
        **kwargs (optional): Additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F_{in})`, DAG edge indices
          :math:`(2, |\mathcal{E}|)`, edge features :math:`(|\mathcal{E}|, D)` *(optional)*,
          line-graph arcs :math:`(2, L)` *(optional)*, node levels :math:`(|\mathcal{V}|)`
          *(optional)*
        - **output:** node features :math:`(|\mathcal{V}|, F_{out})`
    """

    def __init__(self, in_channels: int, out_channels: int, heads: int = 4, mode: str = "P",
                 edge_dim: Optional[int] = None, key_dim: Optional[int] = None,
                 value_dim: Optional[int] = None, transition_bias: Optional[float] = None,
                 alpha: float = 0.5, normalize_over: str = "source", gate_bias: float = -5.0,
                 norm_eps: float = 1e-2, backend: Optional[str] = None,
                 algorithm: Optional[str] = None, recompute: bool = False, **kwargs):
        kwargs.setdefault("aggr", "add")
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be 'P' or 'D', got {mode!r}")
        if normalize_over not in ("source", "target"):
            raise ValueError(f"normalize_over must be 'source' or 'target', got "
                             f"{normalize_over!r}")
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
        self.transition_bias = (DEFAULT_TRANSITION_BIAS[mode] if transition_bias is None
                                else float(transition_bias))
        self.alpha = alpha
        self.normalize_over = normalize_over
        self.gate_bias = gate_bias
        self.norm_eps = norm_eps
        self.backend = backend
        self.algorithm = algorithm
        self.recompute = recompute

        self.lin_query = Linear(in_channels, heads * key_dim, bias=False)
        self.lin_key = Linear(in_channels, heads * key_dim, bias=False)
        self.lin_value = Linear(in_channels, heads * value_dim, bias=False)
        one_edge = (edge_dim,) if edge_dim is not None else ()
        two_edges = (edge_dim, edge_dim) if edge_dim is not None else ()
        self.source_gate = _Gate(in_channels, one_edge, heads, gate_bias)
        self.mark_gate = _Gate(in_channels, one_edge, heads, gate_bias)
        self.direct_gate = _Gate(in_channels, (), heads, gate_bias)
        self.transition_gate = _Gate(in_channels, two_edges, heads, self.transition_bias)
        self.norm_weight = Parameter(torch.empty(heads, value_dim))
        self.lin_out = Linear(heads * value_dim, out_channels, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for lin in (self.lin_query, self.lin_key, self.lin_value, self.lin_out):
            _small_normal_(lin.weight)
        for gate in (self.source_gate, self.mark_gate, self.direct_gate, self.transition_gate):
            gate.reset_parameters()
        torch.nn.init.ones_(self.norm_weight)

    def _gate_modules(self):
        return (self.source_gate, self.mark_gate, self.direct_gate, self.transition_gate)

    def node_projections(self, x: Tensor):
        """Query, key, value ``[N, H, K|V]`` and the node parts of the source, mark, direct
        and transition gates ``[N, H]`` each, from one matrix product (one pass over ``x``
        instead of seven)."""
        gates = self._gate_modules()
        weight = torch.cat([self.lin_query.weight, self.lin_key.weight, self.lin_value.weight] +
                           [g.node.weight for g in gates])
        qkv = self.heads * (2 * self.key_dim + self.value_dim)
        bias = torch.cat([self.norm_weight.new_zeros(qkv)] + [g.node.bias for g in gates])
        out = F.linear(x, weight.to(x.dtype), bias.to(x.dtype))
        n, h = x.size(0), self.heads
        q, k, v, *node_gates = out.split([h * self.key_dim, h * self.key_dim,
                                          h * self.value_dim, h, h, h, h], dim=-1)
        return (q.reshape(n, h, self.key_dim), k.reshape(n, h, self.key_dim),
                v.reshape(n, h, self.value_dim), node_gates)

    def gates(self, x: Tensor, edge_index: Tensor, line_index: Tensor,
              edge_attr: Optional[Tensor] = None, node_logits=None):
        """Source, transition, mark and direct gates ``[E,H], [L,H], [E,H], [N,H]``.

        ``node_logits``: the node parts from :meth:`node_projections` (computed when absent).
        """
        if node_logits is None:
            node_logits = [g.node(x) for g in self._gate_modules()]
        src, dst = edge_index[0], edge_index[1]
        arc_in, arc_out = line_index[0], line_index[1]
        shared = dst[arc_in]
        one = (edge_attr,) if edge_attr is not None else ()
        two = (edge_attr, edge_attr) if edge_attr is not None else ()
        source = torch.sigmoid(self.source_gate(node_logits[0], src, one, (slice(None),)))
        mark = torch.sigmoid(self.mark_gate(node_logits[1], dst, one, (slice(None),)))
        direct = torch.sigmoid(node_logits[2])
        logits = self.transition_gate(node_logits[3], shared, two, (arc_in, arc_out))
        if self.mode == "D":
            transition = torch.tanh(logits)
        else:
            axis = arc_in if self.normalize_over == "source" else arc_out
            total = scatter(logits.abs(), axis, dim=0, dim_size=edge_index.size(1),
                            reduce="sum")
            transition = logits / (self.alpha + total[axis])
        return source, transition, mark, direct

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Optional[Tensor] = None,
                line_index: Optional[Tensor] = None,
                node_level: Optional[Tensor] = None,
                schedule: Optional[DagSchedule] = None) -> Tensor:
        """
        Args:
            x: node features ``[N, in_channels]``.
            edge_index: edges of a DAG ``[2, E]`` (for an undirected PyG graph use
                :class:`~plstm_graph.transforms.PrepareDAG` or :func:`~plstm_graph.to_dag`).
            edge_attr: ``[E, edge_dim]`` when the layer was built with ``edge_dim``.
            line_index: the precomputed line graph for this layer's mode (full for P, the
                multitree for D), e.g. ``batch.line_index_p``; built on the fly when absent,
                which costs a Python pass over the arcs in D-mode.
            node_level: precomputed topological levels ``[N]`` (e.g. ``batch.dag_level``);
                computed with networkx when absent.
            schedule: a prebuilt :class:`~plstm_graph.dag.DagSchedule` for exactly these
                ``edge_index`` / ``line_index`` (as :meth:`DAGPlan.view
                <plstm_graph.transforms.DAGPlan.view>` hands out); skips the index work.
        """
        if x.dim() != 2 or x.size(-1) != self.in_channels:
            raise ValueError(f"x must have shape [N, {self.in_channels}], got {list(x.shape)}")
        if self.edge_dim is not None:
            if edge_attr is None:
                raise ValueError(f"this layer was built with edge_dim={self.edge_dim}; pass "
                                 f"edge_attr")
            if edge_attr.dim() == 1:
                edge_attr = edge_attr.unsqueeze(-1)
            if edge_attr.shape != (edge_index.size(1), self.edge_dim):
                raise ValueError(f"edge_attr must have shape [E={edge_index.size(1)}, "
                                 f"{self.edge_dim}], got {list(edge_attr.shape)}")
        else:
            edge_attr = None
        if line_index is None:
            line_index = line_graph(edge_index, x.size(0))
            if self.mode == "D":
                line_index = multitree(edge_index, line_index, node_level)

        num_nodes, heads = x.size(0), self.heads
        query, key, value, node_logits = self.node_projections(x)
        source, transition, mark, direct = self.gates(x, edge_index, line_index, edge_attr,
                                                      node_logits)
        out = plstm_dag(query, key, value, source, transition, mark, direct, edge_index,
                        line_index, node_level=node_level, schedule=schedule,
                        backend=self.backend, algorithm=self.algorithm,
                        recompute=self.recompute)
        # the per-head norm weight scales the output projection's columns instead of the
        # [N, H, V] activations: the same function, one [N, H, V] product less each way
        out = _rms_norm(out, self.norm_eps).reshape(num_nodes, heads * self.value_dim)
        weight = self.lin_out.weight * self.norm_weight.reshape(1, -1).to(out.dtype)
        return F.linear(out, weight, self.lin_out.bias)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"heads={self.heads}, mode={self.mode!r}, edge_dim={self.edge_dim})")
