"""Orientation and connectivity: :func:`to_dag` (an undirected graph to a DAG),
:func:`bfs_rank` (an orientation from a root), :func:`reverse_dag` and
:func:`weakly_connected_components`."""
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
