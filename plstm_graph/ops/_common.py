"""What every pure-PyTorch implementation of ``plstm_dag`` does around its algorithm: compute
in at least float32 and hand back the input dtype, and the direct term."""
from __future__ import annotations

import functools

import torch
from torch import Tensor


def direct_term(query: Tensor, key: Tensor, value: Tensor, direct: Tensor) -> Tensor:
    """``D_n (q_n . k_n) v_n`` for every node and head."""
    return direct[..., None] * (query * key).sum(-1, keepdim=True) * value


def in_compute_dtype(impl):
    """Wrap ``impl(q, k, v, source, transition, mark, direct, schedule, **options)`` so that it
    sees its float inputs (and ``carry``) in float32, or float64 for float64 input, and its
    result comes back in the dtype of ``query``: the contract of every implementation
    (docs/contract.md, "Gradients and precision")."""

    @functools.wraps(impl)
    def wrapper(query, key, value, source, transition, mark, direct, schedule, **options):
        dtype = query.dtype
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        carry = options.get("carry")
        if carry is not None:
            options["carry"] = carry.to(compute)
        out = impl(*(x.to(compute) for x in (query, key, value, source, transition, mark,
                                              direct)), schedule, **options)
        return out.to(dtype)

    return wrapper
