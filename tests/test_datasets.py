"""Tests for plstm_graph.datasets (offline MUTAG, Python-AST DAG dataset)."""

import ast
import os
import socket
import subprocess
import sys
import time
import urllib.request

import networkx as nx
import pytest
import torch

import plstm_graph.datasets as D
from plstm_graph.datasets import mutag as mutag_mod
from plstm_graph.datasets import python_ast as pa
from plstm_graph.datasets import tu as tu_mod
from plstm_graph.datasets.splits import group_split, random_split, stratified_split

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch):
    """Make every plausible download path fail loudly."""
    import torch_geometric.data.download as pyg_download
    import torch_geometric.io.fs as pyg_fs
    from torch_geometric.datasets import TUDataset

    def boom(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(pyg_download, "download_url", boom)
    monkeypatch.setattr(urllib.request, "urlopen", boom)
    monkeypatch.setattr(socket.socket, "connect", boom)
    monkeypatch.setattr(socket, "create_connection", boom)
    monkeypatch.setattr(TUDataset, "download", boom)
    real_cp = pyg_fs.cp

    def guarded_cp(path1, *args, **kwargs):
        if "://" in str(path1):
            boom(path1)
        return real_cp(path1, *args, **kwargs)

    monkeypatch.setattr(pyg_fs, "cp", guarded_cp)


def _bundled_listing():
    base = os.path.join(os.path.dirname(mutag_mod.__file__), "data")
    out = {}
    for dirpath, _, files in os.walk(base):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, base)] = os.path.getsize(p)
    return out


def _nx(data):
    g = nx.DiGraph()
    g.add_nodes_from(range(data.num_nodes))
    g.add_edges_from(data.edge_index.t().tolist())
    return g


# ---------------------------------------------------------------------------
# MUTAG
# ---------------------------------------------------------------------------

def test_mutag_offline_counts(tmp_path, no_network):
    before = _bundled_listing()
    ds = D.load_mutag(root=str(tmp_path))
    from torch_geometric.datasets import TUDataset
    assert isinstance(ds, TUDataset)
    assert len(ds) == 188
    data = ds._data
    assert data.x.shape == (3371, 7)
    assert data.edge_index.shape == (2, 7442)
    assert data.edge_attr.shape == (7442, 4)
    assert torch.equal(data.x.sum(1), torch.ones(3371))
    assert torch.equal(data.edge_attr.sum(1), torch.ones(7442))
    assert data.y.bincount().tolist() == [63, 125]
    assert sum(d.num_nodes for d in ds) == 3371
    assert sum(d.num_edges for d in ds) == 7442
    # every bond is stored in both directions
    ei = set(map(tuple, data.edge_index.t().tolist()))
    assert all((v, u) in ei for (u, v) in ei)
    assert os.path.isfile(tmp_path / "MUTAG" / "raw" / "MUTAG_A.txt")
    # the (possibly read-only) package directory was not touched
    assert _bundled_listing() == before


