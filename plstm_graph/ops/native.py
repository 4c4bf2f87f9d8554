"""Loading of the compiled ops (``plstm_graph._C``) and the Python side of their autograd.

The extension registers two algorithms (see ``csrc/plstm_dag.cpp``). The level scan::

    torch.ops.plstm_graph.scan_forward(q, k, v, source, transition, mark, *schedule,
                                       keep_states) -> (out, states)
    torch.ops.plstm_graph.scan_backward(grad_out, q, k, v, source, transition, mark,
                                        states?, *schedule) -> (dq, dk, dv, dsource,
                                                                dtransition, dmark)

where ``*schedule`` is the twelve index tensors of :class:`~plstm_graph.dag.DagSchedule` in
the order of :data:`SCHEDULE_FIELDS`; and the closed form (CPU only; direct term included)::

    torch.ops.plstm_graph.closed_form_forward(q, k, v, source, transition, mark, direct,
                                              *components) -> out
    torch.ops.plstm_graph.closed_form_backward(grad_out, q, k, v, source, transition, mark,
                                               direct, *components) -> seven gradients

with ``*components`` in the order of :data:`CLOSED_FORM_FIELDS`. This module registers the fake
(meta) kernels of all four ops, so that ``torch.compile(fullgraph=True)`` traces them; the
autograd of both forward ops is wired in C++ (``csrc/plstm_dag.cpp``), where it costs no
Python on the hot path.

The package works without the extension: :data:`WITH_NATIVE` says whether it loaded, and
:func:`unavailable_reason` says why not.
"""
from __future__ import annotations

import importlib
import warnings
from typing import Optional

import torch
from torch import Tensor

__all__ = ["WITH_NATIVE", "WITH_CUDA", "available", "unavailable_reason", "scan_native",
           "closed_form_native", "closed_form_available", "SCHEDULE_FIELDS",
           "CLOSED_FORM_FIELDS"]

# the schedule arguments of both ops, in schema order
SCHEDULE_FIELDS = ("edge_src", "edge_dst", "arc_src", "arc_dst", "edge_order", "level_ptr",
                   "in_ptr", "in_arc", "out_ptr", "out_arc", "node_ptr", "node_edge")
# the schedule arguments of the closed-form ops, in schema order
CLOSED_FORM_FIELDS = ("edge_src", "edge_dst", "arc_src", "arc_dst", "in_ptr", "in_arc",
                      "comp_node_ptr", "comp_node", "comp_edge_ptr", "comp_edge")

_REASON: Optional[str] = None
WITH_NATIVE = False
WITH_CUDA = False
CUDA_VERSION = -1  # the CUDA runtime version the extension was built with (e.g. 12040)

_EXT = __name__.rsplit(".", 2)[0] + "._C"  # plstm_graph._C
try:  # the extension registers torch.ops.plstm_graph.* when imported
    importlib.import_module(_EXT)
    WITH_NATIVE = True
except (ImportError, OSError) as exc:
    if isinstance(exc, ModuleNotFoundError) and exc.name == _EXT:  # no compiler / not built
        _REASON = (f"the native plstm_graph ops are not built ({_EXT} is missing: no C++ "
                   f"compiler at install time, or an uncompiled checkout); install with "
                   f"`pip install --no-build-isolation -e .` to build them")
    else:  # built, but does not load (e.g. against another torch)
        _REASON = (f"{_EXT} failed to load ({exc}); it was probably built against another "
                   f"torch than {torch.__version__}: reinstall with "
                   f"`pip install --no-build-isolation --force-reinstall .`")


def _cuda_major_minor(version: int):
    return version // 1000, (version % 1000) // 10


def cuda_mismatch(built: int, torch_cuda: Optional[str]) -> Optional[str]:
    """Why an extension built with CUDA runtime ``built`` (e.g. 12040; -1 without CUDA) must
    not be used with a torch built for ``torch_cuda`` (``torch.version.cuda``), or None."""
    if built == -1:
        return None
    major, minor = _cuda_major_minor(built)
    if torch_cuda is None:
        return (f"plstm_graph._C was compiled with CUDA {major}.{minor} but the installed "
                f"torch {torch.__version__} has no CUDA; reinstall plstm_graph against this "
                f"torch (pip install --no-build-isolation --force-reinstall .)")
    if int(torch_cuda.split(".")[0]) != major:
        return (f"plstm_graph._C was compiled with CUDA {major}.{minor} but torch "
                f"{torch.__version__} uses CUDA {torch_cuda}; the CUDA major versions must "
                f"match. Reinstall plstm_graph against this torch "
                f"(pip install --no-build-isolation --force-reinstall .)")
    return None


