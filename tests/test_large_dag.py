"""examples/large_dag.py: the generated DAG and a tiny run of the example."""
import os
import re
import subprocess
import sys

import torch

from plstm_graph import topological_levels

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, EXAMPLES)

import large_dag  # noqa: E402


def _mass_by_hand(data, colors, decay):
    """The label rule written out node by node in the hidden layer order (float64)."""
    n = data.num_nodes
    src, dst = data.edge_index.tolist()
    parents = [[] for _ in range(n)]
    outdeg = [0] * n
    for s, d in zip(src, dst):
        parents[d].append(s)
        outdeg[s] += 1
    mass = [[0.0] * colors for _ in range(n)]
    for v in sorted(range(n), key=lambda v: int(data.layer[v])):
        if data.x[v, colors] > 0:  # a source starts with its colour
            mass[v][int(data.x[v, :colors].argmax())] = 1.0
        for p in parents[v]:
            for c in range(colors):
                mass[v][c] += decay * mass[p][c] / outdeg[p]
    return torch.tensor(mass, dtype=torch.float64)


def test_generated_dag_and_labels():
    colors, decay = 3, 0.5
    data = large_dag.make_dag(layers=6, width=12, source_prob=0.2, colors=colors, decay=decay,
                              seed=3)
    n = data.num_nodes
    assert n == 72 and data.edge_index.size(1) > n
    level = topological_levels(data.edge_index, n)  # raises on a cycle
    # edges climb the hidden layers by one to three
    gap = data.layer[data.edge_index[1]] - data.layer[data.edge_index[0]]
    assert bool((gap >= 1).all()) and bool((gap <= 3).all())
    # ids are shuffled: not in topological order
    assert not bool((data.edge_index[0] < data.edge_index[1]).all())
    # sources have no in-edges and exactly one colour; the others no colour
    has_in = torch.zeros(n, dtype=torch.bool)
    has_in[data.edge_index[1]] = True
    is_source = data.x[:, colors] > 0
    assert torch.equal(has_in, ~is_source)
    assert torch.equal(data.x[:, :colors].sum(-1), is_source.float())
    assert bool(is_source[data.layer == 0].all()) and bool((level[is_source] == 0).all())
    mass = _mass_by_hand(data, colors, decay)
    assert torch.equal(data.y, mass.argmax(-1))
    masks = data.train_mask.long() + data.val_mask.long() + data.test_mask.long()
    assert bool((masks == 1).all())
    # the same seed gives the same graph
    again = large_dag.make_dag(6, 12, 0.2, colors, decay, seed=3)
    assert torch.equal(again.edge_index, data.edge_index) and torch.equal(again.y, data.y)


def test_small_run_compares_full_graph_and_minibatch(capsys):
    res = large_dag.main(["--small", "--layers", "8", "--width", "40", "--epochs", "2",
                          "--batch-size", "32", "--quiet"])
    cmp = res["comparison"]
    # full-depth cones with every in-edge (and the stubs) give the full graph's outputs
    assert cmp["exact_agree"] == 1.0 and cmp["exact_max_diff"] < 1e-4
    assert cmp["exact_acc"] == cmp["full_acc"]
    for key in ("full_acc", "sampled_acc", "sampled_agree"):
        assert 0.0 <= cmp[key] <= 1.0
    assert res["train_targets_per_s"] > 0 and res["peak_rss_mb"] > 0
    assert res["largest_batch"]["nodes"] > 0 and len(res["history"]) == 2
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == res["summary"] and last.startswith("SUMMARY large DAG 320 nodes")


def test_no_stubs_run():
    res = large_dag.main(["--small", "--layers", "6", "--width", "30", "--epochs", "1",
                          "--no-stubs", "--num-neighbors", "2,2", "--quiet"])
    assert res["largest_batch"]["stubs"] == 0
    assert res["comparison"]["exact_max_diff"] < 1e-4  # the exactness check keeps its stubs


def test_torchrun_two_processes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.path.dirname(EXAMPLES))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(EXAMPLES, "large_dag.py"), "--small", "--layers", "6", "--width", "40",
           "--epochs", "1", "--batch-size", "16", "--quiet"]
    proc = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert sum(line.startswith("SUMMARY") for line in lines) == 1  # rank 0 prints alone
    # the checksum is only printed once every rank has agreed on it
    assert lines[-1].startswith("SUMMARY") and "world size 2, parameter checksum" in lines[-1]
    diff = re.search(r"full-depth cones max diff ([0-9.e+-]+)", lines[-1])
    assert diff and float(diff.group(1)) < 1e-4
