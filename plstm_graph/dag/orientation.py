"""Orientation and connectivity: :func:`to_dag` (an undirected graph to a DAG),
:func:`bfs_rank` (an orientation from a root), :func:`orient` (what a layer does to a plain
PyG graph), :func:`reverse_dag` and :func:`weakly_connected_components`."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ._common import csr
from .validation import check_edge_index


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
    check_edge_attr_rows(edge_index, edge_attr)
    if rank is not None:
        if rank.dim() != 1 or rank.numel() != num_nodes:
            raise ValueError(f"rank must have shape [{num_nodes}], got {list(rank.shape)}")
        if torch.unique(rank).numel() != num_nodes:
            raise ValueError("rank must give every node a distinct value")
    dag, inverse = orient_pairs(edge_index, num_nodes, rank)
    first = first_occurrence(inverse, dag.size(1))
    return dag, (edge_attr[first] if edge_attr is not None else None)


def check_edge_attr_rows(edge_index: Tensor, edge_attr: Optional[Tensor]) -> None:
    """``edge_attr`` (if any) must have one row per edge of ``edge_index``."""
    if edge_attr is not None and (not isinstance(edge_attr, Tensor) or
                                  edge_attr.size(0) != edge_index.size(1)):
        shape = list(edge_attr.shape) if isinstance(edge_attr, Tensor) else type(edge_attr)
        raise ValueError(f"edge_attr must have one row per edge ({edge_index.size(1)}), got "
                         f"{shape}")


def orient_pairs(edge_index: Tensor, num_nodes: int,
                 rank: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """The work of :func:`to_dag` on checked input: the DAG's edges, sorted by the (tail,
    head) positions in id or ``rank`` order, and for every input edge the DAG edge it became
    (both stored directions of an undirected edge map to one)."""
    n = max(num_nodes, 1)
    if rank is None:
        pos_u, pos_w = edge_index[0], edge_index[1]
    else:  # dense positions 0..N-1 in rank order keep the pair key collision-free
        node_at = torch.argsort(rank)
        position = torch.empty_like(node_at)
        position[node_at] = torch.arange(node_at.numel(), device=node_at.device)
        pos_u, pos_w = position[edge_index[0]], position[edge_index[1]]
    key, inverse = torch.unique(torch.minimum(pos_u, pos_w) * n + torch.maximum(pos_u, pos_w),
                                return_inverse=True)
    dag = torch.stack([key // n, key % n])
    return (dag if rank is None else node_at[dag]), inverse


def first_occurrence(inverse: Tensor, size: int) -> Tensor:
    """For every DAG edge the first input edge that maps to it (whose attributes it keeps)."""
    first = torch.full((size,), inverse.numel(), dtype=torch.long, device=inverse.device)
    return first.scatter_reduce_(0, inverse, torch.arange(inverse.numel(),
                                                          device=inverse.device), "amin")


def bfs_rank(edge_index: Tensor, num_nodes: Optional[int] = None) -> Tensor:
    """The order in which a breadth-first search visits the nodes, ``[N]``, as a ``rank``
    for :func:`to_dag`: edge directions are ignored, every connected component is searched
    from its lowest node id, components follow each other in the order of that id, and the
    neighbours of a node are visited in id order.

    ``to_dag(edge_index, rank=bfs_rank(edge_index))`` points every edge away from the root
    (tree edges from parent to child; an edge inside one BFS layer from the earlier to the
    later visited node), so the DAG's levels follow the distance from the root instead of
    the numbering of the input file.
    """
    num_nodes = check_edge_index(edge_index, num_nodes, allow_self_loops=True)
    src = torch.cat([edge_index[0], edge_index[1]]).cpu()
    dst = torch.cat([edge_index[1], edge_index[0]]).cpu()
    # neighbours in id order within each node: sorted by id, then stably by node; the CSR is
    # walked by plain Python lists below, which for a graph of the size one prepares once (a
    # molecule, a protein) is microseconds
    by_id = torch.sort(dst, stable=True).indices
    ptr, perm = csr(src[by_id], num_nodes)
    nbrs = dst[by_id][perm].tolist()
    ptr = ptr.tolist()
    rank = [-1] * num_nodes
    visited = 0
    for root in range(num_nodes):
        if rank[root] >= 0:
            continue
        rank[root] = visited
        visited += 1
        queue, head = [root], 0
        while head < len(queue):
            node = queue[head]
            head += 1
            for nb in nbrs[ptr[node]:ptr[node + 1]]:
                if rank[nb] < 0:
                    rank[nb] = visited
                    visited += 1
                    queue.append(nb)
    return torch.tensor(rank, dtype=torch.long, device=edge_index.device)


# How a layer turns a plain PyG graph into its DAG: "auto" orients a graph that stores both
# directions of every edge by node id and takes any other graph as a DAG; "id" and "bfs"
# orient every graph (by id, or away from the root of a breadth-first search per component);
# "none" takes every graph as a DAG.
ORIENTATIONS = ("auto", "id", "bfs", "none")


def orient(edge_index: Tensor, num_nodes: int,
           how: str) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """``(dag, edge_map, first)``: the DAG a layer runs on, for every input edge the DAG edge
    it became and for every DAG edge the input edge whose attributes it keeps (both ``None``
    when the input is taken as it is)."""
    if how == "none" or (how == "auto" and not is_undirected(edge_index, num_nodes)):
        return edge_index, None, None
    check_edge_index(edge_index, num_nodes)  # a self-loop cannot be oriented
    rank = bfs_rank(edge_index, num_nodes) if how == "bfs" else None
    dag, edge_map = orient_pairs(edge_index, num_nodes, rank)
    return dag, edge_map, first_occurrence(edge_map, dag.size(1))


def is_undirected(edge_index: Tensor, num_nodes: int) -> bool:
    """Whether every edge is stored in both directions (PyG's undirected convention)."""
    if edge_index.numel() == 0:
        return False
    n = max(num_nodes, 1)
    fwd = torch.sort(edge_index[0] * n + edge_index[1]).values
    rev = torch.sort(edge_index[1] * n + edge_index[0]).values
    return bool(torch.equal(fwd, rev))


def reverse_dag(edge_index: Tensor) -> Tensor:
    """The reversed DAG: every edge flipped, edge ids unchanged."""
    return edge_index.flip(0)


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
