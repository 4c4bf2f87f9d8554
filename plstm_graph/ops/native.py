"""Loading of the compiled ops (``plstm_graph._C``), their fake kernels and thin wrappers.

The extension registers three op families (schemas in ``csrc/ops/*.cpp``), all with the same
shape: the seven float inputs, an optional per-edge ``carry`` (node level only), and the
schedule as one list of index tensors, ``schedule.tensors()`` (the fields of
:class:`~plstm_graph.dag.DagSchedule` / :class:`~plstm_graph.dag.NodeSchedule` in declaration
order)::

    torch.ops.plstm_graph.scan_forward(q, k, v, source, transition, mark, direct,
                                       schedule.tensors(), keep_states) -> (out, states)
    torch.ops.plstm_graph.closed_form_forward(q, k, v, source, transition, mark, direct,
                                              schedule.tensors()) -> out
    torch.ops.plstm_graph.node_scan_forward(q, k, v, source, transition, mark, direct, carry,
                                            node_schedule.tensors()) -> (out, states)

each returning the whole output (direct term included) in the input dtype, with a matching
``*_backward`` op. Their autograd is wired in C++ (``csrc/ops/autograd.h``), where it costs no
Python on the hot path; this module registers the fake (meta) kernels, so that
``torch.compile(fullgraph=True)`` traces them.

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
           "closed_form_native", "closed_form_available", "node_scan_native",
           "node_scan_available"]

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
# fake kernels (shapes only; the autograd is in C++)
# ---------------------------------------------------------------------------------------------
def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _like(*tensors):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in tensors)


def _out_fake(query, value):
    torch._check(query.dim() == 3 and value.dim() == 3)
    return query.new_empty(query.shape[0], query.shape[1], value.shape[2])


def _states_fake(query, value, rows):
    return query.new_empty(rows, query.shape[1], query.shape[2], value.shape[2],
                           dtype=_acc_dtype(query.dtype))


# (the ops' arguments: the seven inputs first, then [carry,] [states,] schedule[, flags])
def _scan_forward_fake(query, key, value, source, *rest):
    keep_states = rest[-1]
    states = (_states_fake(query, value, source.shape[0]) if keep_states else
              query.new_empty(0, dtype=_acc_dtype(query.dtype)))
    return _out_fake(query, value), states


def _closed_form_forward_fake(query, key, value, *rest):
    return _out_fake(query, value)


def _node_scan_forward_fake(query, key, value, *rest):
    return _out_fake(query, value), _states_fake(query, value, query.shape[0])


def _grads_fake(grad_out, *args):
    """One gradient like each of the seven inputs."""
    return _like(*args[:7])


def _node_scan_backward_fake(grad_out, *args):
    carry = args[7]
    return _grads_fake(grad_out, *args) + ((args[0].new_empty(0),) if carry is None else
                                           _like(carry))


if WITH_NATIVE:
    for _name, _fake in [("scan_forward", _scan_forward_fake),
                         ("scan_backward", _grads_fake),
                         ("closed_form_forward", _closed_form_forward_fake),
                         ("closed_form_backward", _grads_fake),
                         ("node_scan_forward", _node_scan_forward_fake),
                         ("node_scan_backward", _node_scan_backward_fake)]:
        torch.library.register_fake(f"plstm_graph::{_name}")(_fake)


def node_scan_available(device) -> bool:
    """Whether the native node-level scan can run on ``device``: CPU kernels, and CUDA
    kernels in a CUDA build (csrc/cuda/node_scan_kernel.cu)."""
    return available(device)


# ---------------------------------------------------------------------------------------------
# the implementations, with the signature every implementation of plstm_dag shares
# (ops/dispatch.py): the seven inputs, the schedule, the options; the whole output in the
# input dtype (the kernels accumulate half types in float32)
# ---------------------------------------------------------------------------------------------
def scan_native(query: Tensor, key: Tensor, value: Tensor, source: Tensor, transition: Tensor,
                mark: Tensor, direct: Tensor, schedule, *, recompute: bool = False,
                carry: Optional[Tensor] = None) -> Tensor:
    """``plstm_dag`` by the native level scan. ``recompute`` keeps only the inputs for
    backward and runs the forward scan again there, instead of keeping the ``E*H*K*V`` edge
    states between forward and backward."""
    if not available(query.device):
        raise RuntimeError(unavailable_reason(query.device))
    out, _ = torch.ops.plstm_graph.scan_forward(query, key, value, source, transition, mark,
                                                direct, schedule.tensors(), not recompute)
    return out


def closed_form_native(query: Tensor, key: Tensor, value: Tensor, source: Tensor,
                       transition: Tensor, mark: Tensor, direct: Tensor, schedule, *,
                       recompute: bool = False, carry: Optional[Tensor] = None) -> Tensor:
    """``plstm_dag`` by the native closed form (CPU; it always keeps just the inputs)."""
    if not closed_form_available(query.device):
        raise RuntimeError(unavailable_reason(query.device) if not WITH_NATIVE else
                           f"the native closed form has CPU kernels only, got {query.device}")
    return torch.ops.plstm_graph.closed_form_forward(query, key, value, source, transition,
                                                     mark, direct, schedule.tensors())


def node_scan_native(query: Tensor, key: Tensor, value: Tensor, source: Tensor,
                     transition: Tensor, mark: Tensor, direct: Tensor, schedule, *,
                     recompute: bool = False, carry: Optional[Tensor] = None) -> Tensor:
    """``plstm_dag`` with node-level transitions ``[N, H]`` by the native kernels;
    ``schedule`` is a :class:`~plstm_graph.dag.NodeSchedule`, ``carry`` an optional
    ``[E, H]`` factor of the state carried into each edge (``recompute`` has no effect: the
    kept state is ``N*H*K*V``)."""
    if not node_scan_available(query.device):
        raise RuntimeError(unavailable_reason(query.device))
    out, _ = torch.ops.plstm_graph.node_scan_forward(query, key, value, source, transition,
                                                     mark, direct, carry, schedule.tensors())
    return out
