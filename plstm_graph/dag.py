"""DAG preparation: validation, orientation, levels, line graphs, multitree pruning and the
scan schedule.

Everything here is index bookkeeping on integer tensors. It knows nothing about kernels: the op
layer (:mod:`plstm_graph.ops`) consumes a :class:`DagSchedule` and never builds one itself
except through :func:`build_schedule`.

Conventions: ``edge_index[0]`` is the tail (source) and ``edge_index[1]`` the head (target) of
every edge; ``line_index[0]`` / ``line_index[1]`` are the incoming / outgoing edge of an arc of
the line graph, which meet at the shared node ``edge_index[1, a] == edge_index[0, b]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import List, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "check_edge_index",
    "check_line_index",
    "check_node_level",
    "line_graph",
    "multitree",
    "topological_levels",
    "to_dag",
    "reverse_dag",
    "weakly_connected_components",
    "component_positions",
    "DagSchedule",
    "build_schedule",
    "NodeSchedule",
    "build_node_schedule",
]


def _native_cpu(*tensors: Tensor) -> bool:
    """Whether the compiled index ops (``csrc/ops/prepare.cpp``) can take these tensors: the
    extension is loaded and they live on the CPU. The Python code below stays the reference
    (and the path for other devices); ``tests/test_prepare_native.py`` compares the two."""
    from .ops import native  # deferred: the ops package imports this module

    return native.WITH_NATIVE and all(isinstance(t, Tensor) and t.device.type == "cpu"
                                      for t in tensors)


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
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
    if _native_cpu(edge_index):  # one pass instead of four torch calls and three syncs
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
        loops = (edge_index[0] == edge_index[1]).nonzero()
        if loops.numel() > 0:
            e = int(loops[0, 0])
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
    bad = (edge_index[1, line_index[0]] != edge_index[0, line_index[1]]).nonzero()
    if bad.numel() > 0:
        j = int(bad[0, 0])
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
    bad = (node_level[edge_index[0]] >= node_level[edge_index[1]]).nonzero()
    if bad.numel() > 0:
        e = int(bad[0, 0])
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


# ---------------------------------------------------------------------------------------------
# line graph
# ---------------------------------------------------------------------------------------------
def _csr(keys: Tensor, size: int) -> Tuple[Tensor, Tensor]:
    """Stable sort ``keys`` into CSR form: (``ptr[size + 1]``, ``perm``)."""
    perm = torch.sort(keys, stable=True).indices
    counts = torch.bincount(keys, minlength=size)
    ptr = torch.zeros(size + 1, dtype=torch.long, device=keys.device)
    torch.cumsum(counts, 0, out=ptr[1:])
    return ptr, perm


def line_graph(edge_index: Tensor, num_nodes: Optional[int] = None) -> Tensor:
    """Every arc ``a -> b`` with ``dst(a) == src(b)``, as ``line_index[2, L]``.

    Arcs are ordered by ``a`` and, for equal ``a``, by ``b``. Built with one CSR of the edges by
    source node and ``repeat_interleave``; no Python loop over edges or nodes.
    """
    if _native_cpu(edge_index):
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


# ---------------------------------------------------------------------------------------------
# levels
# ---------------------------------------------------------------------------------------------
def _node_on_cycle(edge_index: Tensor, remaining: Tensor) -> int:
    """A node on a directed cycle, given a boolean mask of nodes Kahn's algorithm never freed.

    Every such node has a predecessor that is also never freed, so walking predecessors must
    revisit a node, and the first revisited node lies on a cycle.
    """
    src, dst = edge_index[0].tolist(), edge_index[1].tolist()
    rem = remaining.tolist()
    pred = {}
    for u, w in zip(src, dst):
        if rem[u] and rem[w] and w not in pred:
            pred[w] = u
    node = int(remaining.nonzero()[0, 0])
    seen = set()
    while node not in seen:
        seen.add(node)
        node = pred[node]
    return node


LEVEL_METHODS = ("auto", "native", "torch", "networkx")


def topological_levels(edge_index: Tensor, num_nodes: Optional[int] = None,
                       method: str = "auto") -> Tensor:
    """Topological generation of every node: sources are level 0, and every other node sits one
    level above its highest predecessor (``networkx.topological_generations``).

    Args:
        edge_index: ``[2, E]`` directed edges.
        num_nodes: number of nodes (default ``max id + 1``).
        method: ``"auto"`` (``"native"`` where the compiled ops are loaded and the tensor is
            on the CPU, else ``"torch"``), ``"native"`` (Kahn's algorithm in C++, one pass),
            ``"torch"`` (Kahn's algorithm one level at a time: a vectorised step for a wide
            level, a short Python loop for a narrow one) or ``"networkx"`` (the reference).
            All four give the same levels.

    Raises ``ValueError`` naming a node on a directed cycle.
    """
    if method not in LEVEL_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {LEVEL_METHODS}")
    if method == "auto":
        method = "native" if _native_cpu(edge_index) else "torch"
    if method == "native":
        from .ops import native

        if not native.WITH_NATIVE:
            raise RuntimeError(f"method='native' was requested but "
                               f"{native.unavailable_reason(edge_index.device)}")
        _check_index_tensor(edge_index, "edge_index")
        return torch.ops.plstm_graph.topological_levels(
            edge_index.cpu(), _num_nodes_arg(num_nodes)).to(edge_index.device)
    num_nodes = check_edge_index(edge_index, num_nodes)
    device = edge_index.device
    if method == "networkx":
        import networkx as nx

        graph = nx.DiGraph()
        graph.add_nodes_from(range(num_nodes))
        graph.add_edges_from(edge_index.t().tolist())
        level = torch.empty(num_nodes, dtype=torch.long)
        try:
            for depth, generation in enumerate(nx.topological_generations(graph)):
                level[generation] = depth
        except nx.NetworkXUnfeasible:
            cycle = nx.find_cycle(graph)
            raise ValueError(f"edge_index has a directed cycle through node {cycle[0][0]}; "
                             f"pLSTM needs a DAG") from None
        return level.to(device)
    return _levels_torch(edge_index, num_nodes)


_SMALL_FRONTIER = 256  # fan-out below which one level is cheaper in Python than in torch


def _levels_torch(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Kahn's algorithm one level at a time, on the CPU.

    A level whose frontier has many out-edges is one vectorised step (gather, ``index_add_``,
    ``unique``); a level with few (a deep, narrow DAG such as a long chain, where a torch step's
    fixed cost of some 50 microseconds would dominate) is a short Python loop that updates the
    same in-degree buffer through a NumPy view. Without NumPy every level is a torch step.
    """
    device = edge_index.device
    edge_index = edge_index.cpu()
    src, dst = edge_index[0], edge_index[1]
    ptr, by_src = _csr(src, num_nodes)
    heads_by_src = dst[by_src]
    indeg = torch.bincount(dst, minlength=num_nodes)
    level = torch.full((num_nodes,), -1, dtype=torch.long)
    frontier = (indeg == 0).nonzero().view(-1)
    try:
        import numpy  # noqa: F401

        indeg_np, level_np = indeg.numpy(), level.numpy()
    except (ImportError, RuntimeError):
        indeg_np = level_np = None
    ptr_list = heads_list = None
    depth = 0
    while True:
        if isinstance(frontier, list):
            if not frontier:
                break
            fan = sum(ptr_list[u + 1] - ptr_list[u] for u in frontier)
            if fan > _SMALL_FRONTIER:
                frontier = torch.tensor(frontier, dtype=torch.long)
        elif (indeg_np is not None and frontier.numel() <= 64 and
              int((ptr[frontier + 1] - ptr[frontier]).sum()) <= _SMALL_FRONTIER):
            if ptr_list is None:
                ptr_list, heads_list = ptr.tolist(), heads_by_src.tolist()
            frontier = frontier.tolist()
        if isinstance(frontier, list):  # a narrow level: plain Python on the shared buffers
            nxt = []
            for u in frontier:
                level_np[u] = depth
                for w in heads_list[ptr_list[u]:ptr_list[u + 1]]:
                    left = indeg_np[w] - 1
                    indeg_np[w] = left
                    if left == 0:
                        nxt.append(w)
            frontier = nxt
            depth += 1
            continue
        if frontier.numel() == 0:
            break
        level[frontier] = depth
        fan = ptr[frontier + 1] - ptr[frontier]
        total = int(fan.sum())
        if total == 0:
            break
        start = torch.cumsum(fan, 0) - fan
        at = torch.arange(total) + torch.repeat_interleave(ptr[frontier] - start, fan,
                                                         output_size=total)
        heads = heads_by_src[at]
        indeg.index_add_(0, heads, torch.full_like(heads, -1))
        candidates = torch.unique(heads)
        frontier = candidates[indeg[candidates] == 0]
        depth += 1
    remaining = level < 0
    if bool(remaining.any()):
        node = _node_on_cycle(edge_index, remaining)
        raise ValueError(f"edge_index has a directed cycle through node {node}; "
                         f"pLSTM needs a DAG")
    return level.to(device)


# ---------------------------------------------------------------------------------------------
# multitree pruning (D-mode)
# ---------------------------------------------------------------------------------------------
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
        method = "native" if _native_cpu(edge_index, line_index, node_level) else "python"
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


# ---------------------------------------------------------------------------------------------
# orientation
# ---------------------------------------------------------------------------------------------
def to_dag(edge_index: Tensor, edge_attr: Optional[Tensor] = None,
           num_nodes: Optional[int] = None,
           rank: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
    """Orient an undirected graph into a DAG.

    Each edge ``{u, w}`` points from the lower to the higher node id (or the lower ``rank``
    when given), and the two stored directions of an undirected edge collapse to one DAG edge
    that keeps the attributes of its first occurrence. Output edges are sorted by (tail, head).

    Returns:
        A tuple ``(dag_edge_index, dag_edge_attr)``: ``[2, E']`` and the matching ``[E', D]``
        rows of ``edge_attr`` (``None`` without ``edge_attr``). Take ``to_dag(ei)[0]`` for the
        edges alone (``PLSTMConv`` and ``PLSTMNet`` also orient undirected input themselves).

    Self-loops cannot be oriented and raise ``ValueError``.
    """
    num_nodes = check_edge_index(edge_index, num_nodes)
    if edge_attr is not None and (not isinstance(edge_attr, Tensor) or
                                  edge_attr.size(0) != edge_index.size(1)):
        shape = list(edge_attr.shape) if isinstance(edge_attr, Tensor) else type(edge_attr)
        raise ValueError(f"edge_attr must have one row per edge ({edge_index.size(1)}), got "
                         f"{shape}")
    if rank is None:
        position = None
        key_u, key_w = edge_index[0], edge_index[1]
    else:
        if rank.dim() != 1 or rank.numel() != num_nodes:
            raise ValueError(f"rank must have shape [{num_nodes}], got {list(rank.shape)}")
        if torch.unique(rank).numel() != num_nodes:
            raise ValueError("rank must give every node a distinct value")
        # dense positions 0..N-1 in rank order, so that the pair key below is collision-free
        position = torch.empty(num_nodes, dtype=torch.long, device=rank.device)
        position[torch.argsort(rank)] = torch.arange(num_nodes, device=rank.device)
        key_u, key_w = position[edge_index[0]], position[edge_index[1]]
    flip = key_u > key_w
    lo = torch.where(flip, edge_index[1], edge_index[0])
    hi = torch.where(flip, edge_index[0], edge_index[1])
    if position is None:
        sort_key = lo * max(num_nodes, 1) + hi
    else:
        sort_key = position[lo] * max(num_nodes, 1) + position[hi]
    uniq, inverse = torch.unique(sort_key, return_inverse=True)
    first = torch.full((uniq.numel(),), edge_index.size(1), dtype=torch.long,
                       device=edge_index.device)
    first.scatter_reduce_(0, inverse, torch.arange(edge_index.size(1), device=edge_index.device),
                          reduce="amin")
    out = torch.stack([lo[first], hi[first]], dim=0)
    return out, (edge_attr[first] if edge_attr is not None else None)


def reverse_dag(edge_index: Tensor) -> Tensor:
    """The reversed DAG: every edge flipped, edge ids unchanged."""
    return edge_index.flip(0)


# ---------------------------------------------------------------------------------------------
# components
# ---------------------------------------------------------------------------------------------
def weakly_connected_components(edge_index: Tensor,
                                num_nodes: Optional[int] = None) -> Tuple[Tensor, int]:
    """Component label of every node (edge directions ignored) and the number of components.

    Components are numbered in the order of their lowest node id. Vectorised label
    propagation: every round hooks each root onto the lowest root next to it, then pointer
    jumping flattens the forest; the number of roots at least halves per round, so a batch of
    molecules and a 20,000-node chain both take a handful of rounds.
    """
    num_nodes = check_edge_index(edge_index, num_nodes, allow_self_loops=True)
    label = torch.arange(num_nodes, device=edge_index.device)
    if edge_index.size(1) > 0:
        src, dst = edge_index[0], edge_index[1]
        while True:
            a, b = label[src], label[dst]
            lo, hi = torch.minimum(a, b), torch.maximum(a, b)
            differ = lo != hi
            if not bool(differ.any()):
                break
            label.scatter_reduce_(0, hi[differ], lo[differ], reduce="amin")
            while True:  # point every node at its root
                jumped = label[label]
                if torch.equal(jumped, label):
                    break
                label = jumped
    roots, comp = torch.unique(label, return_inverse=True)
    return comp, roots.numel()


# ---------------------------------------------------------------------------------------------
# schedule
# ---------------------------------------------------------------------------------------------
@dataclass
class DagSchedule:
    """Index tensors that drive both algorithms over one (batched) DAG: the level-parallel
    scan and the per-component closed form, plus the sizes the op layer needs to choose
    between them.

    An edge ``e = (u -> w)`` is computed at the level of its tail ``u``: all its predecessors
    end at ``u`` and so start at strictly lower levels. All tensors are ``long`` and live on the
    device of ``edge_index``, except ``level_ptr`` and ``arc_level_ptr``, which the host loop
    reads and which therefore stay on the CPU.

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
        comp_node_ptr, comp_node: CSR of nodes by weakly connected component, each component
            in topological order (level, then id): the layout of the closed form.
        comp_edge_ptr, comp_edge: CSR of edges by component, in level order within one.
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
    comp_node_ptr: Tensor
    comp_node: Tensor
    comp_edge_ptr: Tensor
    comp_edge: Tensor
    max_component_nodes: int = 0
    max_component_edges: int = 0
    component_pairs: int = 0
    path_work: int = 0
    _ancestor_pairs: Optional[int] = field(default=None, repr=False, compare=False)

    @property
    def num_edges(self) -> int:
        return self.edge_src.numel()

    @property
    def num_arcs(self) -> int:
        return self.arc_src.numel()

    @property
    def num_levels(self) -> int:
        return self.level_ptr.numel() - 1

    def index_tensors(self) -> List[Tensor]:
        return [getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), Tensor)]

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
    _, position = component_positions(s.comp_node_ptr, s.comp_node, num_nodes)
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
        method = "native" if _native_cpu(edge_index, line_index) else "torch"
    if method == "native":
        return _build_schedule_native(edge_index, line_index, num_nodes, node_level, validate)
    if validate:
        num_nodes = check_edge_index(edge_index, num_nodes)
        check_line_index(edge_index, line_index)
    elif num_nodes is None:
        num_nodes = int(edge_index.max()) + 1 if edge_index.numel() else 0
    if node_level is None:
        node_level = topological_levels(edge_index, num_nodes, method=level_method)
    elif validate:
        check_node_level(edge_index, node_level, num_nodes)
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
        out_arc=out_arc, node_ptr=node_ptr, node_edge=node_edge, comp_node_ptr=comp_node_ptr,
        comp_node=comp_node, comp_edge_ptr=comp_edge_ptr, comp_edge=comp_edge,
        max_component_nodes=max_component_nodes, max_component_edges=max_component_edges,
        component_pairs=component_pairs, path_work=path_work)


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
class NodeSchedule:
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
    def num_edges(self) -> int:
        return self.edge_src.numel()

    @property
    def num_levels(self) -> int:
        return self.node_level_ptr.numel() - 1


def build_node_schedule(edge_index: Tensor, num_nodes: Optional[int] = None,
                        node_level: Optional[Tensor] = None, validate: bool = True,
                        level_method: str = "auto") -> NodeSchedule:
    """Build the :class:`NodeSchedule` of ``edge_index`` (checks as :func:`build_schedule`:
    ids in range, no self-loop, acyclic or a valid ``node_level``)."""
    if validate:
        num_nodes = check_edge_index(edge_index, num_nodes)
    elif num_nodes is None:
        num_nodes = int(edge_index.max()) + 1 if edge_index.numel() else 0
    if node_level is None:
        node_level = topological_levels(edge_index, num_nodes, method=level_method)
    elif validate:
        check_node_level(edge_index, node_level, num_nodes)
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
