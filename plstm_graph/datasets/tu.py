"""The four TU graph classification benchmarks of the pLSTM paper, loaded fully offline.

MUTAG ships as raw text files (``data/MUTAG/raw``), NCI1, PROTEINS and PTC_FM as the original
TU archives (``data/<NAME>.zip``); see ``data/README.md`` for where they come from. On first use
the files are written into ``<root>/<NAME>/raw/``, where PyG's own
:class:`~torch_geometric.datasets.TUDataset` reader finds them, so it never reaches its
``download()`` (which is overridden to raise anyway). The package directory is only read.

=========  ======  =======  =======  ========  ==========
name       graphs  nodes    classes  features  edge feat.
=========  ======  =======  =======  ========  ==========
MUTAG      188     3,371    2        7         4 (bonds)
NCI1       4,110   122,747  2        37        --
PROTEINS   1,113   43,471   2        4         --
PTC_FM     349     4,925    2        18        4 (bonds)
=========  ======  =======  =======  ========  ==========

PROTEINS' four features are its one continuous node attribute followed by the one-hot of its
three node labels (``use_node_attr=True``, the default here; PyG's own default drops the
attribute).
"""

from __future__ import annotations

import hashlib
import os
import os.path as osp
import tempfile
import zipfile
from importlib import resources
from typing import Callable, Dict, List, Optional, Tuple

from torch_geometric.datasets import TUDataset

from ._common import resolve_root

#: SHA-256 of the bundled archives; checked before anything is extracted from them.
ARCHIVE_SHA256 = {
    "NCI1": "eae6b0c076d59e667c67de0039cfc3214eefb91a8dddc2fa3099126da02d4376",
    "PROTEINS": "fe9d19741637486ea1fd285bf669fce0b117e10b03cdd379f6a5e6197fc830ae",
    "PTC_FM": "09339ff33859984c1a8ba71e9f721babbe199b68eb8d3b6b93806fb5ec806146",
}

#: Published statistics of each set (with ``use_node_attr=True``); the tests hold the loaded
#: data to them. ``num_edge_features`` is 0 where the set has no edge labels.
STATS: Dict[str, Dict[str, object]] = {
    "MUTAG": dict(num_graphs=188, num_nodes=3371, num_classes=2, num_features=7,
                  num_edge_features=4, class_counts=(63, 125)),
    "NCI1": dict(num_graphs=4110, num_nodes=122747, num_classes=2, num_features=37,
                 num_edge_features=0, class_counts=(2053, 2057)),
    "PROTEINS": dict(num_graphs=1113, num_nodes=43471, num_classes=2, num_features=4,
                     num_edge_features=0, class_counts=(663, 450)),
    "PTC_FM": dict(num_graphs=349, num_nodes=4925, num_classes=2, num_features=18,
                   num_edge_features=4, class_counts=(206, 143)),
}

NAMES: Tuple[str, ...] = tuple(STATS)


def canonical_name(name: str) -> str:
    """``name`` as the TU collection spells it (``"ptc_fm"``, ``"PTC-FM"`` -> ``"PTC_FM"``)."""
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, got {type(name).__name__}")
    key = name.strip().upper().replace("-", "_")
    if key not in STATS:
        raise ValueError(f"unknown TU dataset {name!r}; bundled are "
                         f"{', '.join(NAMES)} (case-insensitive)")
    return key


def _data_dir():
    return resources.files(__package__) / "data"


def _write_atomic(directory: str, name: str, content: bytes) -> None:
    # Concurrent loaders (parallel test workers, two scripts) must never see a partial file.
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        os.replace(tmp, osp.join(directory, name))
    except BaseException:
        if osp.exists(tmp):
            os.unlink(tmp)
        raise


def _needed(raw_dir: str, name: str, size: int) -> bool:
    dst = osp.join(raw_dir, name)
    return not (osp.isfile(dst) and osp.getsize(dst) == size)


def _bundled_text_files(name: str) -> List[Tuple[str, bytes]]:
    """``(file name, content)`` of every raw ``.txt`` file bundled as a directory."""
    base = _data_dir() / name / "raw"
    out = sorted((e.name, e.read_bytes()) for e in base.iterdir()
                 if e.is_file() and e.name.endswith(".txt"))
    present = {n for n, _ in out}
    for required in (f"{name}_A.txt", f"{name}_graph_indicator.txt"):
        if required not in present:
            raise FileNotFoundError(
                f"bundled {name} file {required!r} is missing from the plstm_graph "
                f"installation (check package_data)")
    return out


def _stage_directory(name: str, raw_dir: str) -> None:
    for fname, content in _bundled_text_files(name):
        if _needed(raw_dir, fname, len(content)):
            _write_atomic(raw_dir, fname, content)


