"""The implementations of ``plstm_dag`` the tests run: every backend with every algorithm."""
import torch

import plstm_graph
from plstm_graph.ops import native

IMPLS = ["torch/scan", "torch/closed_form"]
if plstm_graph.WITH_NATIVE and native.available(torch.device("cpu")):
    IMPLS += ["native/scan", "native/closed_form"]


def impl_kwargs(impl):
    """``"native/scan"`` -> ``dict(backend="native", algorithm="scan")``; a plain backend name
    (or None) passes through with the automatic algorithm."""
    if impl is None or "/" not in impl:
        return dict(backend=impl)
    backend, algorithm = impl.split("/")
    return dict(backend=backend, algorithm=algorithm)