if WITH_NATIVE:
    CUDA_VERSION = int(torch.ops.plstm_graph.cuda_version())
    WITH_CUDA = CUDA_VERSION != -1
    _REASON = cuda_mismatch(CUDA_VERSION, torch.version.cuda)
    if _REASON is not None:
        # A mismatched CUDA runtime can crash in the first kernel: refuse to use the ops, say
        # so loudly now, and raise with the same message if they are requested.
        WITH_NATIVE = False
        WITH_CUDA = False
        warnings.warn(_REASON, RuntimeWarning, stacklevel=2)


def available(device) -> bool:
    """Whether the native ops can run on ``device`` (a ``torch.device`` or string)."""
    if not WITH_NATIVE:
        return False
    device = torch.device(device)
    if device.type == "cpu":
        return True
    return device.type == "cuda" and WITH_CUDA


def closed_form_available(device) -> bool:
    """Whether the native closed form can run on ``device`` (it has CPU kernels only)."""
    return WITH_NATIVE and torch.device(device).type == "cpu"


def unavailable_reason(device) -> str:
    if not WITH_NATIVE:
        return _REASON or "the native plstm_graph ops are not available"
    device = torch.device(device)
    if available(device):
        return f"the native ops are available on {device}"
    if device.type == "cuda":
        return ("plstm_graph._C was built without CUDA; rebuild with FORCE_CUDA=1 "
                "pip install --no-build-isolation -e . on a machine with nvcc")
    return f"the native ops have no kernels for device type {device.type!r}"


# ---------------------------------------------------------------------------------------------
# fake kernels and autograd
# ---------------------------------------------------------------------------------------------
def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _scan_forward_fake(query, key, value, source, transition, mark, edge_src, edge_dst,
                       arc_src, arc_dst, edge_order, level_ptr, in_ptr, in_arc, out_ptr,
                       out_arc, node_ptr, node_edge, keep_states):
    torch._check(query.dim() == 3 and value.dim() == 3 and source.dim() == 2)
    num_nodes, heads, kdim = query.shape
    vdim = value.shape[2]
    num_edges = source.shape[0]
    out = query.new_empty(num_nodes, heads, vdim)
    acc = _acc_dtype(query.dtype)
    if keep_states:
        states = query.new_empty(num_edges, heads, kdim, vdim, dtype=acc)
    else:
        states = query.new_empty(0, dtype=acc)
    return out, states


def _scan_backward_fake(grad_out, query, key, value, source, transition, mark, states,
                        *schedule):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format)
                 for t in (query, key, value, source, transition, mark))


# fake kernels registered on the ops, so that torch.compile traces them; the autograd of both
# forward ops is wired in C++ (csrc/plstm_dag.cpp)
if WITH_NATIVE:
    torch.library.register_fake("plstm_graph::scan_forward")(_scan_forward_fake)
    torch.library.register_fake("plstm_graph::scan_backward")(_scan_backward_fake)


def _closed_form_forward_fake(query, key, value, source, transition, mark, direct, *components):
    torch._check(query.dim() == 3 and value.dim() == 3)
    return query.new_empty(query.shape[0], query.shape[1], value.shape[2])


def _closed_form_backward_fake(grad_out, query, key, value, source, transition, mark, direct,
                               *components):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format)
                 for t in (query, key, value, source, transition, mark, direct))


if WITH_NATIVE:
    # (its autograd is wired in C++, csrc/plstm_dag.cpp)
    torch.library.register_fake("plstm_graph::closed_form_forward")(_closed_form_forward_fake)
    torch.library.register_fake("plstm_graph::closed_form_backward")(_closed_form_backward_fake)


def closed_form_native(query: Tensor, key: Tensor, value: Tensor, source: Tensor,
                       transition: Tensor, mark: Tensor, direct: Tensor, schedule) -> Tensor:
    """All of ``plstm_dag`` (direct term included) with the native closed-form kernels."""
    if not closed_form_available(query.device):
        raise RuntimeError(unavailable_reason(query.device) if not WITH_NATIVE else
                           f"the native closed form has CPU kernels only, got {query.device}")
    return torch.ops.plstm_graph.closed_form_forward(
        query, key, value, source, transition, mark, direct,
        *(getattr(schedule, name) for name in CLOSED_FORM_FIELDS))


def scan_native(query: Tensor, key: Tensor, value: Tensor, source: Tensor, transition: Tensor,
                mark: Tensor, schedule, recompute: bool = False) -> Tensor:
    """The state part of ``plstm_dag`` (no direct term) with the native kernels.

    ``recompute`` keeps only the inputs for backward and runs the forward scan again there,
    instead of keeping the ``E*H*K*V`` edge states between forward and backward.
    """
    if not available(query.device):
        raise RuntimeError(unavailable_reason(query.device))
    index = [getattr(schedule, name) for name in SCHEDULE_FIELDS]
    out, _ = torch.ops.plstm_graph.scan_forward(query, key, value, source, transition, mark,
                                                *index, not recompute)
    return out