def _stage_archive(name: str, raw_dir: str) -> None:
    entry = _data_dir() / f"{name}.zip"
    if not entry.is_file():
        raise FileNotFoundError(f"bundled archive {name}.zip is missing from the plstm_graph "
                                f"installation (check package_data)")
    with resources.as_file(entry) as path, zipfile.ZipFile(path) as archive:
        # The archives keep their files under "<NAME>/"; the reader wants them flat in raw/.
        # Only the .txt members are data (PROTEINS also carries an editor backup "README.txt~").
        members = [(osp.basename(m.filename), m) for m in archive.infolist()
                   if not m.is_dir() and m.filename.endswith(".txt")]
        todo = [(fname, m) for fname, m in members if _needed(raw_dir, fname, m.file_size)]
        if not todo:
            return
        with open(path, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
        if digest != ARCHIVE_SHA256[name]:
            raise RuntimeError(f"bundled {name}.zip is corrupted (sha256 {digest}, expected "
                               f"{ARCHIVE_SHA256[name]}); reinstall plstm_graph")
        for fname, member in todo:
            _write_atomic(raw_dir, fname, archive.read(member))


def stage_raw_files(name: str, root: str) -> str:
    """Write the bundled raw files of ``name`` into ``<root>/<NAME>/raw`` (only those missing
    or of the wrong size) and return that directory."""
    name = canonical_name(name)
    raw_dir = osp.join(root, name, "raw")
    os.makedirs(raw_dir, exist_ok=True)
    if name in ARCHIVE_SHA256:
        _stage_archive(name, raw_dir)
    else:
        _stage_directory(name, raw_dir)
    return raw_dir


class BundledTUDataset(TUDataset):
    r"""A :class:`~torch_geometric.datasets.TUDataset` whose raw files come from the copies
    bundled with :mod:`plstm_graph` (never from the network).

    Args:
        name: one of :data:`NAMES`, case-insensitive.
        root: cache directory (default ``$PLSTM_GRAPH_DATA`` or ``~/.cache/plstm_graph``);
            the set goes to ``<root>/<NAME>/``.
        transform, pre_transform, pre_filter, force_reload, use_node_attr, use_edge_attr: as in
            :class:`~torch_geometric.datasets.TUDataset`, except that ``use_node_attr`` and
            ``use_edge_attr`` default to ``True`` (PROTEINS keeps its continuous attribute).
    """

    def __init__(self, name: str, root: Optional[str] = None,
                 transform: Optional[Callable] = None,
                 pre_transform: Optional[Callable] = None,
                 pre_filter: Optional[Callable] = None,
                 force_reload: bool = False,
                 use_node_attr: bool = True,
                 use_edge_attr: bool = True) -> None:
        name = canonical_name(name)
        root = resolve_root(root)
        stage_raw_files(name, root)
        super().__init__(root, name, transform=transform, pre_transform=pre_transform,
                         pre_filter=pre_filter, force_reload=force_reload,
                         use_node_attr=use_node_attr, use_edge_attr=use_edge_attr)

    @property
    def processed_dir(self) -> str:
        # one cache per pre_transform: PyG would reuse a cache processed with another one and
        # only warn, so that load_tu(name) and load_tu(name, pre_transform=PrepareDAG()) in one
        # root would silently return graphs without the DAG attributes
        base = super().processed_dir
        if getattr(self, "pre_transform", None) is None:
            return base
        tag = hashlib.sha1(repr(self.pre_transform).encode()).hexdigest()[:10]
        return f"{base}_{tag}"

    def download(self) -> None:  # pragma: no cover - staging prevents this
        raise RuntimeError(f"plstm_graph's {self.name} never downloads; the bundled raw files "
                           f"could not be staged into {self.raw_dir!r}")


def load_tu(name: str, root: Optional[str] = None,
            pre_transform: Optional[Callable] = None,
            transform: Optional[Callable] = None,
            pre_filter: Optional[Callable] = None,
            force_reload: bool = False,
            use_node_attr: bool = True,
            use_edge_attr: bool = True) -> TUDataset:
    """Load one of the bundled TU benchmarks (``"MUTAG"``, ``"NCI1"``, ``"PROTEINS"``,
    ``"PTC_FM"``; case-insensitive) without network access.

    The first call for a ``root`` writes the raw files and lets PyG process them into
    ``<root>/<NAME>/processed``; later calls load that cache. Each ``pre_transform``
    (by its ``repr``) gets its own processed folder, so a cache processed with another one is
    never returned.
    """
    name = canonical_name(name)
    kwargs = dict(root=root, transform=transform, pre_transform=pre_transform,
                  pre_filter=pre_filter, force_reload=force_reload,
                  use_node_attr=use_node_attr, use_edge_attr=use_edge_attr)
    if name == "MUTAG":
        from .mutag import MUTAG  # the historical class, so MUTAG stays one type

        return MUTAG(**kwargs)
    return BundledTUDataset(name, **kwargs)
