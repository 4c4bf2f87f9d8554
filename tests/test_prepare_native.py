"""The native DAG preparation ops against their Python reference in ``plstm_graph.dag``:
identical tensors (not just equivalent ones) and identical error messages."""
import random
from dataclasses import fields

import pytest
import torch

import plstm_graph
from plstm_graph import dag
from plstm_graph.dag import (_line_graph_torch, _multitree_checked, build_schedule, line_graph,
                             topological_levels)
from harness import ei, random_dag, shuffled_union

pytestmark = pytest.mark.skipif(not plstm_graph.WITH_NATIVE, reason="needs the native ops")


def _cases():
    cases = {}
    for n, p, seed in [(1, 0.5, 0), (2, 1.0, 1), (7, 0.4, 2), (13, 0.3, 3), (40, 0.15, 4),
                       (60, 0.3, 5), (25, 1.0, 6), (101, 0.05, 7)]:
        edge_index = random_dag(n, p, seed=seed)
        cases[f"random{n}_{p}"] = (edge_index, n)
    cases["empty"] = (torch.empty(2, 0, dtype=torch.long), 0)
    cases["edgeless"] = (torch.empty(2, 0, dtype=torch.long), 5)
    cases["isolated_tail"] = (ei([(0, 2), (2, 1)]), 6)  # nodes 3..5 have no edges
    cases["diamond"] = (ei([(0, 1), (0, 2), (1, 3), (2, 3), (3, 4)]), 5)
    cases["parallel"] = (ei([(0, 1), (0, 1), (1, 2), (1, 2)]), 3)
    cases["chain"] = (ei([(i, i + 1) for i in range(300)]), 301)
    cases["star_in_out"] = (ei([(i, 20) for i in range(20)] + [(20, 21 + i) for i in range(7)]),
                            28)
    mols = [(random_dag(n, 0.25, seed=10 + n, max_span=3), n) for n in (9, 17, 23, 12, 30, 5)]
    cases["batch"] = shuffled_union(mols, seed=3)
    return cases


CASES = _cases()


def _check_same_schedule(a, b):
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.device == y.device, f.name
            assert torch.equal(x, y), f.name
        elif f.name != "_ancestor_pairs":
            assert x == y, f.name


@pytest.mark.parametrize("name", sorted(CASES))
def test_native_preparation_equals_reference(name):
    edge_index, n = CASES[name]
    level = topological_levels(edge_index, n, method="native")
    assert torch.equal(level, topological_levels(edge_index, n, method="networkx"))
    assert torch.equal(level, topological_levels(edge_index, n, method="torch"))
    line = line_graph(edge_index, n)
    assert torch.equal(line, _line_graph_torch(edge_index, n))
    rev = edge_index.flip(0)
    level_rev = topological_levels(rev, n, method="native")
    for e, lines, lv in ((edge_index, line, level), (rev, line.flip(0), level_rev)):
        tree = _multitree_checked(e, lines, lv, method="native")
        assert torch.equal(tree, _multitree_checked(e, lines, lv, method="python"))
        for arcs in (lines, tree):
            for validate in (True, False):
                native = build_schedule(e, arcs, n, node_level=lv, validate=validate,
                                        method="native")
                ref = build_schedule(e, arcs, n, node_level=lv, validate=validate,
                                     method="torch")
                _check_same_schedule(native, ref)
                assert native.ancestor_pairs == ref.ancestor_pairs
        # levels computed inside the call
        _check_same_schedule(build_schedule(e, lines, n, method="native"),
                             build_schedule(e, lines, n, method="torch"))


@pytest.mark.parametrize("seed", range(4))
def test_native_multitree_large_random(seed):
    rng = random.Random(seed)
    n = rng.randrange(300, 700)
    edge_index = random_dag(n, rng.choice([0.01, 0.03]), seed=seed)
    level = topological_levels(edge_index, n)
    line = line_graph(edge_index, n)
    native = _multitree_checked(edge_index, line, level, method="native")
    assert torch.equal(native, _multitree_checked(edge_index, line, level, method="python"))
    assert native.size(1) < line.size(1)  # dense enough that pruning happens


def _message(fn):
    with pytest.raises(ValueError) as info:
        fn()
    return str(info.value)


@pytest.mark.parametrize("edges, num_nodes", [
    ([(0, 1), (1, 2), (2, 0)], None),                            # a cycle
    ([(5, 0), (0, 1), (1, 2), (2, 3), (3, 1), (3, 4), (6, 5)], None),
    ([(0, 7), (7, 8), (8, 9), (9, 7), (9, 1), (1, 2), (3, 4)], None),
    ([(0, 1), (1, 1)], None),                                    # a self-loop
    ([(0, 1), (1, 5)], 4),                                       # out of range
    ([(0, 1), (-1, 2)], 4),                                      # negative
])
def test_native_level_errors_match_reference(edges, num_nodes):
    edge_index = ei(edges)
    native = _message(lambda: topological_levels(edge_index, num_nodes, method="native"))
    ref = _message(lambda: topological_levels(edge_index, num_nodes, method="torch"))
    assert native == ref


def test_native_schedule_errors_match_reference():
    edge_index = ei([(0, 1), (1, 2), (3, 2)])
    line = ei([(0, 1)])
    level = torch.tensor([0, 1, 2, 0])
    cases = [
        (edge_index, ei([(0, 1), (1, 0)]), level),      # arc whose edges do not meet
        (edge_index, ei([(0, 3)]), level),              # edge id out of range
        (edge_index, line, torch.tensor([0, 1, 1, 0])),  # level does not climb
        (edge_index, line, torch.tensor([0, 1, 2, -1])),  # negative level
        (ei([(0, 1), (1, 1)]), ei([(0, 1)]), torch.tensor([0, 1])),  # self-loop
    ]
    for e, arcs, lv in cases:
        native = _message(lambda: build_schedule(e, arcs, 4 if e.max() > 1 else 2,
                                                 node_level=lv, method="native"))
        ref = _message(lambda: build_schedule(e, arcs, 4 if e.max() > 1 else 2, node_level=lv,
                                              method="torch"))
        assert native == ref


def test_native_schedule_bounds_checked_without_validation():
    # validate=False skips the structural checks, never the bounds
    with pytest.raises(ValueError, match="out of range"):
        build_schedule(ei([(0, 1)]), ei([(0, 4)]), 2, node_level=torch.tensor([0, 1]),
                       validate=False, method="native")
    with pytest.raises(ValueError, match="out of range"):
        build_schedule(ei([(0, 9)]), ei([]), 2, node_level=torch.tensor([0, 1]),
                       validate=False, method="native")


def test_auto_dispatch_uses_native_on_cpu(monkeypatch):
    calls = []
    real = torch.ops.plstm_graph.build_schedule

    class Spy:
        def __call__(self, *args):
            calls.append(1)
            return real(*args)

    monkeypatch.setattr(dag._common, "native_cpu", lambda *t: True)
    edge_index = random_dag(9, 0.4, seed=1)
    line = line_graph(edge_index, 9)
    monkeypatch.setattr(torch.ops.plstm_graph, "build_schedule", Spy())
    build_schedule(edge_index, line, 9)
    assert calls
