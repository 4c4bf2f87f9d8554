"""Scale: deep chains, wide random DAGs, and the schedule construction at 3e5 edges.

The default part is fast (a few seconds); the ``slow`` tests (run with ``pytest --long``) take
the full sizes of the requirement: a 20,000-level chain against a float64 chain oracle, and
random DAGs with 300,000 edges through levels, line graph, multitree, schedule and a float32
forward/backward on every backend.

The pruning is checked against ``multitree_oracle`` (``oracle.py``), the executable
statement of the contract's rule; the fast implementation must give the same arcs.
"""
import contextlib
import inspect
import random
import sys
import time

import pytest
import torch

import plstm_graph
from plstm_graph import dag
from plstm_graph.ops import native

from harness import (BACKENDS, NAMES, butterfly_dag, chain_dag, chain_oracle, multitree_oracle,
                     plstm_oracle, random_dag, uniform_dag, windowed_dag)



# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def shallow_recursion(margin=250):
    """Lower the Python recursion limit to a little above the current depth: anything whose
    recursion grows with the graph fails loudly instead of passing on a generous limit."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack(0)) + margin)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def need_backend(backend):
    cpu = torch.device("cpu")
    if backend == "native" and not native.available(cpu):
        pytest.skip(f"native backend not usable on CPU: {native.unavailable_reason(cpu)}")


def p_mode_transition(raw, line_index, num_edges, alpha=0.5):
    """The contract's P-mode normalisation over the arcs leaving each incoming edge."""
    denom = torch.zeros(num_edges, raw.size(1), dtype=raw.dtype).index_add_(
        0, line_index[0], raw.abs())
    return raw / (alpha + denom[line_index[0]])


def inputs(num_nodes, num_edges, num_arcs, heads=2, kdim=3, vdim=4, seed=0,
           dtype=torch.float64, t_lo=-0.6, t_hi=0.6, random_sign=False):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, lo=-1.0, hi=1.0):
        return torch.rand(*shape, generator=g, dtype=torch.float64) * (hi - lo) + lo

    t = r(num_arcs, heads, lo=t_lo, hi=t_hi)
    if random_sign:
        t = t * (torch.randint(0, 2, t.shape, generator=g) * 2 - 1)
    out = dict(query=r(num_nodes, heads, kdim), key=r(num_nodes, heads, kdim),
               value=r(num_nodes, heads, vdim), source=r(num_edges, heads, lo=0, hi=1),
               transition=t, mark=r(num_edges, heads, lo=0, hi=1),
               direct=r(num_nodes, heads, lo=0, hi=1))
    return {k: v.to(dtype) for k, v in out.items()}


def leaf(d, dtype=None):
    return {k: v.detach().to(dtype or v.dtype).requires_grad_(True) for k, v in d.items()}


def run_package(x, edge_index, line_index, backend, grad_seed=0, **kw):
    """Forward and backward through ``plstm_dag`` with a fixed random upstream gradient."""
    y = plstm_graph.plstm_dag(*(x[n] for n in NAMES), edge_index, line_index, backend=backend,
                              **kw)
    g = torch.Generator().manual_seed(grad_seed)
    w = torch.rand(y.shape, generator=g, dtype=torch.float64).to(y.dtype) - 0.5
    (y * w).sum().backward()
    return y.detach(), {n: x[n].grad for n in NAMES}


def assert_close_all(got, want, rtol, atol):
    y, g = got
    y_ref, g_ref = want
    torch.testing.assert_close(y.double(), y_ref.double(), rtol=rtol, atol=atol)
    for n in NAMES:
        assert g[n] is not None, n
        torch.testing.assert_close(g[n].double(), g_ref[n].double(), rtol=rtol, atol=atol,
                                   msg=lambda m, n=n: f"grad {n}: {m}")


def assert_same_pruning(edge_index, line_index, node_level=None):
    """The fast pruning keeps exactly the oracle's arcs, in input order (of several copies of
    one arc, the first)."""
    got = dag.multitree(edge_index, line_index, node_level)
    assert torch.equal(got, multitree_oracle(edge_index, line_index, node_level))
    return got


def path_counts_ok(num_edges, line_index):
    """True if at most one directed path joins any two line-graph nodes."""
    a = torch.zeros(num_edges, num_edges, dtype=torch.float64)
    a.index_put_((line_index[1], line_index[0]), torch.ones(line_index.size(1),
                                                            dtype=torch.float64),
                 accumulate=True)
    total, power = a.clone(), a.clone()
    for _ in range(num_edges):
        power = power @ a
        if not power.any():
            break
        total += power
    return bool((total <= 1).all())


