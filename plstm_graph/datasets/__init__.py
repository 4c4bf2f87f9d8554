"""Datasets shipped with / built offline by :mod:`plstm_graph`.

* :func:`load_tu` -- the TU benchmarks of the pLSTM paper (MUTAG, NCI1,
  PROTEINS, PTC_FM), read from files bundled in the package through PyG's
  ``TUDataset`` (no network); :func:`load_mutag` / :class:`MUTAG` are MUTAG's
  names for it.
* :class:`PythonASTDataset` -- genuinely directed, acyclic graphs of function
  ASTs parsed from the local Python standard library (graph task: coarse
  function-name class; node task: masked node-type prediction).
* :mod:`.splits` -- deterministic seeded split helpers.

Submodules are imported lazily, so ``import plstm_graph.datasets`` is cheap
and never builds or loads data.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._common import DATA_ENV_VAR, default_root

_LAZY = {
    "load_tu": "tu",
    "BundledTUDataset": "tu",
    "TU_NAMES": "tu",
    "load_mutag": "mutag",
    "MUTAG": "mutag",
    "PythonASTDataset": "python_ast",
    "AST_NODE_TYPES": "python_ast",
    "EDGE_TYPES": "python_ast",
    "GRAPH_CLASSES": "python_ast",
    "MASK_INDEX": "python_ast",
    "name_to_class": "python_ast",
    "random_split": "splits",
    "stratified_split": "splits",
    "group_split": "splits",
}

__all__ = ["DATA_ENV_VAR", "default_root", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    attr = "NAMES" if name == "TU_NAMES" else name
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
