"""Smoke tests of the examples: each ``main([...])`` in-process with tiny settings."""
import json
import os
import sys
from collections import Counter

import pytest
import torch

import plstm_graph

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, EXAMPLES)

import _common  # noqa: E402  (the helpers the examples share)
import custom_dag_dataset  # noqa: E402
import graph_classification  # noqa: E402
import node_classification  # noqa: E402
import paper_table  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("examples_data"))


def check_model_result(result, keys=("mean", "std", "seconds", "params")):
    for key in keys:
        assert key in result
    assert 0.0 <= result["mean"] <= 1.0
    assert result["std"] >= 0.0
    assert result["params"] > 0


@pytest.mark.parametrize("module", [graph_classification, node_classification,
                                    custom_dag_dataset])
def test_help(module, capsys):
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    assert "--epochs" in capsys.readouterr().out


def test_cv_splits_are_stratified_partitions():
    labels = [0] * 63 + [1] * 125  # MUTAG's class sizes
    splits = list(graph_classification.cv_splits(labels, 10, seed=0))
    assert len(splits) == 10
    tests = []
    for train, val, test in splits:
        assert not set(train) & set(val) and not set(train) & set(test) \
            and not set(val) & set(test)
        assert sorted(train + val + test) == list(range(len(labels)))
        assert abs(len(val) - 18.8) < 1 and abs(len(test) - 18.8) < 1
        for part in (val, test):
            counts = Counter(labels[i] for i in part)
            assert abs(counts[0] - 6.3) <= 1 and abs(counts[1] - 12.5) <= 1
        tests += test
    assert sorted(tests) == list(range(len(labels)))  # every graph is tested exactly once
    with pytest.raises(ValueError):
        list(graph_classification.cv_splits(labels, 2, seed=0))


def test_graph_classification_mutag(root, tmp_path, capsys):
    out = tmp_path / "mutag.json"
    res = graph_classification.main([
        "--epochs", "2", "--run-folds", "1", "--hidden", "16", "--batch-size", "64",
        "--root", root, "--output", str(out), "--quiet"])
    assert set(res["models"]) == {"plstm", "gin"}
    for r in res["models"].values():
        check_model_result(r)
        (fold,) = r["folds"]
        assert sum(fold["sizes"]) == 188 and fold["sizes"][2] in (18, 19, 20)
        assert 1 <= fold["epoch"] <= 2
        assert len(fold["curves"]["val_acc"]) == 2
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == res["summary"] and printed[-1].startswith("SUMMARY MUTAG")
    assert "plstm" in printed[-1] and "gin" in printed[-1]
    saved = json.loads(out.read_text())
    assert saved["summary"] == res["summary"]
    assert saved["machine"] == _common.machine_info()


def test_graph_classification_ablation_options_reach_the_model(root):
    from plstm_graph.dag import bfs_rank
    args = graph_classification.parse_args([
        "--orient", "bfs", "--transition-bias", "3,1.25", "--gate-bias", "-1",
        "--norm-eps", "0.1", "--max-graphs", "30", "--root", root])
    graphs, info = graph_classification.load_graphs("mutag", root, 30, 0, args.orient)
    for g in graphs[:5]:
        expected = plstm_graph.to_dag(g.edge_index, num_nodes=g.num_nodes,
                                      rank=bfs_rank(g.edge_index, g.num_nodes))[0]
        assert torch.equal(g.dag_edge_index, expected)
    id_graphs, _ = graph_classification.load_graphs("mutag", root, 30, 0, "id")
    assert any(not torch.equal(a.dag_edge_index, b.dag_edge_index)
               for a, b in zip(graphs, id_graphs))
    model = graph_classification.build_model("plstm", info, args)
    convs = [block.conv for block in model.net.blocks]
    assert [c.transition_bias for c in convs] == [3.0, 1.25, 3.0, 1.25]
    assert all(c.gate_bias == -1.0 and c.norm_eps == 0.1 for c in convs)
    assert float(convs[0].source_gate.node.bias[0]) == -1.0
    for bad in (["--transition-bias", "3"], ["--norm-eps", "0"],
                ["--dataset", "python-ast", "--orient", "bfs"]):
        with pytest.raises(SystemExit):
            graph_classification.parse_args(bad)


