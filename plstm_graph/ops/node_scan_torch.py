"""The pure-PyTorch scan for node-level transitions (docs/contract.md, "Node-level transitions", ``T_n`` per shared node).

When the transition of every arc ``a -> b`` is that of the node ``n = dst a = src b`` they
meet at, the edge states need no line graph: with the node state ``H_n = sum_{e into n} C_e``,

    C_b = S_b k_u v_u^T + T_u H_u          (b = u -> w)
    H_w = sum_{b into w} C_b,   y_w = sum_{b into w} M_b C_b^T q_w.

Edges run level by level (level of the tail ``u``, whose ``H_u`` is complete by then), a
chunk of edges at a time: the only state kept is ``H[N, H, K, V]``; the ``C_b`` of a chunk are
transient. Backward runs the levels in reverse with the node quantity
``F_u = sum_{b out of u} dL/dC_b``, where ``dL/dC_b = T_w F_w + M_b q_w dy_w^T``; then
``dT_u = <F_u, H_u>`` and every other gradient is a per-edge product of gathered rows.

Like :mod:`.scan_torch`, :func:`node_scan_torch` adds the direct term and computes half-precision
inputs in float32. It runs wherever PyTorch runs: it is the reference the native kernels are
tested against, and the path of any device without them (CUDA without a CUDA build).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..dag import NodeSchedule
from ._common import direct_term, in_compute_dtype
from .scan_torch import _accumulate

# elements of one gathered [edges, H, K, V] operand per chunk
_CHUNK_ELEMENTS = 1 << 22


def _chunks(ptr, level: int, per_edge: int):
    lo, hi = ptr[level], ptr[level + 1]
    step = max(1, _CHUNK_ELEMENTS // max(1, per_edge))
    for a in range(lo, hi, step):
        yield a, min(a + step, hi)


def _forward(query, key, value, source, transition, mark, carry, s: NodeSchedule):
    num_nodes, heads, kdim = query.shape
    vdim = value.shape[-1]
    states = query.new_zeros(num_nodes, heads, kdim, vdim)
    out = query.new_zeros(num_nodes, heads, vdim)
    if s.num_edges == 0:
        return states, out
    order = s.edge_order
    src, dst = s.edge_src[order], s.edge_dst[order]
    gate_s, gate_m = source[order], mark[order]
    gate_g = carry[order] if carry is not None else None
    ptr = s.level_ptr.tolist()
    for level in range(s.num_levels):
        for lo, hi in _chunks(ptr, level, heads * kdim * vdim):
            u, w = src[lo:hi], dst[lo:hi]
            c = torch.einsum("eh,ehk,ehv->ehkv", gate_s[lo:hi], key[u], value[u])
            if level > 0:  # sources (level 0) have no state yet
                t = transition[u] if gate_g is None else transition[u] * gate_g[lo:hi]
                c = c + t[:, :, None, None] * states[u]
            _accumulate(states, w, c)
            _accumulate(out, w, gate_m[lo:hi, :, None] *
                        torch.einsum("ehkv,ehk->ehv", c, query[w]))
    return states, out


def _backward(query, key, value, source, transition, mark, carry, states, grad_out,
              s: NodeSchedule):
    num_nodes, heads, kdim = query.shape
    vdim = value.shape[-1]
    d_query, d_key, d_value = (torch.zeros_like(t) for t in (query, key, value))
    d_source, d_mark = torch.zeros_like(source), torch.zeros_like(mark)
    d_carry = torch.zeros_like(carry) if carry is not None else None
    total = torch.zeros_like(states)  # F_u = sum over u's out-edges of g_b dL/dC_b
    if s.num_edges == 0:
        return d_query, d_key, d_value, d_source, torch.zeros_like(transition), d_mark, d_carry
    order = s.edge_order
    src, dst = s.edge_src[order], s.edge_dst[order]
    gate_s, gate_m = source[order], mark[order]
    gate_g = carry[order] if carry is not None else None
    ptr = s.level_ptr.tolist()
    for level in range(s.num_levels - 1, -1, -1):
        for lo, hi in _chunks(ptr, level, heads * kdim * vdim):
            u, w, e = src[lo:hi], dst[lo:hi], order[lo:hi]
            sb, mb = gate_s[lo:hi], gate_m[lo:hi]
            qw, dyw, ku, vu = query[w], grad_out[w], key[u], value[u]
            # dL/dC_b; F_w of a head w (a higher level) is complete by now
            dc = (transition[w][:, :, None, None] * total[w] +
                  torch.einsum("eh,ehk,ehv->ehkv", mb, qw, dyw))
            if gate_g is None:
                _accumulate(total, u, dc)
                t_u = transition[u]
            else:  # C_b = ... + g_b T_u H_u: dg_b = T_u <dC_b, H_u>
                _accumulate(total, u, gate_g[lo:hi, :, None, None] * dc)
                d_carry[e] = transition[u] * torch.einsum("ehkv,ehkv->eh", dc, states[u])
                t_u = transition[u] * gate_g[lo:hi]
            gv = torch.einsum("ehkv,ehv->ehk", dc, vu)  # dC_b v_u
            gk = torch.einsum("ehkv,ehk->ehv", dc, ku)  # dC_b^T k_u
            d_source[e] = (gv * ku).sum(-1)
            _accumulate(d_key, u, sb[..., None] * gv)
            _accumulate(d_value, u, sb[..., None] * gk)
            # C_b dy_w = S_b k_u (v_u . dy_w) + T_u H_u dy_w
            c_dy = sb[..., None] * ku * (vu * dyw).sum(-1, keepdim=True)
            if level > 0:
                c_dy = c_dy + t_u[..., None] * torch.einsum(
                    "ehkv,ehv->ehk", states[u], dyw)
            d_mark[e] = (qw * c_dy).sum(-1)
            _accumulate(d_query, w, mb[..., None] * c_dy)
    d_transition = torch.einsum("nhkv,nhkv->nh", total, states)
    return d_query, d_key, d_value, d_source, d_transition, d_mark, d_carry


class TorchNodeScan(torch.autograd.Function):
    """Autograd of the node-level state part; keeps the inputs and ``H[N, H, K, V]``."""

    @staticmethod
    def forward(ctx, query, key, value, source, transition, mark, carry, schedule):
        states, out = _forward(query, key, value, source, transition, mark, carry, schedule)
        ctx.schedule = schedule
        ctx.save_for_backward(query, key, value, source, transition, mark, carry, states)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, s, t, m, g, states = ctx.saved_tensors
        grads = _backward(q, k, v, s, t, m, g, states, grad_out.contiguous(), ctx.schedule)
        return (*grads, None)


@in_compute_dtype
def node_scan_torch(query: Tensor, key: Tensor, value: Tensor, source: Tensor,
                    transition: Tensor, mark: Tensor, direct: Tensor, schedule: NodeSchedule, *,
                    recompute: bool = False, carry: Optional[Tensor] = None) -> Tensor:
    """``plstm_dag`` with node-level transitions by the pure-PyTorch node scan. ``carry``:
    optional ``[E, H]`` factor ``g_b`` of the state carried into each edge,
    ``C_b = S_b k_u v_u^T + g_b T_u H_u`` (what an edge mask does to its transitions);
    ``recompute`` has no effect (the kept state is ``N*H*K*V``)."""
    out = TorchNodeScan.apply(query, key, value, source, transition, mark, carry, schedule)
    return out + direct_term(query, key, value, direct)
