"""MUTAG (TU Dortmund graph collection) loaded fully offline.

The raw TU-format text files ship inside this package
(``plstm_graph/datasets/data/MUTAG/raw``). :func:`load_mutag` (an alias of
``load_tu("MUTAG")``, see :mod:`.tu`) copies them into ``<root>/MUTAG/raw/`` and
then lets PyG's own :class:`torch_geometric.datasets.TUDataset` reader process
them, so no network access ever happens (``download()`` is overridden to raise).
The package directory itself is only read, so this works from a read-only install.

Resulting dataset: 188 graphs, 3,371 nodes, 7,442 directed edges (each
undirected bond stored in both directions), ``x`` = one-hot atom type
``[N, 7]``, ``edge_attr`` = one-hot bond type ``[E, 4]``, ``y`` in {0, 1}
(63 graphs of class 0, 125 of class 1).
"""

from __future__ import annotations

from typing import Callable, Optional

from torch_geometric.datasets import TUDataset

from . import tu

NAME = "MUTAG"

#: Expected statistics of the bundled copy (used by tests / sanity checks).
NUM_GRAPHS = 188
NUM_NODES = 3371
NUM_EDGES = 7442
CLASS_COUNTS = (63, 125)


def stage_raw_files(root: str) -> str:
    """Copy the bundled raw files into ``<root>/MUTAG/raw`` (only those that
    are missing or differ in size) and return that directory."""
    return tu.stage_raw_files(NAME, root)


class MUTAG(tu.BundledTUDataset):
    r"""Offline MUTAG: a :class:`~torch_geometric.datasets.TUDataset` whose
    raw files come from the copy bundled with :mod:`plstm_graph`.

    Args:
        root: cache directory (default ``$PLSTM_GRAPH_DATA`` or
            ``~/.cache/plstm_graph``); data goes to ``<root>/MUTAG/``.
        transform, pre_transform, pre_filter, force_reload, use_node_attr,
            use_edge_attr: as in :class:`.tu.BundledTUDataset` (MUTAG has no
            continuous attributes, so the last two change nothing).
    """

    def __init__(self, root: Optional[str] = None, **kwargs) -> None:
        super().__init__(NAME, root=root, **kwargs)


def load_mutag(root: Optional[str] = None,
               transform: Optional[Callable] = None,
               pre_transform: Optional[Callable] = None) -> TUDataset:
    """Load MUTAG without network access: ``load_tu("MUTAG", ...)``."""
    return tu.load_tu(NAME, root=root, pre_transform=pre_transform, transform=transform)
