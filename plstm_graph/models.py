"""``PLSTMNet``: the pLSTM paper's graph architecture for graph- and node-level tasks."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor
from torch_geometric.nn import global_add_pool, global_mean_pool
from torch_geometric.utils import degree

from .nn import PLSTMBlock
from .nn.conv import prefers_node_level
from .dag.orientation import ORIENTATIONS, orient
from .nn.inputs import GraphCache
from .transforms import DAGPlan

POOLS = {"mean": global_mean_pool, "sum": global_add_pool}


def degree_encoding(edge_index: Tensor, num_nodes: int, dim: int = 8) -> Tensor:
    """Sin/cos features of the in- and out-degree in the DAG, ``[N, 2 * dim]``.

    ``dim / 2`` geometric frequencies per degree, as in a transformer position encoding, so
    that small degrees (the common case) are well separated.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(100.0) * torch.arange(half, device=edge_index.device) / half)
    parts = []
    for row in (1, 0):  # in-degree (heads), out-degree (tails)
        deg = degree(edge_index[row], num_nodes, dtype=torch.float)[:, None] * freqs
        parts += [deg.sin(), deg.cos()]
    return torch.cat(parts, dim=-1)


class PLSTMNet(torch.nn.Module):
    r"""pLSTM graph network (Pöppel et al., 2025): an input encoder (node features plus a
    sin/cos encoding of the DAG degrees), then per layer four pre-norm residual pLSTM blocks:
    P-mode and D-mode on the DAG, P-mode and D-mode on the reversed DAG, each followed by an
    MLP block. Then graph pooling, or none for node-level outputs, and a linear head.

    Args:
        in_channels (int): Node feature width.
        hidden_channels (int): Width of the residual stream.
        out_channels (int): Output width (classes).
        num_layers (int, optional): Layers of four blocks each. One layer is what every
            bundled task was measured with (on MUTAG a second layer did not help, at twice
            the cost). (default: :obj:`1`)
        heads (int, optional): pLSTM heads. (default: :obj:`4`)
        edge_dim (int, optional): Edge feature width, :obj:`None` to ignore edge features.
        pool (str, optional): :obj:`"mean"`, :obj:`"sum"`, or :obj:`None` for node outputs.
            (default: :obj:`"mean"`)
        dropout (float, optional): Dropout in the blocks and before the head.
        degree_dim (int, optional): Width of each degree encoding (0 disables it).
            (default: :obj:`8`)
        mlp_ratio (int, optional): Hidden width of each MLP block as a multiple of
            ``hidden_channels`` (the paper's 4). (default: :obj:`4`)
        orient (str, optional): How a plain graph (no ``plan``) becomes the DAG:
            :obj:`"auto"` orients a graph that stores both directions of every edge from
            the lower to the higher node id (the paper's) and takes any other graph as a DAG;
            :obj:`"bfs"` points every edge away from the root of a breadth-first search per
            connected component (lowest id first), whatever the node numbering, which was
            more accurate on the large TU sets (README, "Ablations"); :obj:`"id"` orients
            every graph by id; :obj:`"none"` takes every graph as a DAG. With a ``plan`` the
            orientation is the one :class:`~plstm_graph.transforms.PrepareDAG` (``orient``)
            chose. (default: :obj:`"auto"`)
        transition_form (str, optional): :obj:`"arc"` or :obj:`"factorised"` transitions
            with edge features in the P-mode blocks (see
            :class:`~plstm_graph.nn.PLSTMConv`); the D-mode blocks always use the per-arc
            form, which their multitree needs. (default: :obj:`"arc"`)
        **kwargs (optional): Further :class:`~plstm_graph.nn.PLSTMConv` arguments
            (``backend``, ``transition_bias``, ...).

    Called with a plain PyG graph (no ``plan``), the model orients it (``orient``: undirected
    graphs by node id unless told otherwise), prepares the DAG of both directions and keeps
    that preparation while the same ``edge_index`` tensor comes back unmodified (one graph,
    many steps). Batches of many graphs are fastest prepared once per graph with :class:`~plstm_graph.transforms.PrepareDAG` and
    passed as ``plan=DAGPlan.from_data(batch)``.
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int,
                 num_layers: int = 1, heads: int = 4, edge_dim: Optional[int] = None,
                 pool: Optional[str] = "mean", dropout: float = 0.0, degree_dim: int = 8,
                 mlp_ratio: int = 4, transition_form: str = "arc", orient: str = "auto",
                 **kwargs):
        super().__init__()
        if pool is not None and pool not in POOLS:
            raise ValueError(f"pool must be one of {list(POOLS)} or None, got {pool!r}")
        if orient not in ORIENTATIONS:
            raise ValueError(f"orient must be one of {ORIENTATIONS}, got {orient!r}")
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.out_channels = out_channels
        self.num_layers = num_layers
        self.edge_dim = edge_dim
        self.pool = pool
        self.degree_dim = degree_dim
        self.transition_form = transition_form
        self.orient = orient
        self.encoder = torch.nn.Linear(in_channels + 2 * degree_dim, hidden_channels)
        # (mode, reversed) of the four blocks of one layer
        self.block_roles = [("P", False), ("D", False), ("P", True), ("D", True)]
        self.blocks = torch.nn.ModuleList(
            PLSTMBlock(hidden_channels, heads=heads, mode=mode, edge_dim=edge_dim,
                       dropout=dropout, mlp_ratio=mlp_ratio,
                       transition_form=transition_form if mode == "P" else "arc", **kwargs)
            for _ in range(num_layers) for mode, _ in self.block_roles)
        self.norm = torch.nn.LayerNorm(hidden_channels)
        self.dropout = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(hidden_channels, out_channels)
        self._cache = GraphCache()

    def reset_parameters(self) -> None:
        self._cache.clear()
        self.encoder.reset_parameters()
        for block in self.blocks:
            block.reset_parameters()
        self.norm.reset_parameters()
        self.head.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Optional[Tensor] = None,
                batch: Optional[Tensor] = None, plan: Optional[DAGPlan] = None,
                batch_size: Optional[int] = None) -> Tensor:
        """
        Args:
            x: ``[N, in_channels]`` node features.
            edge_index: ``[2, E]``, an ordinary PyG graph: undirected graphs (both directions
                stored) are oriented by node id, directed ones must be acyclic.
            edge_attr: ``[E, edge_dim]`` edge features of ``edge_index``.
            batch: ``[N]`` graph assignment (for pooling).
            plan: the batch's :class:`~plstm_graph.transforms.DAGPlan`
                (``DAGPlan.from_data(batch)`` after :class:`~plstm_graph.transforms.PrepareDAG`);
                built from ``edge_index`` when absent.
            batch_size: the number of graphs (``batch.num_graphs``); saves the pooling a
                host sync (``batch.max()``), which ``torch.compile`` would break the graph at.

        Returns:
            ``[num_graphs, out_channels]``, or ``[N, out_channels]`` when ``pool=None``.
        """
        dtype = self.encoder.weight.dtype
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dtype != dtype:
            what = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"x has dtype {what} but the model's parameters are {dtype}; "
                            f"convert one of them (e.g. x.to({dtype}) or model.to(x.dtype))")
        edge_map = None
        if plan is None:
            plan, edge_map, first = self._plan_for(edge_index, x.size(0))
            dag_attr = None
            if self.edge_dim is not None and edge_attr is not None:
                dag_attr = edge_attr if first is None else edge_attr[first]
        else:
            dag_attr = plan.edge_attr if self.edge_dim is not None else None
            if dag_attr is not None and dag_attr.is_floating_point():
                # the plan's oriented copy of the batch's edge features follows the model
                dag_attr = dag_attr.to(dtype)
        edge_mask = self._explainer_mask(edge_index, plan, edge_map)
        feats = [x]
        if self.degree_dim > 0:
            feats.append(degree_encoding(plan.edge_index, x.size(0), self.degree_dim).to(dtype))
        h = self.encoder(torch.cat(feats, dim=-1))
        roles = self.block_roles * self.num_layers
        # (a plan prepared without the full line graph leaves node-level as the only choice)
        node_level = (plan.line_index_p is None or
                      prefers_node_level(plan.line_index_p.size(1), plan.edge_index.size(1)))
        for block, (mode, reverse) in zip(self.blocks, roles):
            view = plan.view(mode, reverse, node_level and block.conv.node_level_transitions())
            view["edge_attr"] = dag_attr
            if edge_mask is not None:
                view["edge_mask"] = edge_mask
            h = block(h, **view)
        h = self.norm(h)
        if self.pool is not None:
            if batch is None:
                batch = torch.zeros(x.size(0), dtype=torch.long, device=x.device)
            h = POOLS[self.pool](h, batch, batch_size)
        return self.head(self.dropout(h))

    # index bookkeeping on a new graph is data-dependent: under torch.compile it runs eagerly
    # (one graph break); pass a prepared plan to compile the whole forward
    @torch.compiler.disable
    def _plan_for(self, edge_index: Tensor, num_nodes: int):
        """The plan of a plain graph (cached per ``edge_index`` tensor), the map from input
        edges to DAG edges and the input edge whose features each DAG edge keeps (both
        ``None`` when ``edge_index`` is already the DAG)."""
        key = (num_nodes,)
        hit = self._cache.get(edge_index, key)
        if hit is not None:
            return hit
        dag, edge_map, first = orient(edge_index, num_nodes, self.orient)
        plan = DAGPlan.from_graph(dag, num_nodes, orient="none")
        self._cache.put(edge_index, key, (plan, edge_map, first))
        return plan, edge_map, first

    def _explainer_mask(self, edge_index: Tensor, plan: DAGPlan,
                        edge_map: Optional[Tensor]) -> Optional[Tensor]:
        """An explainer's edge mask (PyG's ``set_masks`` puts it on every conv, over the
        model's input edges) as one weight per DAG edge; ``None`` when not explaining."""
        conv = self.blocks[0].conv if len(self.blocks) else None
        if conv is None or not conv.explain or conv._edge_mask is None:
            return None
        mask = conv._edge_mask.sigmoid() if conv._apply_sigmoid else conv._edge_mask
        if edge_map is not None and mask.numel() == edge_map.numel():
            return mask.new_ones(plan.edge_index.size(1)).scatter_reduce(0, edge_map, mask,
                                                                         "prod")
        if mask.numel() != plan.edge_index.size(1):
            raise ValueError(f"the explainer's edge mask has {mask.numel()} entries, but the "
                             f"model runs on {plan.edge_index.size(1)} DAG edges; explain the "
                             f"model on a plain graph (no plan) or on the DAG's edges")
        return mask

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.hidden_channels}, "
                f"{self.out_channels}, num_layers={self.num_layers}, pool={self.pool!r})")
