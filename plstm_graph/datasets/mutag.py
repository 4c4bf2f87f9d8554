"""MUTAG (TU Dortmund graph collection) loaded fully offline.

The raw TU-format text files ship inside this package
(``plstm_graph/datasets/data/MUTAG/raw``).  :func:`load_mutag` copies them
into ``<root>/MUTAG/raw/`` and then lets PyG's own
:class:`torch_geometric.datasets.TUDataset` reader process them, so no network
access ever happens (``download()`` is overridden to raise).  The package
directory itself is only read, so this works from a read-only install.

Resulting dataset: 188 graphs, 3,371 nodes, 7,442 directed edges (each
undirected bond stored in both directions), ``x`` = one-hot atom type
``[N, 7]``, ``edge_attr`` = one-hot bond type ``[E, 4]``, ``y`` in {0, 1}
(63 graphs of class 0, 125 of class 1).
"""

from __future__ import annotations

import os
import os.path as osp
import tempfile
from importlib import resources
from typing import Callable, List, Optional, Tuple

from torch_geometric.datasets import TUDataset

from ._common import resolve_root

NAME = "MUTAG"

#: Expected statistics of the bundled copy (used by tests / sanity checks).
NUM_GRAPHS = 188
NUM_NODES = 3371
NUM_EDGES = 7442
CLASS_COUNTS = (63, 125)


def _bundled_raw_files() -> List[Tuple[str, bytes]]:
    """``(file name, content)`` of every bundled raw MUTAG file."""
    base = resources.files(__package__) / "data" / NAME / "raw"
    out = []
    for entry in base.iterdir():
        if entry.is_file() and entry.name.endswith(".txt"):
            out.append((entry.name, entry.read_bytes()))
    out.sort()
    names = {n for n, _ in out}
    for required in (f"{NAME}_A.txt", f"{NAME}_graph_indicator.txt"):
        if required not in names:
            raise FileNotFoundError(
                f"bundled MUTAG file {required!r} is missing from the "
                f"plstm_graph installation (check package_data)")
    return out


def stage_raw_files(root: str) -> str:
    """Copy the bundled raw files into ``<root>/MUTAG/raw`` (only those that
    are missing or differ in size) and return that directory."""
    raw_dir = osp.join(root, NAME, "raw")
    os.makedirs(raw_dir, exist_ok=True)
    for name, content in _bundled_raw_files():
        dst = osp.join(raw_dir, name)
        if osp.isfile(dst) and osp.getsize(dst) == len(content):
            continue
        # Write atomically so concurrent loaders never see a partial file.
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=raw_dir)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
            os.replace(tmp, dst)
        except BaseException:
            if osp.exists(tmp):
                os.unlink(tmp)
            raise
    return raw_dir


class MUTAG(TUDataset):
    r"""Offline MUTAG: a :class:`~torch_geometric.datasets.TUDataset` whose
    raw files come from the copy bundled with :mod:`plstm_graph`.

    Args:
        root: cache directory (default ``$PLSTM_GRAPH_DATA`` or
            ``~/.cache/plstm_graph``); data goes to ``<root>/MUTAG/``.
        transform, pre_transform, pre_filter, force_reload: as in
            :class:`~torch_geometric.datasets.TUDataset`.
    """

    def __init__(self, root: Optional[str] = None,
                 transform: Optional[Callable] = None,
                 pre_transform: Optional[Callable] = None,
                 pre_filter: Optional[Callable] = None,
                 force_reload: bool = False) -> None:
        root = resolve_root(root)
        stage_raw_files(root)
        super().__init__(root, NAME, transform=transform,
                         pre_transform=pre_transform, pre_filter=pre_filter,
                         force_reload=force_reload)

    def download(self) -> None:  # pragma: no cover - staging prevents this
        raise RuntimeError(
            "plstm_graph's MUTAG never downloads; the bundled raw files could "
            f"not be staged into {self.raw_dir!r}")


def load_mutag(root: Optional[str] = None,
               transform: Optional[Callable] = None,
               pre_transform: Optional[Callable] = None) -> TUDataset:
    """Load MUTAG without network access (see module docstring)."""
    return MUTAG(root=root, transform=transform, pre_transform=pre_transform)
