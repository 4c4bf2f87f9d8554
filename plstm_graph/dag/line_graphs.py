"""The line graph of a DAG (:func:`line_graph`, the P-mode arcs) and its multitree pruning
(:func:`multitree`, the D-mode arcs)."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from . import _common
from ._common import csr as _csr
from .levels import topological_levels
from .validation import (_check_index_tensor, _num_nodes_arg, check_edge_index,
                         check_line_index, check_node_level)


def line_graph(edge_index: Tensor, num_nodes: Optional[int] = None) -> Tensor:
    """Every arc ``a -> b`` with ``dst(a) == src(b)``, as ``line_index[2, L]``.

    Arcs are ordered by ``a`` and, for equal ``a``, by ``b``. Built with one CSR of the edges by
    source node and ``repeat_interleave``; no Python loop over edges or nodes.
    """
    if _common.native_cpu(edge_index):
        _check_index_tensor(edge_index, "edge_index")
        return torch.ops.plstm_graph.line_graph(edge_index, _num_nodes_arg(num_nodes))
    return _line_graph_torch(edge_index, num_nodes)


def _line_graph_torch(edge_index: Tensor, num_nodes: Optional[int] = None) -> Tensor:
    """The pure-PyTorch :func:`line_graph` (any device; the reference of the native op)."""
    num_nodes = check_edge_index(edge_index, num_nodes, allow_self_loops=True)
    src, dst = edge_index[0], edge_index[1]
    ptr, by_src = _csr(src, num_nodes)
    out_deg = ptr[1:] - ptr[:-1]
    fan = out_deg[dst]  # number of arcs leaving each edge
    num_arcs = int(fan.sum())
    a = torch.repeat_interleave(torch.arange(edge_index.size(1), device=src.device), fan,
                                output_size=num_arcs)
    first = torch.cumsum(fan, 0) - fan
    offset = torch.arange(num_arcs, device=src.device) - torch.repeat_interleave(
        first, fan, output_size=num_arcs)
    b = by_src[ptr[dst[a]] + offset]
    return torch.stack([a, b], dim=0)


def multitree(edge_index: Tensor, line_index: Tensor,
              node_level: Optional[Tensor] = None) -> Tensor:
    """Prune ``line_index`` to a multitree (at most one directed path between any two edges).

    Line-graph nodes (edges) are visited in topological order (level of the tail node, then
    edge id); for each edge ``c`` its predecessors ``p`` are visited earliest-first, and the arc
    ``p -> c`` is dropped when ``c`` is already reachable, through arcs kept so far, from an
    ancestor of ``p`` (``p`` included). Only arcs are removed, never edges, and an input that is
    already a multitree is returned unchanged. Deterministic; kept arcs keep their input order.
    Of several copies of one arc the first (lowest column) is the one considered for keeping.

    How (the result is exactly that of the rule above, visited edge by edge):

    * ``p -> c`` is dropped iff ``p`` and an earlier kept predecessor ``p'`` of ``c`` share an
      ancestor ``x``. Walking kept arcs backwards from ``x`` ends at an edge without kept
      in-arcs, which is an edge without any in-arc (the first predecessor is always kept): a
      *root*. So it suffices to compare the sets of roots above ``p`` and above ``c``'s kept
      predecessors: Python ``set`` objects while small, ``int`` bitsets over the ``R <= E``
      roots once large (the reference used bitsets over all ``E`` edges).
    * The decisions for ``c`` depend only on its ordered predecessor list, which for the full
      line graph is the in-edges of ``c``'s tail node. Edges with identical lists (and tail) form
      one group, decided once: one bitset operation per in-edge of a node instead of one per
      arc, and one shared root set per group. Groups come from a hash that is verified
      exactly; a member whose list differs is decided on its own.
    * A group's root set is freed once every group reading it has been decided, so memory
      follows the live frontier. Worst case ``O(E * R / 64)`` word operations and
      ``O(live * R / 8)`` bytes; about a second and under 100 MB for random DAGs with ``3e5``
      edges (``benchmarks/bench_schedule.py``).
    """
    num_nodes = check_edge_index(edge_index)
    if node_level is None:
        node_level = topological_levels(edge_index, num_nodes)
    else:
        # the visiting order must be topological: a leveling that does not climb along every
        # edge would silently give a non-multitree
        if (isinstance(node_level, Tensor) and node_level.dtype != torch.long and
                not node_level.is_floating_point() and not node_level.is_complex() and
                node_level.dtype != torch.bool):
            node_level = node_level.long()
        if isinstance(node_level, Tensor) and node_level.dim() == 1 and \
                node_level.numel() < num_nodes:
            raise ValueError(f"node_level has {node_level.numel()} entries but edge_index "
                             f"names {num_nodes} nodes")
        check_node_level(edge_index, node_level,
                         node_level.numel() if isinstance(node_level, Tensor) else num_nodes)
    check_line_index(edge_index, line_index)
    return _multitree_checked(edge_index, line_index, node_level)


def _multitree_checked(edge_index: Tensor, line_index: Tensor, node_level: Tensor,
                       method: str = "auto") -> Tensor:
    """:func:`multitree` on inputs already known to be consistent (e.g. just built by
    :func:`line_graph` and :func:`topological_levels`)."""
    if line_index.size(1) == 0:
        return line_index.clone()
    if method == "auto":
        method = "native" if _common.native_cpu(edge_index, line_index, node_level) else "python"
    if method == "native":
        keep = torch.ops.plstm_graph.multitree_keep(edge_index, line_index, node_level)
    else:
        keep = _multitree_keep(edge_index.cpu(), line_index.cpu(), node_level.cpu())
    return line_index[:, keep.to(line_index.device)]


def _multitree_keep(edge_index: Tensor, line_index: Tensor, node_level: Tensor) -> Tensor:
    """Boolean mask of the arcs of ``line_index`` that :func:`multitree` keeps (CPU tensors)."""
    num_edges, num_arcs = edge_index.size(1), line_index.size(1)
    tails, heads = line_index[0], line_index[1]
    # topological position of every edge: by tail level, then id
    order = torch.sort(node_level[edge_index[0]], stable=True).indices
    pos = torch.empty(num_edges, dtype=torch.long)
    pos[order] = torch.arange(num_edges)
    # arcs grouped by head in topological order, tails earliest-first (copies in column order)
    arc_order = torch.sort(pos[heads] * num_edges + pos[tails], stable=True).indices
    t_s, h_s = tails[arc_order], heads[arc_order]
    count = torch.bincount(heads, minlength=num_edges)  # in-arcs of every edge
    count_by_pos = count[order]
    start = torch.empty(num_edges, dtype=torch.long)
    start[order] = torch.cumsum(count_by_pos, 0) - count_by_pos  # first sorted arc of an edge

    # groups of edges with the same ordered predecessor list (which implies the same tail)
    has_pred = count > 0
    cand = order[has_pred[order]]  # edges with predecessors, in topological order
    weights = torch.randint(1, 1 << 47, (num_edges,),
                            generator=torch.Generator().manual_seed(0x5EED))
    digest = torch.zeros(num_edges, dtype=torch.long).index_add_(0, h_s, weights[t_s])
    _, inverse = torch.unique(digest[cand] ^ count[cand], return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), cand.numel(), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(cand.numel()), reduce="amin")
    rep = torch.full((num_edges,), -1, dtype=torch.long)
    rep[cand] = cand[first[inverse]]
    # verify exactly: a member whose list differs from its representative's is its own group
    offset = torch.arange(num_arcs) - start[h_s]
    differs = count[h_s] != count[rep[h_s]]
    differs |= t_s != t_s[(start[rep[h_s]] + offset).clamp_(max=num_arcs - 1)]
    odd = h_s[differs].unique()
    rep[odd] = odd
    is_rep = rep[cand] == cand
    reps = cand[is_rep]
    # how many times each group's bitset is read by representatives
    rep_arc = (rep[h_s] == h_s).nonzero().view(-1)
    read_group = rep[t_s[rep_arc]]
    pending = torch.bincount(read_group[read_group >= 0], minlength=num_edges).tolist()
    root_id = torch.cumsum((~has_pred[order]).long(), 0) - 1  # roots numbered in topo order
    rid = torch.empty(num_edges, dtype=torch.long)
    rid[order] = root_id
    num_roots = int(root_id[-1]) + 1

    kept = _decide_groups(reps.tolist(), start[reps].tolist(), count[reps].tolist(),
                          t_s.tolist(), rep.tolist(), rid.tolist(), pending, num_roots)
    keep_rep = torch.zeros(num_arcs, dtype=torch.bool)
    keep_rep[torch.tensor(kept, dtype=torch.long)] = True
    keep_sorted = keep_rep[start[rep[h_s]] + offset]
    keep = torch.empty(num_arcs, dtype=torch.bool)
    keep[arc_order] = keep_sorted
    return keep


def _decide_groups(reps: List[int], starts: List[int], counts: List[int], tails: List[int],
                   rep: List[int], rid: List[int], pending: List[int],
                   num_roots: int) -> List[int]:
    """The sequential part of :func:`multitree`: for every group representative (in
    topological order) walk its predecessors ``tails[start:start + count]`` and return the
    positions ``j`` of the kept ones.

    A root set is a ``set`` of root ids while small and an ``int`` bitset once larger than
    about ``num_roots / 256`` elements, where the bitset becomes the smaller of the two; so a
    set costs ``O(min(size, num_roots / 8))`` bytes and a test or a union
    ``O(min(size, num_roots / 64))`` steps. Stored sets are never mutated: a group that keeps
    one predecessor shares that predecessor's set, a group that keeps several owns a new one.
    """
    nbytes = (num_roots + 7) >> 3
    dense_from = max(16, num_roots >> 8)
    from_bytes = int.from_bytes

    def to_int(small) -> int:
        if len(small) <= 2:
            out = 0
            for i in small:
                out |= 1 << i
            return out
        bits = bytearray(nbytes)
        for i in small:
            bits[i >> 3] |= 1 << (i & 7)
        return from_bytes(bits, "little")

    kept: List[int] = []
    acc_of: dict = {}
    for r, s0, k in zip(reps, starts, counts):
        acc = None
        owned = False
        for j in range(s0, s0 + k):
            p = tails[j]
            g = rep[p]
            if g < 0:
                x = (rid[p],)
            else:
                x = acc_of[g]
                pending[g] -= 1
                if pending[g] == 0:
                    del acc_of[g]
            if acc is None:  # the first predecessor is always kept
                kept.append(j)
                if g < 0:
                    acc, owned = set(x), True
                else:
                    acc, owned = x, False
                continue
            x_dense = type(x) is int
            if type(acc) is int:
                if not x_dense:
                    x = to_int(x)
                if x & acc:
                    continue
                acc |= x
            elif x_dense:
                acc = to_int(acc)
                if x & acc:
                    continue
                acc |= x
            else:
                if not acc.isdisjoint(x):
                    continue
                if not owned:
                    acc = set(acc)
                acc.update(x)
                if len(acc) > dense_from:
                    acc = to_int(acc)
            kept.append(j)
            owned = True
        if pending[r] > 0:
            acc_of[r] = acc
    return kept
