"""Mini-batches of one large DAG: the ancestor cones of batches of target nodes.

The pLSTM recurrence at a node reads only states that flowed in along directed paths, so a
node's output depends on its ancestors and on nothing downstream, with one exception: a P-mode
transition at a node is normalised over *all* of that node's outgoing edges, including those
that leave the cone. :class:`DAGNeighborSampler` samples the ancestor cone of a set of target
nodes hop by hop backwards along in-edges, with a bound on the in-edges kept per node and hop
(fan-in) and on the number of hops (depth), like PyG's ``NeighborLoader`` with its default
``flow="source_to_target"``, and (``keep_out_degree``) adds one *stub* edge for every
out-edge of a cone node that the cone lacks, so that those normalisations see the full graph's
out-degree.

With a depth at least the DAG's longest path and no fan-in bound, the sub-DAG's outputs at the
targets are exactly the full graph's, for P- and D-mode, with or without edge features
(``tests/test_loader.py``): the cone holds every ancestor with all its in-edges, its levels are
the full graph's, and its edges keep the full graph's relative order, so the D-mode multitree
prunes the same arcs.

It needs neither ``pyg-lib`` nor ``torch-sparse`` (which PyG's ``NeighborLoader`` requires).
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor
from torch_geometric.data import Data

from .dag import check_edge_index, topological_levels


class SampledDAG(NamedTuple):
    """One sample. Local node ``i`` is global node ``node[i]``; the first ``num_targets`` are
    the targets in the order given, then the sampled ancestors hop by hop, then the
    ``num_stubs`` stub nodes (copies of the out-of-cone head of each stub edge, with no other
    edges). Local edge ``j`` is global edge ``edge_id[j]``; the stub edges come last."""
    node: Tensor
    edge_index: Tensor
    edge_id: Tensor
    num_targets: int
    num_stubs: int
    num_sampled_nodes: List[int]
    num_sampled_edges: List[int]


def _segments(start: Tensor, count: Tensor) -> Tensor:
    """``cat([arange(s, s + c) for s, c in zip(start, count)])`` without a Python loop."""
    total = int(count.sum())
    offsets = torch.cumsum(count, 0) - count
    return (torch.arange(total, device=start.device)
            - torch.repeat_interleave(offsets - start, count, output_size=total))


def _check_num_neighbors(num_neighbors) -> List[int]:
    if isinstance(num_neighbors, int) or not isinstance(num_neighbors, Sequence):
        raise TypeError(f"num_neighbors must be a list of ints (one fan-in per hop, -1 for "
                        f"all), got {num_neighbors!r}")
    out = []
    for k in num_neighbors:
        if isinstance(k, bool) or not isinstance(k, int) or k < -1:
            raise ValueError(f"num_neighbors entries must be ints >= -1 (-1: every in-edge), "
                             f"got {list(num_neighbors)!r}")
        out.append(k)
    return out


class DAGNeighborSampler:
    r"""Samples ancestor cones of a DAG (see the module docstring).

    Args:
        edge_index (torch.Tensor): ``[2, E]`` edges ``u -> w`` of the DAG (on the CPU).
        num_nodes (int, optional): Number of nodes (default: ``max id + 1``).
        num_neighbors (List[int]): In-edges kept per node at each hop backwards from the
            targets; ``-1`` keeps all of them. Its length is the depth of the cone.
        keep_out_degree (bool, optional): Add a stub edge (to a fresh leaf node) for every
            out-edge that the cone lacks of a node with in- and out-edges in the cone, so
            that P-mode transitions are normalised over the full graph's out-degree as in a
            full-graph pass. Not needed for D-mode, which costs extra edges and line-graph
            arcs. (default: :obj:`True`)
        check_acyclic (bool, optional): Level the whole graph once to refuse a directed cycle
            here rather than in a layer later. (default: :obj:`True`)

    A sampler keeps one node-sized scratch map and is not safe to call from two threads at
    once; ``DataLoader`` worker processes each get their own copy.
    """

    def __init__(self, edge_index: Tensor, num_nodes: Optional[int] = None,
                 num_neighbors: Sequence[int] = (-1,), keep_out_degree: bool = True,
                 check_acyclic: bool = True):
        num_nodes = check_edge_index(edge_index, num_nodes)
        if edge_index.device.type != "cpu":
            raise ValueError(f"sample on the CPU: pass edge_index.cpu() (got a tensor on "
                             f"{edge_index.device}); move each batch to the device instead")
        self.num_neighbors = _check_num_neighbors(num_neighbors)
        if check_acyclic:
            topological_levels(edge_index, num_nodes)  # names a node on a cycle
        self.num_nodes = num_nodes
        self.num_edges = edge_index.size(1)
        self.keep_out_degree = keep_out_degree
        self.src = edge_index[0].contiguous()
        self.dst = edge_index[1].contiguous()
        # in-edges of every node, contiguous (CSC)
        self.in_eid = torch.sort(self.dst, stable=True).indices
        self.in_src = self.src[self.in_eid]
        self.in_ptr = self._ptr(self.dst)
        if keep_out_degree:
            self.out_eid = torch.sort(self.src, stable=True).indices
            self.out_ptr = self._ptr(self.src)
        # scratch, reset after every sample: global node -> local id, edge and node flags
        self._local = torch.full((num_nodes,), -1, dtype=torch.long)
        self._taken = torch.zeros(self.num_edges, dtype=torch.bool)
        self._mark = torch.zeros(num_nodes, dtype=torch.bool)

    def _ptr(self, keys: Tensor) -> Tensor:
        ptr = torch.zeros(self.num_nodes + 1, dtype=torch.long)
        torch.cumsum(torch.bincount(keys, minlength=self.num_nodes), 0, out=ptr[1:])
        return ptr

    def _pick(self, frontier: Tensor, k: int, generator) -> Tensor:
        """Positions (into the CSC arrays) of the in-edges kept for ``frontier`` at one hop:
        all of a node's in-edges when it has at most ``k``, else ``k`` of them uniformly
        without replacement."""
        start = self.in_ptr[frontier]
        deg = self.in_ptr[frontier + 1] - start
        if k < 0 or int(deg.max()) <= k:
            return _segments(start, deg)
        few = deg <= k
        keep = [_segments(start[few], deg[few])]
        start, deg = start[~few], deg[~few]
        pos = _segments(start, deg)
        # a random key per candidate; sorting by (node, key) ranks each node's in-edges in a
        # uniformly random order, of which the first k are kept
        seg = torch.repeat_interleave(torch.arange(deg.numel()), deg, output_size=pos.numel())
        key = torch.rand(pos.numel(), generator=generator, dtype=torch.float64)
        order = torch.argsort(seg.to(torch.float64) + key)
        rank = torch.arange(pos.numel()) - (torch.cumsum(deg, 0) - deg)[seg]
        keep.append(pos[order][rank < k])
        return torch.cat(keep)

    def sample(self, targets: Tensor, generator: Optional[torch.Generator] = None
               ) -> SampledDAG:
        """The cone of ``targets`` (distinct global node ids, a 1-D long tensor)."""
        if not isinstance(targets, Tensor) or targets.dtype != torch.long or \
                targets.dim() != 1:
            raise TypeError(f"targets must be a 1-D long tensor of node ids, got "
                            f"{targets.dtype if isinstance(targets, Tensor) else targets!r}")
        targets = targets.cpu()
        if targets.numel() and (int(targets.min()) < 0 or
                                int(targets.max()) >= self.num_nodes):
            raise ValueError(f"targets must be node ids in [0, {self.num_nodes}), got "
                             f"{int(targets.min())}..{int(targets.max())}")
        if torch.unique(targets).numel() != targets.numel():
            raise ValueError("targets must be distinct node ids")
        local = self._local
        local[targets] = torch.arange(targets.numel())
        nodes, edges = [targets], []
        count = targets.numel()
        frontier = targets
        try:
            for k in self.num_neighbors:
                if frontier.numel() == 0:
                    edges.append(frontier.new_empty(0))
                    nodes.append(frontier.new_empty(0))
                    continue
                pos = self._pick(frontier, k, generator)
                edges.append(self.in_eid[pos])
                parents = self.in_src[pos]
                new = torch.unique(parents[local[parents] < 0])
                local[new] = torch.arange(count, count + new.numel())
                count += new.numel()
                nodes.append(new)
                frontier = new  # nodes already in the cone were expanded when they joined
            # ascending global edge ids: the full graph's relative order, which the D-mode
            # multitree uses to break ties between edges of one level
            eid = torch.sort(torch.cat(edges)).values if edges else targets.new_empty(0)
            src, dst = local[self.src[eid]], local[self.dst[eid]]
            stub_eid = eid.new_empty(0)
            if self.keep_out_degree and eid.numel():
                # only a node with in- and out-edges in the cone carries states on along
                # arcs that reach a cone node; at a target without out-edges (say) the arcs
                # into stubs would feed nothing but the stubs
                heads = torch.unique(self.dst[eid])
                tails = self.src[eid]
                self._mark[tails] = True
                heads = heads[self._mark[heads]]
                self._mark[tails] = False
                self._taken[eid] = True
                start = self.out_ptr[heads]
                out = self.out_eid[_segments(start, self.out_ptr[heads + 1] - start)]
                stub_eid = out[~self._taken[out]]
                self._taken[eid] = False
            node = torch.cat(nodes + [self.dst[stub_eid]])
            edge_index = torch.stack([
                torch.cat([src, local[self.src[stub_eid]]]),
                torch.cat([dst, torch.arange(count, count + stub_eid.numel())])])
            return SampledDAG(node=node, edge_index=edge_index,
                              edge_id=torch.cat([eid, stub_eid]),
                              num_targets=targets.numel(), num_stubs=stub_eid.numel(),
                              num_sampled_nodes=[n.numel() for n in nodes],
                              num_sampled_edges=[e.numel() for e in edges])
        finally:
            for n in nodes:
                local[n] = -1


class DAGNeighborLoader(torch.utils.data.DataLoader):
    r"""Mini-batches of target nodes of one large DAG, each as the sampled sub-DAG of their
    ancestor cone (:class:`DAGNeighborSampler`), in PyG's ``NeighborLoader`` layout.

    Every batch is a :class:`~torch_geometric.data.Data` with the node-level attributes of
    ``data`` gathered at ``n_id`` and the edge-level ones at ``e_id``; the first
    ``batch_size`` nodes are the targets (score ``out[:batch.batch_size]``). It also carries
    ``input_id`` (positions in ``input_nodes``), ``num_sampled_nodes`` / ``num_sampled_edges``
    per hop (hop 0: the targets) and ``num_stub_nodes``: the last that many nodes and edges are
    the stubs that keep P-mode out-degrees (their outputs mean nothing).

    Args:
        data (torch_geometric.data.Data): One graph whose ``edge_index`` is a DAG.
        num_neighbors (List[int]): Fan-in per hop (``-1``: all in-edges); its length is the
            sampling depth.
        input_nodes (torch.Tensor, optional): Target nodes, as distinct ids or a boolean mask;
            all nodes when :obj:`None`.
        keep_out_degree (bool, optional): See :class:`DAGNeighborSampler`.
            (default: :obj:`True`)
        sampling_generator (torch.Generator, optional): Random source of the fan-in sampling
            (default: torch's global generator, which ``DataLoader`` seeds differently in every
            worker).
        check_acyclic (bool, optional): See :class:`DAGNeighborSampler`.
        **kwargs (optional): :class:`torch.utils.data.DataLoader` arguments (``batch_size``,
            ``shuffle``, ``num_workers``, ``generator`` for the shuffle, ...).
    """

    def __init__(self, data: Data, num_neighbors: Sequence[int],
                 input_nodes: Optional[Tensor] = None, keep_out_degree: bool = True,
                 sampling_generator: Optional[torch.Generator] = None,
                 check_acyclic: bool = True, **kwargs):
        if not isinstance(data, Data):
            raise TypeError(f"data must be a torch_geometric.data.Data graph, got "
                            f"{type(data).__name__}")
        if "collate_fn" in kwargs:
            raise ValueError("DAGNeighborLoader builds its batches itself; collate_fn is "
                             "not accepted")
        num_nodes = data.num_nodes
        self.data = data
        self.dag_sampler = DAGNeighborSampler(data.edge_index, num_nodes, num_neighbors,
                                          keep_out_degree=keep_out_degree,
                                          check_acyclic=check_acyclic)
        self.input_nodes = self._input_nodes(input_nodes, num_nodes)
        self.sampling_generator = sampling_generator
        super().__init__(range(self.input_nodes.numel()), collate_fn=self._collate, **kwargs)

    @staticmethod
    def _input_nodes(input_nodes: Union[Tensor, None], num_nodes: int) -> Tensor:
        if input_nodes is None:
            return torch.arange(num_nodes)
        if not isinstance(input_nodes, Tensor):
            input_nodes = torch.as_tensor(input_nodes)
        input_nodes = input_nodes.cpu()
        if input_nodes.dtype == torch.bool:
            if input_nodes.shape != (num_nodes,):
                raise ValueError(f"a boolean input_nodes mask must have shape [{num_nodes}], "
                                 f"got {list(input_nodes.shape)}")
            return input_nodes.nonzero().view(-1)
        if input_nodes.dtype != torch.long or input_nodes.dim() != 1:
            raise TypeError(f"input_nodes must be a 1-D long tensor of node ids or a boolean "
                            f"mask, got {input_nodes.dtype} of shape {list(input_nodes.shape)}")
        if input_nodes.numel() and (int(input_nodes.min()) < 0 or
                                    int(input_nodes.max()) >= num_nodes):
            raise ValueError(f"input_nodes out of range: node ids must be in "
                             f"[0, {num_nodes})")
        if torch.unique(input_nodes).numel() != input_nodes.numel():
            raise ValueError("input_nodes contains a node twice; the targets of a batch must "
                             "be distinct")
        return input_nodes

    def _collate(self, index: List[int]) -> Data:
        input_id = torch.tensor(index, dtype=torch.long)
        s = self.dag_sampler.sample(self.input_nodes[input_id], self.sampling_generator)
        return self.to_data(s, input_id)

    def to_data(self, s: SampledDAG, input_id: Optional[Tensor] = None) -> Data:
        """The batch of one :class:`SampledDAG`."""
        data = self.data
        out = Data(edge_index=s.edge_index, num_nodes=s.node.numel())
        for key, value in data.items():
            if key in ("edge_index", "num_nodes"):
                continue
            if isinstance(value, Tensor) and data.is_node_attr(key):
                out[key] = value[s.node]
            elif isinstance(value, Tensor) and data.is_edge_attr(key):
                out[key] = value[s.edge_id]
            else:
                out[key] = value
        out.n_id, out.e_id = s.node, s.edge_id
        if input_id is not None:
            out.input_id = input_id
        out.batch_size = s.num_targets
        out.num_stub_nodes = s.num_stubs
        out.num_sampled_nodes = s.num_sampled_nodes
        out.num_sampled_edges = s.num_sampled_edges
        return out

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(num_targets={self.input_nodes.numel()}, "
                f"num_neighbors={self.dag_sampler.num_neighbors}, "
                f"keep_out_degree={self.dag_sampler.keep_out_degree})")
