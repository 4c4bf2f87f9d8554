"""The benchmark scripts still run (tiny sizes; the timings themselves are not checked)."""
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "benchmarks")


@pytest.fixture
def benchmark_module():
    sys.path.insert(0, BENCH)
    try:
        import benchmark
        yield benchmark
    finally:
        sys.path.remove(BENCH)


def test_benchmark_table_has_arc_and_node_rows(benchmark_module, capsys):
    rows = benchmark_module.main(["--quick", "--batches", "2", "--dense", "40,150",
                                  "--repeat", "1", "--max-loop-graphs", "2"])
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("| graph"))
    assert [c.strip() for c in header.strip("|").split("|")][6:8] == ["impl", "transitions"]
    graphs = {r["graph"] for r in rows}
    assert graphs == {"2 x MUTAG-sized", "dense DAG 40 nodes"}
    for graph in graphs:
        impls = {(r["impl"], r["transitions"]) for r in rows if r["graph"] == graph}
        assert ("plstm_dag torch scan", "node") in impls
        assert ("plstm_dag torch", "arc") in impls
        assert any(i.startswith("PLSTMConv") and i.endswith("plain call") for i, _ in impls)
        assert all(r["_fwdbwd"] > 0 for r in rows if r["graph"] == graph)
    # the per-edge loop only where its graphs are known (the batches)
    assert {r["graph"] for r in rows if r["impl"] == "per-edge loop"} == {"2 x MUTAG-sized"}
    # the dense-DAG target's own layer widths, and the target ratios printed for the graphs run
    dense = {r["impl"] for r in rows if r["graph"] == "dense DAG 40 nodes"}
    assert {"PLSTMConv(64,64,heads=4), plain call", "GATConv(64,16,heads=4)"} <= dense
    assert not any("64" in r["impl"] for r in rows if r["graph"] == "2 x MUTAG-sized")
    targets = table[table.index("# targets"):].splitlines()[1:]
    assert len(targets) == 1 and "dense DAG 40 nodes" in targets[0] and "<= 3x" in targets[0]


def test_bench_layer_reports_both_layers_and_their_ratio(benchmark_module, capsys):
    import bench_layer

    out = bench_layer.main(["--graphs", "2", "--channels", "8", "--rounds", "3", "--warmup",
                            "1"])
    text = capsys.readouterr().out
    assert "PLSTMConv(8, 8, heads=4)" in text and "GATConv(8, 2, heads=4)" in text
    plstm, gat = out["PLSTMConv(8, 8, heads=4)"], out["GATConv(8, 2, heads=4)"]
    assert plstm > 0 and gat > 0
    assert out["ratio"] == pytest.approx(plstm / gat)