def test_mutag_env_root_and_cache(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv(D.DATA_ENV_VAR, str(tmp_path / "cache"))
    assert D.default_root() == str(tmp_path / "cache")
    ds1 = D.load_mutag()
    assert os.path.isdir(tmp_path / "cache" / "MUTAG" / "processed")

    def no_process(self):
        raise AssertionError("MUTAG was processed twice")

    monkeypatch.setattr(mutag_mod.MUTAG, "process", no_process)
    ds2 = D.MUTAG()
    assert torch.equal(ds1._data.x, ds2._data.x)
    assert torch.equal(ds1._data.y, ds2._data.y)


def test_mutag_transform(tmp_path, no_network):
    def add_flag(data):
        data.flag = torch.tensor([1])
        return data

    ds = D.load_mutag(root=str(tmp_path), transform=add_flag)
    assert int(ds[0].flag) == 1
    tr, va, te = stratified_split(ds.y, (0.8, 0.1, 0.1), seed=0)
    assert len(tr) + len(va) + len(te) == 188
    assert ds.y[tr].bincount().tolist() == [50, 100]


# ---------------------------------------------------------------------------
# the other TU benchmarks (load_tu)
# ---------------------------------------------------------------------------

# Published statistics, written out here rather than read from tu_mod.STATS so that a wrong
# table in the module cannot make its own test pass.
TU_EXPECTED = {
    # name: (graphs, nodes, features, edge features, class counts)
    "MUTAG": (188, 3371, 7, 4, [63, 125]),
    "NCI1": (4110, 122747, 37, 0, [2053, 2057]),
    "PROTEINS": (1113, 43471, 4, 0, [663, 450]),
    "PTC_FM": (349, 4925, 18, 4, [206, 143]),
}


@pytest.mark.parametrize("spelling", ["mutag", "NCI1", "Proteins", "ptc_fm"])
def test_tu_offline_statistics(spelling, tmp_path, no_network):
    from torch_geometric.datasets import TUDataset

    before = _bundled_listing()
    name = spelling.upper()
    graphs, nodes, feats, edge_feats, counts = TU_EXPECTED[name]
    ds = D.load_tu(spelling, root=str(tmp_path))
    assert isinstance(ds, TUDataset) and ds.name == name
    assert len(ds) == graphs and ds.num_classes == 2
    assert ds.num_features == feats and ds._data.x.shape == (nodes, feats)
    assert ds._data.y.bincount().tolist() == counts
    assert ds.num_edge_features == edge_feats
    if edge_feats:
        # one-hot bond types, one row per stored edge
        assert torch.equal(ds._data.edge_attr.sum(1), torch.ones(ds._data.edge_index.size(1)))
    assert ds._data.edge_index.size(1) == sum(d.num_edges for d in ds)
    # undirected graphs: both directions stored, no self loops
    ei = set(map(tuple, ds._data.edge_index.t().tolist()))
    assert all((v, u) in ei and u != v for (u, v) in ei)
    assert os.path.isfile(tmp_path / name / "raw" / f"{name}_A.txt")
    assert not os.path.exists(tmp_path / name / "raw" / name)  # archive folder flattened
    assert _bundled_listing() == before


def test_tu_node_attributes(tmp_path, no_network):
    ds = D.load_tu("PROTEINS", root=str(tmp_path))
    x = ds._data.x
    # column 0: the continuous attribute; columns 1-3: one-hot of the three node labels
    assert ds.num_node_attributes == 1 and ds.num_node_labels == 3
    assert torch.equal(x[:, 1:].sum(1), torch.ones(x.size(0)))
    assert len(x[:, 0].unique()) > 3
    plain = D.load_tu("PROTEINS", root=str(tmp_path), use_node_attr=False)
    assert plain.num_features == 3 and torch.equal(plain._data.x, x[:, 1:])


def test_tu_second_load_uses_cache(tmp_path, monkeypatch, no_network):
    first = D.load_tu("PTC_FM", root=str(tmp_path))
    raw = tmp_path / "PTC_FM" / "raw" / "PTC_FM_A.txt"
    stamp = os.stat(raw).st_mtime_ns

    def no_process(self):
        raise AssertionError("PTC_FM was processed twice")

    def no_write(*args):
        raise AssertionError("raw files were written twice")

    monkeypatch.setattr(tu_mod.BundledTUDataset, "process", no_process)
    monkeypatch.setattr(tu_mod, "_write_atomic", no_write)
    again = D.load_tu("ptc_fm", root=str(tmp_path))
    assert torch.equal(first._data.x, again._data.x)
    assert torch.equal(first._data.edge_index, again._data.edge_index)
    assert os.stat(raw).st_mtime_ns == stamp
    # a missing raw file is restored (and only that one), without reprocessing
    os.unlink(raw)
    monkeypatch.undo()
    D.load_tu("PTC_FM", root=str(tmp_path))
    assert raw.stat().st_size > 0


def test_tu_pre_transform_and_transform(tmp_path, no_network):
    def count(data):
        data.n = torch.tensor([data.num_nodes])
        return data

    def flag(data):
        data.flag = torch.tensor([1])
        return data

    ds = D.load_tu("PTC_FM", root=str(tmp_path), pre_transform=count, transform=flag)
    assert int(ds[5].n) == ds[5].num_nodes and int(ds[5].flag) == 1
    assert "flag" not in ds._data  # transform runs on access only


def test_tu_bad_names(tmp_path):
    for bad in ("ENZYMES", "", "mutag2"):
        with pytest.raises(ValueError, match="MUTAG, NCI1, PROTEINS, PTC_FM"):
            D.load_tu(bad, root=str(tmp_path))
    with pytest.raises(TypeError, match="string"):
        D.load_tu(3, root=str(tmp_path))
    assert not any(tmp_path.iterdir())  # nothing staged for a bad name
    assert D.TU_NAMES == ("MUTAG", "NCI1", "PROTEINS", "PTC_FM")


def test_tu_corrupted_archive_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(tu_mod.ARCHIVE_SHA256, "PTC_FM", "0" * 64)
    with pytest.raises(RuntimeError, match="corrupted"):
        D.load_tu("PTC_FM", root=str(tmp_path))
    assert os.listdir(tmp_path / "PTC_FM" / "raw") == []


def test_bundled_archives_match_readme():
    import hashlib

    base = os.path.join(os.path.dirname(tu_mod.__file__), "data")
    readme = open(os.path.join(base, "README.md")).read()
    for name, digest in tu_mod.ARCHIVE_SHA256.items():
        with open(os.path.join(base, f"{name}.zip"), "rb") as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == digest
        assert f"{digest}  {name}.zip" in readme


def test_package_data_ships_every_bundled_file():
    """setup.py's package_data patterns (as setuptools expands them) cover every data file."""
    import ast as pyast
    import glob

    tree = pyast.parse(open(os.path.join(REPO_ROOT, "setup.py")).read())
    patterns = next(pyast.literal_eval(kw.value) for node in pyast.walk(tree)
                    if isinstance(node, pyast.Call)
                    for kw in node.keywords if kw.arg == "package_data")["plstm_graph"]
    pkg = os.path.join(REPO_ROOT, "plstm_graph")
    shipped = {os.path.relpath(p, pkg) for pat in patterns
               for p in glob.glob(os.path.join(pkg, pat), recursive=True) if os.path.isfile(p)}
    data = os.path.join(pkg, "datasets", "data")
    for dirpath, _, files in os.walk(data):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), pkg)
            assert rel in shipped, rel