# ---------------------------------------------------------------------------------------------
# fast: multitree equals the reference
# ---------------------------------------------------------------------------------------------
def _random_cases(count, seed0=0):
    for seed in range(seed0, seed0 + count):
        rng = random.Random(seed)
        n = rng.randint(2, 45)
        edge_index = random_dag(n, rng.choice([0.05, 0.1, 0.25, 0.5, 0.8]), seed=seed,
                                max_span=rng.choice([None, 2, 4, 8]))
        if edge_index.size(1) == 0:
            continue
        if rng.random() < 0.2:  # parallel edges
            edge_index = torch.cat([edge_index, edge_index[:, :rng.randint(1, 4)]], 1)
        if rng.random() < 0.3:
            edge_index = dag.reverse_dag(edge_index)
        yield rng, seed, edge_index


@pytest.mark.parametrize("chunk", range(3))
def test_multitree_equals_reference_full_line_graph(chunk):
    for _, _, edge_index in _random_cases(60, seed0=100 * chunk):
        line_index = dag.line_graph(edge_index)
        got = assert_same_pruning(edge_index, line_index)
        if edge_index.size(1) <= 60:
            assert path_counts_ok(edge_index.size(1), got)


@pytest.mark.parametrize("chunk", range(3))
def test_multitree_equals_reference_partial_shuffled_line_graph(chunk):
    """Arbitrary sub-line-graphs in arbitrary column order, sometimes with repeated arcs:
    the predecessor lists of edges with one tail then differ, so grouping must not merge
    them."""
    for rng, seed, edge_index in _random_cases(60, seed0=1000 + 100 * chunk):
        line_index = dag.line_graph(edge_index)
        if line_index.size(1) == 0:
            continue
        g = torch.Generator().manual_seed(seed)
        keep = torch.rand(line_index.size(1), generator=g) < rng.choice([0.3, 0.7, 0.95])
        line_index = line_index[:, keep]
        if rng.random() < 0.3 and line_index.size(1):
            extra = torch.randint(0, line_index.size(1), (rng.randint(1, 5),), generator=g)
            line_index = torch.cat([line_index, line_index[:, extra]], 1)
        line_index = line_index[:, torch.randperm(line_index.size(1), generator=g)]
        assert_same_pruning(edge_index, line_index)


def test_multitree_repeated_arc_keeps_first_copy():
    edge_index = torch.tensor([[0, 1], [1, 2]])
    line_index = torch.tensor([[0, 0, 0], [1, 1, 1]])
    out = dag.multitree(edge_index, line_index)
    assert out.tolist() == [[0], [1]]


def test_multitree_equals_reference_explicit_non_networkx_leveling():
    """Any leveling that climbs along every edge defines the visiting order, not only the
    topological generations."""
    edge_index = windowed_dag(300, 900, window=20, seed=3)
    base = dag.topological_levels(edge_index, 300)
    g = torch.Generator().manual_seed(0)
    level = torch.zeros_like(base)
    # a valid but different leveling: longest path with random extra gaps
    order = torch.argsort(base)
    for u in order.tolist():
        level[u] += int(torch.randint(0, 3, (1,), generator=g))
        out = edge_index[1, edge_index[0] == u]
        level[out] = torch.maximum(level[out], level[u] + 1)
    dag.check_node_level(edge_index, level, 300)
    line_index = dag.line_graph(edge_index, 300)
    assert_same_pruning(edge_index, line_index, level)


@pytest.mark.parametrize("maker", ["windowed", "uniform", "butterfly", "chain"])
def test_multitree_equals_reference_medium(maker):
    if maker == "windowed":
        edge_index = windowed_dag(2000, 6000, window=50, seed=1)
    elif maker == "uniform":
        edge_index = uniform_dag(2000, 6000, seed=2)
    elif maker == "butterfly":
        edge_index = butterfly_dag(6, shuffle=False)  # 768 edges, root sets up to 128 roots: dense bitsets
    else:
        edge_index = chain_dag(3000, seed=4)[0]
    line_index = dag.line_graph(edge_index)
    assert_same_pruning(edge_index, line_index)
    assert_same_pruning(dag.reverse_dag(edge_index), dag.line_graph(dag.reverse_dag(edge_index)))


def test_multitree_of_multitree_is_identity():
    edge_index = uniform_dag(500, 1500, seed=5)
    once = dag.multitree(edge_index, dag.line_graph(edge_index))
    assert torch.equal(dag.multitree(edge_index, once), once)
    tree = butterfly_dag(5, shuffle=False)
    full = dag.line_graph(tree)
    assert torch.equal(dag.multitree(tree, full), full)


