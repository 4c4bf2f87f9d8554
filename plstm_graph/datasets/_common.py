"""Small shared helpers for :mod:`plstm_graph.datasets` (no heavy imports)."""

from __future__ import annotations

import os
import os.path as osp
from typing import Optional, Union

#: Environment variable overriding the default dataset cache directory.
DATA_ENV_VAR = "PLSTM_GRAPH_DATA"


def default_root() -> str:
    """Return the default root directory for datasets.

    ``$PLSTM_GRAPH_DATA`` if set (and non-empty), otherwise
    ``~/.cache/plstm_graph``.
    """
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return osp.abspath(osp.expanduser(env))
    return osp.join(osp.expanduser("~"), ".cache", "plstm_graph")


def resolve_root(root: Optional[Union[str, os.PathLike]]) -> str:
    """``root`` as an absolute path, or :func:`default_root` if ``None``."""
    if root is None:
        return default_root()
    return osp.abspath(osp.expanduser(os.fspath(root)))
