"""Helpers every module of :mod:`plstm_graph.dag` shares: the stable CSR by key, and whether
the compiled index ops can take a call.

Each function with a native implementation (``csrc/ops/prepare.cpp``) asks
:func:`native_cpu` at call time (through this module, so that a test can switch the native path
off in one place) and keeps its Python code as the reference.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def native_cpu(*tensors: Tensor) -> bool:
    """Whether the compiled index ops (``csrc/ops/prepare.cpp``) can take these tensors: the
    extension is loaded and they live on the CPU. The Python code stays the reference (and the
    path for other devices); ``tests/test_prepare_native.py`` compares the two."""
    from ..ops import native  # deferred: the ops package imports this package

    return native.WITH_NATIVE and all(isinstance(t, Tensor) and t.device.type == "cpu"
                                      for t in tensors)


def csr(keys: Tensor, size: int) -> Tuple[Tensor, Tensor]:
    """Stable sort ``keys`` into CSR form: (``ptr[size + 1]``, ``perm``)."""
    perm = torch.sort(keys, stable=True).indices
    counts = torch.bincount(keys, minlength=size)
    ptr = torch.zeros(size + 1, dtype=torch.long, device=keys.device)
    torch.cumsum(counts, 0, out=ptr[1:])
    return ptr, perm
