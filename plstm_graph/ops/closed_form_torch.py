"""The closed form in plain PyTorch: batched dense algebra over padded components.

docs/contract.md ("Closed form") writes pLSTM on a DAG as a masked linear attention. Per
weakly connected component (padded to the largest one: ``P`` nodes, ``R`` edges) and head,
with the component's edges in level order, ``A[b, a] = T_{a->b}`` is strictly lower triangular, so

    Gate = Mk (I - A)^{-1} Sk        (Sk[e, m] = S_e where m = src e; Mk[n, e] = M_e where n = dst e)
    y    = (Gate * Q K^T + diag(D * diag(Q K^T))) V

is one batched unit-triangular solve and a few batched matrix products, differentiated by
autograd. Every op is a stock PyTorch op, so this runs wherever PyTorch does (CPU, CUDA, ...);
the padding makes it pay ``C * H * (R^2 P + P^2 (K + V))``, which is cheap only while every
component is small, and the dispatcher only picks it then.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..dag import DagSchedule, NodeSchedule, component_positions, weakly_connected_components
from ._common import in_compute_dtype
from .policy import CLOSED_FORM_MAX_NODES


def _padded_attention(query: Tensor, key: Tensor, value: Tensor, direct: Tensor, comp: Tensor,
                      pos: Tensor, num_comps: int, width: int):
    """Both closed forms work on components padded to ``width`` nodes: returns ``q . k`` per
    component and head ``[C, H, P, P]``, the attention with only its direct diagonal filled
    ``D_n (q_n . k_n)``, and the padded values ``[C, P, H, V]``."""
    heads = query.shape[1]

    def padded(x: Tensor) -> Tensor:  # [N, H, W] -> [C, P, H, W]
        out = x.new_zeros(num_comps, width, heads, x.shape[-1])
        return out.index_put((comp, pos), x)

    q, k, v = padded(query), padded(key), padded(value)
    qk = torch.einsum("cnhk,cmhk->chnm", q, k)
    d = direct.new_zeros(num_comps, width, heads).index_put((comp, pos), direct)
    att = torch.diag_embed(d.transpose(1, 2) * torch.diagonal(qk, dim1=-2, dim2=-1))
    return qk, att, v


@in_compute_dtype
def closed_form_torch(query: Tensor, key: Tensor, value: Tensor, source: Tensor,
                      transition: Tensor, mark: Tensor, direct: Tensor,
                      s: DagSchedule, *, recompute: bool = False, carry=None) -> Tensor:
    """All of ``plstm_dag`` (direct term included) by the closed form (``recompute`` has no
    effect: autograd keeps what the batched products need; ``carry`` must be None)."""
    num_nodes, heads, kdim = query.shape
    vdim = value.shape[-1]
    if num_nodes == 0:
        return query.new_zeros(0, heads, vdim) + 0 * value.sum()
    num_edges = s.num_edges
    comp, pos = component_positions(s.comp_node_ptr, s.comp_node, num_nodes)
    width = s.max_component_nodes
    num_comps = s.num_components

    qk, att, v = _padded_attention(query, key, value, direct, comp, pos, num_comps, width)
    if num_edges > 0:
        ecomp, epos = component_positions(s.comp_edge_ptr, s.comp_edge, num_edges)
        rows = s.max_component_edges
        src_pos, dst_pos = pos[s.edge_src], pos[s.edge_dst]
        a = transition.new_zeros(num_comps, rows, rows, heads)
        a = a.index_put((ecomp[s.arc_dst], epos[s.arc_dst], epos[s.arc_src]), transition)
        sk = source.new_zeros(num_comps, rows, width, heads)
        sk = sk.index_put((ecomp, epos, src_pos), source)
        mk = mark.new_zeros(num_comps, width, rows, heads)
        mk = mk.index_put((ecomp, dst_pos, epos), mark)
        eye = torch.eye(rows, dtype=a.dtype, device=a.device)
        paths = torch.linalg.solve_triangular(eye - a.permute(0, 3, 1, 2),
                                              sk.permute(0, 3, 1, 2), upper=False,
                                              unitriangular=True)  # [C, H, R, P]
        gate = mk.permute(0, 3, 1, 2) @ paths  # [C, H, P, P]
        att = att + gate * qk
    y = torch.einsum("chnm,cmhv->cnhv", att, v)
    return y[comp, pos]


@in_compute_dtype
def node_closed_form_torch(query: Tensor, key: Tensor, value: Tensor, source: Tensor,
                           transition: Tensor, mark: Tensor, direct: Tensor,
                           s: NodeSchedule, *, recompute: bool = False,
                           carry: Optional[Tensor] = None) -> Tensor:
    """The closed form with node-level transitions ``T[N, H]`` (docs/contract.md, "Node-level transitions").

    The path sums become node-to-node: per component (nodes in topological order, padded to
    the largest) and head, ``A[w, u] = sum_{u -> w} T_u`` is strictly lower triangular,
    ``B[w, u] = sum_{u -> w} S_b``, and with ``X = (I - A)^{-1} B`` (``H = X`` applied to the
    ``k_m v_m^T``)

        Gate = Ms + Mt X,   Ms[w, u] = sum_{u -> w} M_b S_b,   Mt[w, u] = sum_{u -> w} M_b T_u.

    Costs ``C * H * P^2 (P + K + V)`` for ``C`` components of at most ``P`` nodes: a check of
    the scan on small graphs, not a fast path for large ones.
    """
    num_nodes, heads, kdim = query.shape
    vdim = value.shape[-1]
    if num_nodes == 0:
        return query.new_zeros(0, heads, vdim) + 0 * value.sum()
    edge_index = torch.stack([s.edge_src, s.edge_dst])
    comp, num_comps = weakly_connected_components(edge_index, num_nodes)
    order = s.node_order[torch.sort(comp[s.node_order], stable=True).indices]
    sizes = torch.bincount(comp, minlength=num_comps)
    ptr = torch.zeros(num_comps + 1, dtype=torch.long, device=comp.device)
    torch.cumsum(sizes, 0, out=ptr[1:])
    comp, pos = component_positions(ptr, order, num_nodes)
    width = int(sizes.max())
    if width > CLOSED_FORM_MAX_NODES:
        raise ValueError(f"algorithm='closed_form' needs O(n^2) memory per component; the "
                         f"largest component has {width} nodes (limit "
                         f"{CLOSED_FORM_MAX_NODES}); use algorithm='scan'")

    qk, att, v = _padded_attention(query, key, value, direct, comp, pos, num_comps, width)
    if s.num_edges > 0:
        ecomp, u_pos, w_pos = comp[s.edge_src], pos[s.edge_src], pos[s.edge_dst]
        t_u = transition[s.edge_src]
        if carry is not None:  # the state carried into edge b is scaled by g_b
            t_u = t_u * carry

        def node_matrix(values: Tensor) -> Tensor:  # sum over edges u -> w into [C, H, P, P]
            out = values.new_zeros(num_comps, width, width, heads)
            out = out.index_put((ecomp, w_pos, u_pos), values, accumulate=True)
            return out.permute(0, 3, 1, 2)

        a, b = node_matrix(t_u), node_matrix(source)
        ms, mt = node_matrix(mark * source), node_matrix(mark * t_u)
        eye = torch.eye(width, dtype=a.dtype, device=a.device)
        paths = torch.linalg.solve_triangular(eye - a, b, upper=False, unitriangular=True)
        att = att + (ms + mt @ paths) * qk
    y = torch.einsum("chnm,cmhv->cnhv", att, v)
    return y[comp, pos]