# ---------------------------------------------------------------------------------------------
# fast: levels and line graph
# ---------------------------------------------------------------------------------------------
def _level_cases():
    chain, _ = chain_dag(3000, seed=1)
    star_then_chain = torch.cat([torch.stack([torch.zeros(600, dtype=torch.long),
                                              torch.arange(1, 601)]),
                                 torch.stack([torch.arange(1, 600), torch.arange(2, 601)])], 1)
    # alternating narrow and wide levels (switches between the two kinds of step)
    src, dst, nxt, hub = [], [], 1, 0
    for width in [1, 300, 2, 5, 700, 1, 1, 90, 3]:
        layer = list(range(nxt, nxt + width))
        src += [hub] * width
        dst += layer
        hub = nxt + width
        src += layer
        dst += [hub] * width
        nxt = hub + 1
    hourglass = torch.tensor([src, dst])
    return {"chain": chain, "star_then_chain": star_then_chain, "hourglass": hourglass,
            "windowed": windowed_dag(3000, 9000, window=30, seed=2),
            "uniform": uniform_dag(3000, 9000, seed=3)}


@pytest.mark.parametrize("case", sorted(_level_cases()))
def test_torch_levels_equal_networkx_on_deep_and_wide_graphs(case):
    edge_index = _level_cases()[case]
    n = int(edge_index.max()) + 3
    a = dag.topological_levels(edge_index, n, method="torch")
    b = dag.topological_levels(edge_index, n, method="networkx")
    assert torch.equal(a, b)


def test_torch_levels_cycle_found_after_a_deep_part():
    chain, nodes = chain_dag(2000, seed=5)
    cyclic = torch.cat([chain, torch.tensor([[int(nodes[-1])], [int(nodes[1500])]])], 1)
    with pytest.raises(ValueError, match="cycle"):
        dag.topological_levels(cyclic, method="torch")


def test_line_graph_size_and_schedule_on_20k_edges():
    edge_index = windowed_dag(7000, 20_000, window=100, seed=6)
    n = int(edge_index.max()) + 1
    line_index = dag.line_graph(edge_index, n)
    indeg = torch.bincount(edge_index[1], minlength=n)
    outdeg = torch.bincount(edge_index[0], minlength=n)
    assert line_index.size(1) == int((indeg * outdeg).sum())
    assert bool((edge_index[1, line_index[0]] == edge_index[0, line_index[1]]).all())
    level = dag.topological_levels(edge_index, n, method="torch")
    s = dag.build_schedule(edge_index, line_index, n, node_level=level)
    assert s.num_levels == int(level[edge_index[0]].max()) + 1
    lv = level[edge_index[0]]
    ptr = s.level_ptr.tolist()
    for l in range(s.num_levels):
        assert bool((lv[s.edge_order[ptr[l]:ptr[l + 1]]] == l).all())