def test_graph_classification_batches_are_dag_batches(root):
    graphs, info = graph_classification.load_graphs("mutag", root, 0)
    assert info["num_graphs"] == 188 and info["edge_dim"] == 4
    from torch_geometric.loader import DataLoader

    batch = next(iter(DataLoader(graphs, batch_size=50, shuffle=True)))
    _common.check_batch(batch)  # raises on wrong offsets
    for bad in (batch.line_index_p.flip(0), batch.line_index_p + 1):
        broken = batch.clone()
        broken.line_index_p = bad
        with pytest.raises(RuntimeError):
            _common.check_batch(broken)
    # what a plain Data collation would do: offset line indices by node counts
    from torch_geometric.data import Batch, Data

    plain = Batch.from_data_list([Data(**g.to_dict()) for g in graphs[:50]])
    with pytest.raises(RuntimeError):
        _common.check_batch(plain)


def test_graph_classification_plot(root, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "folds.png"
    graph_classification.main(["--epochs", "1", "--run-folds", "2", "--hidden", "8",
                               "--models", "gin", "--root", root, "--plot", str(png),
                               "--quiet"])
    assert png.stat().st_size > 1000


def test_graph_classification_python_ast(root):
    res = graph_classification.main([
        "--dataset", "python-ast", "--max-graphs", "80", "--folds", "3", "--run-folds", "1",
        "--epochs", "1", "--hidden", "16", "--root", root, "--quiet"])
    assert res["info"]["num_graphs"] == 80
    for r in res["models"].values():
        check_model_result(r)


# (graphs are a seeded subset, so only the feature widths are checked against the full sets)
TU_WIDTHS = {"MUTAG": (7, 4), "NCI1": (37, None), "PROTEINS": (4, None), "PTC_FM": (18, 4)}
TINY = ["--max-graphs", "40", "--folds", "3", "--run-folds", "1", "--epochs", "2",
        "--hidden", "8", "--batch-size", "16", "--quiet"]


@pytest.fixture(scope="module")
def all_table(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("paper") / "all.json"
    res = graph_classification.main(["--dataset", "all", "--models", "plstm,gcn,gat",
                                     "--root", root, "--output", str(out), "--no-curves",
                                     *TINY])
    return res, out


def test_graph_classification_all_tu_sets(all_table, capsys):
    res, out = all_table
    assert list(res["datasets"]) == list(TU_WIDTHS)
    for name, run in res["datasets"].items():
        assert run["info"]["num_graphs"] == 40
        assert (run["info"]["num_features"], run["info"]["edge_dim"]) == TU_WIDTHS[name]
        assert list(run["models"]) == ["plstm", "gcn", "gat"]
        for r in run["models"].values():
            check_model_result(r)
            (fold,) = r["folds"]
            assert "curves" not in fold and sum(fold["sizes"]) == 40
        assert run["summary"].startswith(f"SUMMARY {name} 1/3 folds")
    saved = json.loads(out.read_text())
    assert saved["summary"] == res["summary"] and len(saved["summary"].splitlines()) == 4
    assert set(saved["datasets"]) == set(TU_WIDTHS)


def test_graph_classification_baselines_and_defaults():
    from torch_geometric.nn.models import GAT, GCN, GIN

    from plstm_graph.nn import PLSTMConv

    args = graph_classification.parse_args([])
    assert args.models == ["plstm", "gin"] and args.dataset == "mutag"  # make demo
    # the ablation options default to the library's values (None: the layer decides)
    assert (args.gate_bias, args.transition_bias, args.norm_eps, args.orient) == \
        (None, None, None, "id")
    info = dict(num_features=7, num_classes=2, edge_dim=4)
    for name, cls in (("gin", GIN), ("gcn", GCN), ("gat", GAT)):
        model = graph_classification.build_model(name, info, args)
        assert type(model.gnn) is cls and model.gnn.num_layers == 4
        assert isinstance(model.head, torch.nn.Linear) and model.head.in_features == 64
    # PLSTMNet with the library's own gate and transition biases
    model = graph_classification.build_model("plstm", info, args)
    convs = [m for m in model.modules() if isinstance(m, PLSTMConv)]
    reference = PLSTMConv(64, 64, heads=4, mode="P")
    assert len(convs) == 4 and all(c.gate_bias == reference.gate_bias for c in convs)
    assert [c.transition_bias for c in convs] == [
        PLSTMConv(64, 64, heads=4, mode=c.mode).transition_bias for c in convs]


def test_graph_classification_learning_rate_schedule():
    f = graph_classification.warmup_cosine(100, 10)
    values = [f(step) for step in range(101)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(values[:10], values[1:10]))  # rising warm-up
    assert all(a >= b for a, b in zip(values[9:], values[10:]))  # then decaying
    assert values[55] == pytest.approx(0.5) and values[100] == pytest.approx(0.0)
    assert graph_classification.warmup_cosine(5, 0)(0) == pytest.approx(1.0)


def test_graph_classification_resume(root, tmp_path, monkeypatch):
    out = str(tmp_path / "ptc.json")
    base = ["--dataset", "ptc_fm", "--models", "gin", "--root", root, "--output", out, *TINY]
    first = graph_classification.main(base)
    calls = []
    real = graph_classification.run_fold

    def counting(name, info, args, graphs, split, fold, *rest, **kw):
        calls.append((name, fold))
        return real(name, info, args, graphs, split, fold, *rest, **kw)

    monkeypatch.setattr(graph_classification, "run_fold", counting)
    again = graph_classification.main(base + ["--resume", "--run-folds", "2"])
    assert calls == [("gin", 1)]  # fold 0 came from the file
    folds = again["models"]["gin"]["folds"]
    assert [f["fold"] for f in folds] == [0, 1]
    assert folds[0]["test_acc"] == first["models"]["gin"]["folds"][0]["test_acc"]
    with pytest.raises(SystemExit, match="hidden"):
        graph_classification.main(base + ["--resume", "--hidden", "12"])
    # other models resumed into the same file and interrupted after a save: gin's folds, beyond
    # --run-folds 1 and not requested, must stay in the file
    def interrupted(name, *args, **kw):
        if name == "gat":
            raise KeyboardInterrupt
        return counting(name, *args, **kw)

    monkeypatch.setattr(graph_classification, "run_fold", interrupted)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        graph_classification.main(base + ["--resume", "--models", "gcn,gat"])
    assert calls == [("gcn", 0)]
    saved = json.loads(open(out).read())
    assert [f["fold"] for f in saved["models"]["gin"]["folds"]] == [0, 1]
    assert [f["fold"] for f in saved["models"]["gcn"]["folds"]] == [0]
    monkeypatch.setattr(graph_classification, "run_fold", counting)
    calls.clear()
    third = graph_classification.main(base + ["--resume", "--models", "gcn,gat"])
    assert calls == [("gat", 0)]
    assert [f["fold"] for f in third["models"]["gin"]["folds"]] == [0, 1]
    assert "gin 0." in third["summary"] and "2 folds" in third["summary"]


def test_paper_table(all_table, tmp_path, capsys):
    _, out = all_table
    merged_path = tmp_path / "merged.json"
    png = tmp_path / "table.png"
    plot = ["--plot", str(png)] if _have_matplotlib() else []
    table = paper_table.main([str(out), "--output", str(merged_path), *plot])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| model | MUTAG | NCI1 | PROTEINS | PTC_FM |"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:5]}
    assert set(rows) == {"pLSTM (PLSTMNet)", "GCN", "GAT"}
    acc = table["datasets"]["NCI1"]["models"]["gcn"]["mean"]
    assert f"{acc:.3f} (1/3 folds)" in rows["GCN"] and "±" not in rows["GCN"]
    if plot:
        assert png.stat().st_size > 1000
    # the merged file is in the --dataset all format, ready for --resume
    merged = json.loads(merged_path.read_text())
    assert set(merged["datasets"]) == set(TU_WIDTHS)
    assert all(run["machines"] == [_common.machine_info()] for run in merged["datasets"].values())
    args = graph_classification.parse_args(["--dataset", "all", *TINY])
    done = graph_classification.previous_folds(str(merged_path), args)
    assert [f["fold"] for f in done["PTC_FM"]["gat"]] == [0]
    # runs of different protocols are not merged
    other = json.loads(out.read_text())
    other["datasets"]["MUTAG"]["args"]["epochs"] = 7
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="epochs"):
        paper_table.main([str(out), str(bad)])


def _have_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_node_classification(root, capsys):
    res = node_classification.main([
        "--max-graphs", "80", "--max-per-file", "4", "--epochs", "1", "--seeds", "2",
        "--hidden", "16",
        "--root", root, "--quiet"])
    assert set(res["models"]) == {"plstm", "gcn", "gat"}
    for r in res["models"].values():
        check_model_result(r)
        assert len(r["runs"]) == 2
    assert 0.0 < res["majority"] < 1.0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("SUMMARY PythonAST")


def test_node_classification_ablation_flags_reach_the_model():
    args = node_classification.parse_args(["--transition-form", "factorised", "--mlp-ratio", "1"])
    info = dict(num_features=5, num_classes=3, edge_dim=2)
    model = node_classification.build_model("plstm", info, args)
    convs = [m for m in model.modules() if isinstance(m, plstm_graph.PLSTMConv)]
    assert {c.transition_form for c in convs if c.mode == "P"} == {"factorised"}
    mlps = [b.mlp for b in model.modules() if isinstance(b, plstm_graph.nn.PLSTMBlock)]
    assert mlps and {m.lin1.out_features for m in mlps} == {args.hidden}  # mlp_ratio=1
    default = node_classification.build_model("plstm", info, node_classification.parse_args([]))
    assert {c.transition_form for c in default.modules()
            if isinstance(c, plstm_graph.PLSTMConv)} == {"arc"}
    assert {b.mlp.lin1.out_features for b in default.modules()
            if isinstance(b, plstm_graph.nn.PLSTMBlock)} == {4 * args.hidden}


def test_custom_dag_dataset(tmp_path, capsys):
    res = custom_dag_dataset.main([
        "--num-graphs", "40", "--epochs", "1", "--min-hops", "3", "--max-hops", "6",
        "--hidden", "16", "--root", str(tmp_path), "--quiet"])
    assert set(res["models"]) == {"plstm", "gin"}
    for r in res["models"].values():
        assert 0.0 <= r["test_acc"] <= 1.0 and len(r["history"]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("SUMMARY long-range")


def test_custom_dag_conversions_keep_direction():
    import networkx as nx

    g = nx.DiGraph()
    for n in (5, 2, 9):
        g.add_node(n, x=[float(n)])
    g.add_edges_from([(9, 2), (2, 5)])
    data = custom_dag_dataset.from_networkx_dag(g)
    # node order 5, 2, 9 -> ids 0, 1, 2; edges 9->2 and 2->5 become 2->1 and 1->0
    assert data.x.view(-1).tolist() == [5.0, 2.0, 9.0]
    assert sorted(map(tuple, data.edge_index.t().tolist())) == [(1, 0), (2, 1)]
    e = custom_dag_dataset.from_edge_list([(2, 1), (1, 0)], torch.zeros(3, 1))
    assert e.edge_index.tolist() == [[2, 1], [1, 0]]
    with pytest.raises(ValueError):
        g.add_edge(5, 9)
        custom_dag_dataset.from_networkx_dag(g)


def test_paper_table_ablations(root, tmp_path, capsys):
    tiny = TINY[:TINY.index("--run-folds")] + ["--run-folds", "2"] + \
        TINY[TINY.index("--run-folds") + 2:]
    paths = []
    for name, extra in (("base", []), ("bfs", ["--orient", "bfs", "--transition-bias", "3,1.25"]),
                        ("depth", ["--layers", "2", "--no-edge-attr"])):
        path = tmp_path / f"{name}.json"
        graph_classification.main(["--models", "plstm", "--root", root, "--output", str(path),
                                   "--no-curves", *tiny, *extra])
        paths.append(str(path))
    capsys.readouterr()
    text = paper_table.main(["--ablations", *paths])["markdown"]
    lines = text.splitlines()
    assert capsys.readouterr().out.strip() == text
    assert lines[0].startswith("| MUTAG: plstm |") and len(lines) == 5
    # the baseline row names what the baseline departs from the example's defaults in
    assert lines[2].startswith("| `baseline: --epochs 2 --folds 3 --batch-size 16 --hidden 8 "
                               "--max-graphs 40` | 2 |")
    assert lines[3].startswith("| `--orient bfs --transition-bias 3,1.25` | 2 |")
    assert lines[4].startswith("| `--layers 2 --no-edge-attr` | 2 |")
    base, bfs = (json.loads(open(p).read())["models"]["plstm"]["folds"] for p in paths[:2])
    delta = sum(b["test_acc"] - a["test_acc"] for a, b in zip(base, bfs)) / 2
    assert f"| {delta:+.3f} |" in lines[3]
    with pytest.raises(SystemExit):
        paper_table.main(["--ablations", paths[0], "--plot", str(tmp_path / "x.png")])
    # a baseline run with the example's defaults is labelled so (its args rewritten to them)
    saved = json.loads(open(paths[0]).read())
    saved["args"].update(vars(graph_classification.parse_args([])))
    (tmp_path / "defaults.json").write_text(json.dumps(saved))
    text = paper_table.main(["--ablations", str(tmp_path / "defaults.json"), paths[1]])["markdown"]
    lines = text.splitlines()
    assert lines[2].startswith("| `baseline (library defaults)` | 2 |")
    assert lines[3].startswith("| `--epochs 2 --folds 3 --batch-size 16 --hidden 8 "
                               "--max-graphs 40 --orient bfs --transition-bias 3,1.25` | 2 |")


def test_paper_table_select_chooses_on_validation(root, tmp_path, capsys):
    tiny = TINY[:TINY.index("--run-folds")] + ["--run-folds", "2"] + \
        TINY[TINY.index("--run-folds") + 2:]
    paths = []
    for name, extra in (("base", []), ("slow", ["--lr", "3e-4"])):
        path = tmp_path / f"{name}.json"
        graph_classification.main(["--models", "plstm,gin", "--root", root, "--output",
                                   str(path), "--no-curves", *tiny, *extra])
        paths.append(path)
    base, slow = (json.loads(p.read_text()) for p in paths)
    # make the vote known: pLSTM's slow setting wins fold 0 and loses fold 1 on validation;
    # GIN's two settings tie on validation accuracy and the slow one has the lower loss
    for i, f in enumerate(slow["models"]["plstm"]["folds"]):
        f["val_acc"] = base["models"]["plstm"]["folds"][i]["val_acc"] + (0.1 if i == 0 else -0.1)
    for b, f in zip(base["models"]["gin"]["folds"], slow["models"]["gin"]["folds"]):
        f["val_acc"], f["val_loss"] = b["val_acc"], b["val_loss"] - 0.01
    paths[1].write_text(json.dumps(slow))
    capsys.readouterr()
    table = paper_table.main(["--select", *map(str, paths)])
    assert capsys.readouterr().out.strip() == table["markdown"]
    got = table["datasets"]["MUTAG"]["models"]
    tests = {m: [r["models"][m]["folds"] for r in (base, slow)] for m in ("plstm", "gin")}
    want_plstm = [tests["plstm"][1][0]["test_acc"], tests["plstm"][0][1]["test_acc"]]
    assert [f["test_acc"] for f in got["plstm"]["folds"]] == want_plstm
    assert got["plstm"]["mean"] == pytest.approx(sum(want_plstm) / 2)
    assert got["plstm"]["chosen"] == {"first": 1, "--lr 0.0003": 1}
    assert [f["test_acc"] for f in got["gin"]["folds"]] == [f["test_acc"]
                                                           for f in tests["gin"][1]]
    assert got["gin"]["chosen"] == {"first": 0, "--lr 0.0003": 2}
    rows = table["markdown"].splitlines()
    assert rows[0] == "| model | MUTAG |"
    assert rows[2].startswith("| pLSTM (PLSTMNet) | ") and "; --lr 0.0003 1/2" in rows[2]
    assert "; --lr 0.0003 2/2" in rows[3]
    # a setting a model lacks is named in its cell, not silently left out
    del slow["models"]["gin"]
    paths[1].write_text(json.dumps(slow))
    text = paper_table.main(["--select", *map(str, paths)])["markdown"]
    assert "no `--lr 0.0003` run" in text.splitlines()[3]
    assert "--lr 0.0003 0/2" not in text.splitlines()[3]
    with pytest.raises(SystemExit):
        paper_table.main(["--select", str(paths[0]), "--output", str(tmp_path / "x.json")])


def test_graph_classification_workers_give_the_same_folds(root, tmp_path):
    # two processes (spawned, each loading the data itself) against one: the same numbers,
    # folds in fold order whatever finished first, and --resume skips folds in both
    base = ["--dataset", "mutag", "--models", "plstm,gin", "--run-folds", "3", "--epochs", "1",
            "--hidden", "8", "--max-graphs", "60", "--root", root, "--quiet", "--threads", "1"]
    one = graph_classification.main(base + ["--output", str(tmp_path / "one.json")])
    out = str(tmp_path / "two.json")
    two = graph_classification.main(base + ["--workers", "2", "--output", out,
                                            "--run-folds", "2"])
    two = graph_classification.main(base + ["--workers", "2", "--output", out, "--resume"])
    for name in ("plstm", "gin"):
        strip = [[{k: v for k, v in f.items() if k != "seconds"}
                  for f in r["models"][name]["folds"]]
                 for r in (one, two)]
        assert [f["fold"] for f in strip[1]] == [0, 1, 2]
        assert strip[0] == strip[1]
    assert json.loads(open(out).read())["summary"] == two["summary"]
    with pytest.raises(SystemExit):
        graph_classification.main(base + ["--workers", "0"])


def test_graph_classification_fold_ids(root, tmp_path):
    base = ["--dataset", "mutag", "--models", "gin", "--epochs", "1", "--hidden", "8",
            "--max-graphs", "40", "--folds", "4", "--root", root, "--quiet"]
    res = graph_classification.main(base + ["--fold-ids", "3,1"])
    assert [f["fold"] for f in res["models"]["gin"]["folds"]] == [1, 3]
    full = graph_classification.main(base)
    by_fold = {f["fold"]: f["test_acc"] for f in full["models"]["gin"]["folds"]}
    assert [f["test_acc"] for f in res["models"]["gin"]["folds"]] == [by_fold[1], by_fold[3]]
    for bad in ("4", "1,1", "a"):
        with pytest.raises(SystemExit):
            graph_classification.main(base + ["--fold-ids", bad])


def test_result_files_say_where_they_ran():
    info = _common.machine_info()
    assert info["cpus"] >= 1 and info["torch"] == torch.__version__
    assert info["arch"] and "cpu" in info
    json.dumps(info)  # goes into the result files as it is