# ---------------------------------------------------------------------------
# Python AST dataset
# ---------------------------------------------------------------------------

SMALL = dict(max_graphs=50, max_nodes=128)


@pytest.fixture(scope="module")
def ast_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("pyast"))


@pytest.fixture(scope="module")
def graph_ds(ast_root):
    return pa.PythonASTDataset(ast_root, task="graph", **SMALL)


@pytest.fixture(scope="module")
def node_ds(ast_root):
    return pa.PythonASTDataset(ast_root, task="node", **SMALL)


def test_vocabulary_is_fixed():
    assert list(pa.AST_NODE_TYPES) == sorted(pa.AST_NODE_TYPES)
    for name in ("FunctionDef", "Name", "Call", "Add", "arguments", "arg"):
        assert name in pa.AST_NODE_TYPES
    for name in ("Load", "Store", "expr", "stmt", "AST"):
        assert name not in pa.AST_NODE_TYPES
    assert pa.MASK_INDEX == len(pa.AST_NODE_TYPES)


def test_name_classes():
    c = pa.GRAPH_CLASSES.index
    assert pa.name_to_class("__init__") == c("dunder")
    assert pa.name_to_class("get_value") == c("get")
    assert pa.name_to_class("_getValue") == c("get")
    assert pa.name_to_class("setUp") == c("set")
    assert pa.name_to_class("is_valid") == c("predicate")
    assert pa.name_to_class("frobnicate") == c("other")
    assert pa.name_to_class("_") == c("other")


