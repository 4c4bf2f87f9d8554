"""Two pieces of :class:`~plstm_graph.nn.PLSTMConv` with hand-written backward passes.

Both replace what autograd would differentiate op by op; on the layer's inputs (a few
thousand nodes, a few dozen channels) the generic backward spent about as long in
temporaries and concatenations as the pLSTM op spends computing:

* :func:`rms_norm`: ``F.rms_norm`` differentiates its decomposition (square, mean, add,
  rsqrt, multiply), each with its own full-size temporaries; here the backward is one
  row reduction and two elementwise passes over the saved output.
* :func:`split_linear`: one matrix product for several outputs (query, key, value and the
  gate logits) whose backward would concatenate their gradients into one ``[N, sum of
  widths]`` tensor before the two matrix products of ``F.linear``; here the gradient of each
  part goes through its own slice of the weight, and nothing is concatenated at node size.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: Tensor, eps: float) -> Tensor:
        # the mean square in float32 or wider (half inputs)
        acc = y if y.dtype in (torch.float32, torch.float64) else y.float()
        rstd = torch.rsqrt(acc.square().mean(-1, keepdim=True).add_(eps))
        out = (acc * rstd).to(y.dtype)
        ctx.save_for_backward(out, rstd)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        # out = y r with r = (mean(y^2) + eps)^(-1/2), so over the last axis
        # dL/dy = r (g - out mean(g out))
        out, rstd = ctx.saved_tensors
        g = grad.to(rstd.dtype)
        o = out.to(rstd.dtype)
        proj = (g * o).mean(-1, keepdim=True)
        dy = torch.addcmul(g, o, proj, value=-1.0).mul_(rstd)
        return dy.to(grad.dtype), None


def rms_norm(y: Tensor, eps: float) -> Tensor:
    """``y / sqrt(mean(y^2, -1) + eps)`` over the last axis, without a weight (the layer folds
    its per-head weight into the output projection)."""
    return _RMSNorm.apply(y, eps)


class _SplitLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, sizes: Tuple[int, ...], *weights: Tensor):
        ctx.save_for_backward(x, *weights)
        out = x @ torch.cat(weights).t()
        return tuple(out.split(list(sizes), dim=-1))

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Tensor):
        x, *weights = ctx.saved_tensors
        grad_x = None
        grad_w: List[Tensor] = []
        for g, w in zip(grads, weights):
            if g is None:
                grad_w.append(torch.zeros_like(w))
                continue
            grad_w.append(g.t() @ x)
            grad_x = g @ w if grad_x is None else grad_x.addmm_(g, w)
        if grad_x is None:
            grad_x = torch.zeros_like(x)
        return (grad_x, None, *grad_w)


def split_linear(x: Tensor, weights: Sequence[Tensor]) -> Tuple[Tensor, ...]:
    """``x @ W_i^T`` for every weight ``W_i`` (``[width_i, in]``), computed as one matrix
    product, returned as views of its columns."""
    return _SplitLinear.apply(x, tuple(w.size(0) for w in weights), *weights)
