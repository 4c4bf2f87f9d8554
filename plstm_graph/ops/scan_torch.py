"""The pure-PyTorch level-parallel scan.

One vectorised step per level for the whole batch (gather, scale, ``index_add_``), a custom
``torch.autograd.Function`` whose backward runs the same levels in reverse. It is the fallback
when the native extension is absent and the reference the native kernels are tested against.

The autograd function computes the state part of the pLSTM output,

    C_b = S_b k_{src b} v_{src b}^T + sum_{a -> b} T_{a->b} C_a,
    y_n = sum_{e : dst e = n} M_e C_e^T q_n;

:func:`scan_torch` adds the direct term (plain elementwise autograd) and computes in float32
for half-precision inputs, returning their dtype.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ..dag import DagSchedule
from ._common import direct_term, in_compute_dtype


# elements per gathered operand when the arc gradients are computed chunk by chunk
_CHUNK_ELEMENTS = 1 << 22


def _accumulate(target: Tensor, index: Tensor, rows: Tensor) -> None:
    """``target.index_add_(0, index, rows)``; a small level takes the serial
    ``index_put_(accumulate=True)`` instead, because ``index_add_`` on a multi-dimensional
    tensor opens a parallel region per call, which costs a thread wake-up (tens to hundreds of
    microseconds on a busy machine) per level of a deep graph."""
    if rows.numel() < 32768:
        target.index_put_((index,), rows, accumulate=True)
    else:
        target.index_add_(0, index, rows)


def _states(key: Tensor, value: Tensor, source: Tensor, transition: Tensor,
            s: DagSchedule) -> Tensor:
    """All edge states ``C[E, H, K, V]``."""
    states = torch.einsum("eh,ehk,ehv->ehkv", source, key[s.edge_src], value[s.edge_src])
    ptr = s.arc_level_ptr.tolist()
    # arcs in level order once, so that a level is three slices (deep graphs: per-level cost)
    src, dst = s.arc_src[s.arc_order], s.arc_dst[s.arc_order]
    gate = transition[s.arc_order][:, :, None, None]
    for level in range(s.num_levels):
        lo, hi = ptr[level], ptr[level + 1]
        if lo == hi:
            continue
        _accumulate(states, dst[lo:hi], gate[lo:hi] * states[src[lo:hi]])
    return states


def _readout(query: Tensor, mark: Tensor, states: Tensor, s: DagSchedule) -> Tensor:
    out = torch.zeros(s.num_nodes, states.size(1), states.size(3), dtype=states.dtype,
                      device=states.device)
    if s.num_edges:
        per_edge = torch.einsum("eh,ehkv,ehk->ehv", mark, states, query[s.edge_dst])
        out.index_add_(0, s.edge_dst, per_edge)
    return out


def _state_grads(query: Tensor, mark: Tensor, transition: Tensor, grad_out: Tensor,
                 s: DagSchedule) -> Tensor:
    """``dL/dC[E, H, K, V]`` by the reverse scan: a state's gradient is complete once every
    edge it feeds (all at higher levels) has pushed its own gradient back."""
    grads = torch.einsum("eh,ehk,ehv->ehkv", mark, query[s.edge_dst], grad_out[s.edge_dst])
    ptr = s.arc_level_ptr.tolist()
    src, dst = s.arc_src[s.arc_order], s.arc_dst[s.arc_order]
    gate = transition[s.arc_order][:, :, None, None]
    for level in range(s.num_levels - 1, -1, -1):
        lo, hi = ptr[level], ptr[level + 1]
        if lo == hi:
            continue
        _accumulate(grads, src[lo:hi], gate[lo:hi] * grads[dst[lo:hi]])
    return grads


class TorchScan(torch.autograd.Function):
    """Autograd for the state part of ``plstm_dag`` on the torch backend.

    Kept for backward: the six inputs and, unless ``recompute`` is set, the edge states
    ``C[E, H, K, V]`` (``E*H*K*V`` elements in the compute dtype). With ``recompute`` only the
    inputs are kept and the forward scan runs again inside backward: one extra scan of time
    for ``E*H*K*V`` less memory between forward and backward. Backward itself holds the states
    and their gradients, two ``E*H*K*V`` buffers, while it runs.
    """

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, value: Tensor, source: Tensor,
                transition: Tensor, mark: Tensor, schedule: DagSchedule,
                recompute: bool) -> Tensor:
        states = _states(key, value, source, transition, schedule)
        out = _readout(query, mark, states, schedule)
        ctx.schedule = schedule
        ctx.recompute = recompute
        if recompute:
            ctx.save_for_backward(query, key, value, source, transition, mark)
        else:
            ctx.save_for_backward(query, key, value, source, transition, mark, states)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        s: DagSchedule = ctx.schedule
        if ctx.recompute:
            query, key, value, source, transition, mark = ctx.saved_tensors
            states = _states(key, value, source, transition, s)
        else:
            query, key, value, source, transition, mark, states = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grads = _state_grads(query, mark, transition, grad_out, s)
        return (*scan_input_grads(query, key, value, source, transition, mark, states, grads,
                                  grad_out, s), None, None)


def scan_input_grads(query: Tensor, key: Tensor, value: Tensor, source: Tensor,
                     transition: Tensor, mark: Tensor, states: Tensor, grads: Tensor,
                     grad_out: Tensor, s: DagSchedule
                     ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Input gradients from the states ``C`` and their gradients ``G``, all edges at once."""
    k_e, v_e = key[s.edge_src], value[s.edge_src]
    q_e, dy_e = query[s.edge_dst], grad_out[s.edge_dst]
    g_v = torch.einsum("ehkv,ehv->ehk", grads, v_e)  # G_e v_src
    g_k = torch.einsum("ehkv,ehk->ehv", grads, k_e)  # G_e^T k_src
    d_source = (g_v * k_e).sum(-1)
    d_key = torch.zeros_like(key).index_add_(0, s.edge_src, source[..., None] * g_v)
    d_value = torch.zeros_like(value).index_add_(0, s.edge_src, source[..., None] * g_k)
    c_dy = torch.einsum("ehkv,ehv->ehk", states, dy_e)  # C_e dy_dst
    d_mark = (c_dy * q_e).sum(-1)
    d_query = torch.zeros_like(query).index_add_(0, s.edge_dst, mark[..., None] * c_dy)
    # dT_{a->b} = <G_b, C_a>, in chunks of arcs: gathering both operands for all arcs at once
    # would take 2*L*H*K*V elements, several times the states themselves on wide DAGs
    d_transition = torch.empty_like(transition)
    per_arc = states.shape[1] * states.shape[2] * states.shape[3]
    step = max(1, _CHUNK_ELEMENTS // max(1, per_arc))
    for lo in range(0, s.num_arcs, step):
        hi = min(lo + step, s.num_arcs)
        d_transition[lo:hi] = torch.einsum("ahkv,ahkv->ah", grads[s.arc_dst[lo:hi]],
                                           states[s.arc_src[lo:hi]])
    return d_query, d_key, d_value, d_source, d_transition, d_mark


@in_compute_dtype
def scan_torch(query: Tensor, key: Tensor, value: Tensor, source: Tensor, transition: Tensor,
               mark: Tensor, direct: Tensor, schedule: DagSchedule, *, recompute: bool = False,
               carry=None) -> Tensor:
    """``plstm_dag`` by the pure-PyTorch level scan (``carry`` is for node-level transitions
    and must be None here)."""
    out = TorchScan.apply(query, key, value, source, transition, mark, schedule, recompute)
    return out + direct_term(query, key, value, direct)
