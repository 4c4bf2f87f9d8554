"""Loading of the compiled ops (``plstm_graph._C``) and the Python side of their autograd.

The package works without them: :data:`WITH_NATIVE` says whether they loaded.
"""
from __future__ import annotations

import torch

try:  # the extension registers torch.ops.plstm_graph.* when imported
    from .. import _C  # noqa: F401
    WITH_NATIVE = True
    _IMPORT_ERROR = None
except ImportError as exc:  # built without a compiler, or not built at all
    WITH_NATIVE = False
    _IMPORT_ERROR = exc

WITH_CUDA = False


def available(device: torch.device) -> bool:
    return False


def unavailable_reason(device: torch.device) -> str:
    return f"the native plstm_graph ops are not built ({_IMPORT_ERROR})"


def scan_native(query, key, value, source, transition, mark, schedule, recompute):
    raise RuntimeError(unavailable_reason(query.device))