def test_function_to_graph_small():
    fn = ast.parse("def f(a):\n    return a + 1\n").body[0]
    types, edges, etypes = pa.function_to_graph(fn)
    names = [pa.AST_NODE_TYPES[t] for t in types]
    # pre-order; Load context dropped
    assert names == ["FunctionDef", "arguments", "arg", "Return", "BinOp",
                     "Name", "Add", "Constant"]
    child = {e for e, k in zip(edges, etypes) if k != pa.EDGE_TYPES.index("next_sibling")}
    sib = {e for e, k in zip(edges, etypes) if k == pa.EDGE_TYPES.index("next_sibling")}
    assert child == {(0, 1), (0, 3), (1, 2), (3, 4), (4, 5), (4, 6), (4, 7)}
    assert sib == {(1, 3), (5, 6), (6, 7)}
    assert all(u < v for u, v in edges)
    assert pa.function_to_graph(fn, max_nodes=4) is None
    types2, edges2, _ = pa.function_to_graph(fn, sibling_edges=False)
    assert types2 == types and set(edges2) == child


def _check_common(ds):
    assert 0 < len(ds) <= SMALL["max_graphs"]
    for data in ds:
        n, e = data.num_nodes, data.edge_index.size(1)
        assert 1 <= n <= SMALL["max_nodes"]
        assert data.x.shape == (n, pa.NUM_NODE_TYPES + 1)
        assert torch.equal(data.x.argmax(1), data.node_type)
        assert torch.equal(data.x.sum(1), torch.ones(n))
        assert data.edge_attr.shape == (e, pa.NUM_EDGE_TYPES)
        assert torch.equal(data.edge_attr.argmax(1), data.edge_type)
        assert data.edge_index.min() >= 0 and data.edge_index.max() < n
        g = _nx(data)
        assert nx.is_directed_acyclic_graph(g)
        assert nx.is_weakly_connected(g)
        # node 0 (the def) is the unique source
        assert [v for v in g if g.in_degree(v) == 0] == [0]
        # parent edges form a tree: every non-root node has exactly one parent
        child = data.edge_type != pa.EDGE_TYPES.index("next_sibling")
        indeg = torch.bincount(data.edge_index[1, child], minlength=n)
        assert indeg[0] == 0 and bool((indeg[1:] == 1).all())
        assert 0 <= int(data.file_id) < len(ds.files)


def test_graph_task(graph_ds):
    ds = graph_ds
    _check_common(ds)
    assert ds.num_classes == len(pa.GRAPH_CLASSES)
    y = ds._data.y
    assert y.shape == (len(ds),)
    assert int(y.min()) >= 0 and int(y.max()) < ds.num_classes
    assert len(ds.functions) == len(ds)
    for data, fn in zip(ds, ds.functions):
        assert int(data.y) == pa.name_to_class(fn["name"])
    info = ds.build_info
    assert info["num_graphs"] == len(ds)
    assert sum(info["class_counts"].values()) == len(ds)
    assert len(set(y.tolist())) >= 3  # several classes even for a tiny build


def test_node_task(node_ds, graph_ds):
    ds = node_ds
    _check_common(ds)
    assert ds.num_classes == pa.NUM_NODE_TYPES
    assert len(ds) == len(graph_ds)  # same functions for both tasks
    for data, gdata in zip(ds, graph_ds):
        assert data.y.shape == (data.num_nodes,)
        assert int(data.y.max()) < pa.NUM_NODE_TYPES
        m = data.label_mask
        assert m.dtype == torch.bool and int(m.sum()) >= 1 and not bool(m[0])
        assert bool((data.node_type[m] == pa.MASK_INDEX).all())
        assert torch.equal(data.node_type[~m], data.y[~m])
        assert torch.equal(data.y, gdata.node_type)  # true types
        assert torch.equal(data.edge_index, gdata.edge_index)
        k = round(0.15 * (data.num_nodes - 1))
        assert int(m.sum()) == max(1, k)