# ---------------------------------------------------------------------------------------------
# fast: deep chain against the oracle, moderate random DAG finite
# ---------------------------------------------------------------------------------------------
def test_chain_oracle_equals_oracle():
    """The dedicated chain oracle used at 20k levels agrees with the general oracle."""
    edge_index, nodes = chain_dag(60, seed=2)
    line_index = dag.line_graph(edge_index)
    x = inputs(61, 60, line_index.size(1), seed=2, t_lo=0.5, t_hi=0.99, random_sign=True)
    a = chain_oracle(leaf(x), nodes, edge_index, line_index)
    xb = leaf(x)
    y = plstm_oracle(*(xb[n] for n in NAMES), edge_index, line_index)
    g = torch.Generator().manual_seed(0)
    (y * (torch.rand(y.shape, generator=g, dtype=torch.float64) - 0.5)).sum().backward()
    assert_close_all(a, (y.detach(), {n: xb[n].grad for n in NAMES}), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_chain_2000_levels_equals_oracle(backend):
    need_backend(backend)
    edge_index, nodes = chain_dag(2000, seed=3)
    line_index = dag.multitree(edge_index, dag.line_graph(edge_index))
    assert line_index.size(1) == 1999
    x = inputs(2001, 2000, 1999, seed=3, t_lo=0.5, t_hi=0.99, random_sign=True)
    xb = leaf(x)
    y = plstm_oracle(*(xb[n] for n in NAMES), edge_index, line_index)
    g = torch.Generator().manual_seed(0)
    (y * (torch.rand(y.shape, generator=g, dtype=torch.float64) - 0.5)).sum().backward()
    want = (y.detach(), {n: xb[n].grad for n in NAMES})
    with shallow_recursion():
        got = run_package(leaf(x), edge_index, line_index, backend)
    assert_close_all(got, want, rtol=1e-9, atol=1e-9)
    with shallow_recursion():
        got32 = run_package(leaf(x, torch.float32), edge_index, line_index, backend)
    assert_close_all(got32, want, rtol=2e-3, atol=2e-3)


def _wide_check(edge_index, mode, backend, heads=2, kdim=4, vdim=4):
    n = int(edge_index.max()) + 1
    level = dag.topological_levels(edge_index, n, method="torch")
    line_index = dag.line_graph(edge_index, n)
    if mode == "D":
        line_index = dag.multitree(edge_index, line_index, level)
    x = inputs(n, edge_index.size(1), line_index.size(1), heads, kdim, vdim, seed=7,
               t_lo=-3, t_hi=3)
    x["transition"] = (p_mode_transition(x["transition"], line_index, edge_index.size(1))
                       if mode == "P" else torch.tanh(x["transition"]))
    ref = run_package(leaf(x), edge_index, line_index, "torch", node_level=level)
    with shallow_recursion():
        got = run_package(leaf(x, torch.float32), edge_index, line_index, backend,
                          node_level=level)
    y, grads = got
    assert y.dtype == torch.float32 and bool(torch.isfinite(y).all())
    for name in NAMES:
        assert grads[name].dtype == torch.float32
        assert bool(torch.isfinite(grads[name]).all()), name
    scale = max(1.0, float(ref[0].abs().max()))
    assert_close_all(got, ref, rtol=1e-3, atol=1e-3 * scale)
    return line_index


@pytest.mark.parametrize("mode", ["P", "D"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_random_dag_20k_edges_finite_fwd_bwd(backend, mode):
    need_backend(backend)
    _wide_check(windowed_dag(7000, 20_000, window=200, seed=8), mode, backend)


# ---------------------------------------------------------------------------------------------
# slow: the full sizes
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_chain_20000_levels_equals_chain_oracle(backend):
    need_backend(backend)
    length = 20_000
    edge_index, nodes = chain_dag(length, seed=11)
    with shallow_recursion():
        level = dag.topological_levels(edge_index, method="torch")
        assert torch.equal(level[nodes], torch.arange(length + 1))
        assert torch.equal(dag.topological_levels(edge_index), level)
        line_index = dag.multitree(edge_index, dag.line_graph(edge_index), level)
    assert line_index.size(1) == length - 1
    x = inputs(length + 1, length, length - 1, seed=11, t_lo=0.5, t_hi=0.999,
               random_sign=True)
    want = chain_oracle(leaf(x), nodes, edge_index, line_index)
    with shallow_recursion():
        got = run_package(leaf(x), edge_index, line_index, backend)
        assert_close_all(got, want, rtol=1e-9, atol=1e-9)
        got = run_package(leaf(x), edge_index, line_index, backend, recompute=True)
        assert_close_all(got, want, rtol=1e-9, atol=1e-9)
        got32 = run_package(leaf(x, torch.float32), edge_index, line_index, backend)
    assert_close_all(got32, want, rtol=5e-3, atol=5e-3)


_BIG = {}


def _big(name):
    if name not in _BIG:
        _BIG[name] = (windowed_dag(100_000, 300_000, window=1000, seed=21) if name == "windowed"
                      else uniform_dag(100_000, 300_000, seed=22))
    return _BIG[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["windowed", "uniform"])
def test_300k_edges_schedule_construction(name):
    edge_index = _big(name)
    assert edge_index.size(1) == 300_000
    n = int(edge_index.max()) + 1
    t0 = time.perf_counter()
    level = dag.topological_levels(edge_index, n, method="torch")
    line_index = dag.line_graph(edge_index, n)
    pruned = dag.multitree(edge_index, line_index, level)
    dag.build_schedule(edge_index, pruned, n, node_level=level)
    dag.build_schedule(edge_index, line_index, n, node_level=level)
    elapsed = time.perf_counter() - t0
    assert torch.equal(level, dag.topological_levels(edge_index, n, method="networkx"))
    # an O(E^2) step would take hours here; generous enough for a loaded 2-core machine
    assert elapsed < 120, elapsed
    if name == "windowed":  # the reference takes ~10 s here (~40 s on the uniform DAG)
        want = multitree_oracle(edge_index, line_index, level)
        assert torch.equal(pruned, want)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["P", "D"])
@pytest.mark.parametrize("name", ["windowed", "uniform"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_300k_edges_finite_fwd_bwd(backend, name, mode):
    need_backend(backend)
    _wide_check(_big(name), mode, backend)