def test_cache_hit(graph_ds, ast_root, monkeypatch):
    def no_process(self):
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(pa.PythonASTDataset, "process", no_process)
    t0 = time.perf_counter()
    again = pa.PythonASTDataset(ast_root, task="graph", **SMALL)
    assert time.perf_counter() - t0 < 5.0
    assert torch.equal(again._data.x, graph_ds._data.x)
    assert again.functions == graph_ds.functions
    # a different configuration is a different cache entry
    with pytest.raises(AssertionError, match="rebuilt"):
        pa.PythonASTDataset(ast_root, task="graph", max_graphs=49, max_nodes=128)


def test_deterministic_builds(graph_ds, tmp_path):
    other = pa.PythonASTDataset(str(tmp_path), task="graph", **SMALL)
    assert other.functions == graph_ds.functions
    assert other.files == graph_ds.files
    for key in ("x", "edge_index", "edge_attr", "node_type", "edge_type", "y", "file_id"):
        assert torch.equal(getattr(other._data, key), getattr(graph_ds._data, key)), key
    assert other.slices.keys() == graph_ds.slices.keys()
    for key in other.slices:
        assert torch.equal(other.slices[key], graph_ds.slices[key])


def test_split_by_file(graph_ds):
    tr, va, te = graph_ds.split_by_file((0.6, 0.2, 0.2), seed=1)
    allidx = torch.cat([tr, va, te]).sort().values
    assert torch.equal(allidx, torch.arange(len(graph_ds)))
    files = [{graph_ds.functions[i]["file"] for i in part.tolist()} for part in (tr, va, te)]
    assert not (files[0] & files[1]) and not (files[0] & files[2]) and not (files[1] & files[2])
    again = graph_ds.split_by_file((0.6, 0.2, 0.2), seed=1)
    assert all(torch.equal(a, b) for a, b in zip((tr, va, te), again))
    assert len(tr) > 0
    with pytest.raises(RuntimeError):
        graph_ds[tr].split_by_file()


def test_split_helpers():
    tr, va, te = random_split(10, (0.6, 0.2, 0.2), seed=3)
    assert (len(tr), len(va), len(te)) == (6, 2, 2)
    assert torch.equal(torch.cat([tr, va, te]).sort().values, torch.arange(10))
    assert all(torch.equal(a, b) for a, b in zip((tr, va, te), random_split(10, (0.6, 0.2, 0.2), seed=3)))
    groups = ["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"] * 10
    parts = group_split(groups, (0.5, 0.25, 0.25), seed=0)
    assert sum(len(p) for p in parts) == 20
    for p in parts:
        assert len({groups[i] for i in p.tolist()} & set().union(
            *[{groups[i] for i in q.tolist()} for q in parts if q is not p])) == 0
    with pytest.raises(ValueError):
        random_split(10, (0.5, 0.5, 0.5))


def test_import_is_lazy():
    code = ("import sys, plstm_graph.datasets as d; "
            "assert 'plstm_graph.datasets.python_ast' not in sys.modules; "
            "assert 'plstm_graph.datasets.mutag' not in sys.modules; "
            "assert 'plstm_graph.datasets.tu' not in sys.modules; "
            "assert callable(d.load_mutag) and d.PythonASTDataset")
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO_ROOT)


def test_tu_pre_transform_gets_its_own_cache(tmp_path, no_network):
    """The same root with and without PrepareDAG: neither load returns the other's graphs
    (PyG alone would reuse the first cache and only warn)."""
    from plstm_graph import PrepareDAG

    plain = D.load_tu("MUTAG", root=str(tmp_path))
    assert "dag_edge_index" not in plain[0]
    prepared = D.load_tu("MUTAG", root=str(tmp_path), pre_transform=PrepareDAG())
    assert "dag_edge_index" in prepared[0]
    assert "dag_edge_index" not in D.load_tu("MUTAG", root=str(tmp_path))[0]
