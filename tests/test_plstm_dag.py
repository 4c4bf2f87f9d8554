"""``plstm_graph.plstm_dag``: forward and all seven gradients against the float64 oracle."""
import pytest
import torch

import plstm_graph
from plstm_graph.dag import build_schedule
from harness import (IMPLS, ISOLATED, NAMES, TIGHT, assert_matches_oracle, case, chain,
                     cotangent_for, ei, fan_graph, identical, impl_kwargs, isolated_graph,
                     leaf, lines, precision_graph, random_dag, run, run_oracle, union_parts)

BACKENDS = IMPLS  # "backend/algorithm": every implementation


# ---------------------------------------------------------------------------------------------
# forward + gradients vs the oracle
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["P", "D"])
@pytest.mark.parametrize("n,p,seed", [(1, 0.5, 0), (2, 1.0, 1), (7, 0.5, 2), (12, 0.35, 3),
                                      (31, 0.12, 4), (18, 0.5, 5)])
def test_random_dag_vs_oracle(backend, mode, n, p, seed):
    edge_index = random_dag(n, p, seed=seed)
    inputs, lg = case(edge_index, n, mode, seed=seed)
    if mode == "D" and n >= 12:
        assert lg.size(1) < lines(edge_index, n, "P").size(1)  # pruning did something
    ei_before, lg_before = edge_index.clone(), lg.clone()
    in_before = {k: v.clone() for k, v in inputs.items()}
    assert_matches_oracle(inputs, edge_index, lg, backend)
    assert torch.equal(edge_index, ei_before) and torch.equal(lg, lg_before)
    for k in inputs:
        assert torch.equal(inputs[k], in_before[k])


@pytest.mark.parametrize("heads,kdim,vdim", [(1, 1, 1), (3, 5, 2), (2, 1, 6)])
def test_shapes_vs_oracle(heads, kdim, vdim):
    edge_index = random_dag(9, 0.4, seed=heads)
    inputs, lg = case(edge_index, 9, "P", heads, kdim, vdim, seed=1)
    assert_matches_oracle(inputs, edge_index, lg)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_graph(backend):
    inputs, lg = case(ei([]), 0)
    y, grads = assert_matches_oracle(inputs, ei([]), lg, backend)
    assert y.shape == (0, 2, 4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [1, 5])
def test_edgeless_graph_is_direct_term_only(backend, n):
    inputs, lg = case(ei([]), n)
    y, _ = assert_matches_oracle(inputs, ei([]), lg, backend)
    q, k, v, d = (inputs[x] for x in ("query", "key", "value", "direct"))
    torch.testing.assert_close(y, d[..., None] * (q * k).sum(-1, keepdim=True) * v, **TIGHT)


@pytest.mark.parametrize("mode", ["P", "D"])
def test_isolated_nodes(mode):
    edge_index, n = isolated_graph()  # isolated nodes interleaved (including the last id)
    inputs, lg = case(edge_index, n, mode, seed=2)
    y, _ = assert_matches_oracle(inputs, edge_index, lg)
    iso = ISOLATED
    q, k, v, d = (inputs[x][iso] for x in ("query", "key", "value", "direct"))
    torch.testing.assert_close(y[iso], d[..., None] * (q * k).sum(-1, keepdim=True) * v, **TIGHT)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["P", "D"])
def test_large_fan_in_and_fan_out(backend, mode):
    edge_index, n = fan_graph(12, 13, seed=1)
    inputs, lg = case(edge_index, n, mode, seed=4)
    if mode == "P":
        assert lg.size(1) == 12 * 13
    assert_matches_oracle(inputs, edge_index, lg, backend)


@pytest.mark.parametrize("mode", ["P", "D"])
def test_deep_chain(mode):
    edge_index = chain(64, seed=2, skips=6)
    inputs, lg = case(edge_index, 64, mode, seed=5)
    # transitions near 1 so that the deep signal matters
    inputs["transition"] = torch.rand(inputs["transition"].shape, dtype=torch.float64,
                                      generator=torch.Generator().manual_seed(1)) * 0.1 + 0.9
    levels = plstm_graph.topological_levels(edge_index)
    assert int(levels.max()) == 63
    y, _ = assert_matches_oracle(inputs, edge_index, lg)
    # the last node really receives the first node's contribution
    assert y.abs().max() > 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["P", "D"])
def test_disjoint_union_equals_per_graph(backend, mode):
    graphs = union_parts()
    parts, outs, grads = [], [], []
    node_off = edge_off = 0
    cat = {n: [] for n in NAMES}
    eis, lgs = [], []
    for i, (edge_index, n) in enumerate(graphs):
        inputs, lg = case(edge_index, n, mode, seed=10 + i)
        g = cotangent_for(inputs)
        y, gr = run(inputs, edge_index, lg, g, backend=backend)
        outs.append(y)
        grads.append(gr)
        parts.append(g)
        for name in NAMES:
            cat[name].append(inputs[name])
        eis.append(edge_index + node_off)
        lgs.append(lg + edge_off)
        node_off += n
        edge_off += edge_index.size(1)
    inputs = {name: torch.cat(v) for name, v in cat.items()}
    edge_index, lg = torch.cat(eis, 1), torch.cat(lgs, 1)
    y, gr = run(inputs, edge_index, lg, torch.cat(parts), backend=backend)
    torch.testing.assert_close(y, torch.cat(outs), **TIGHT)
    for j, name in enumerate(NAMES):
        torch.testing.assert_close(gr[j], torch.cat([g[j] for g in grads]), **TIGHT,
                                   msg=lambda m: f"grad of {name}: {m}")
    # and the batch itself matches the oracle
    assert_matches_oracle(inputs, edge_index, lg, backend)


def test_gate_values_outside_unit_interval():
    """The op takes any finite gate values (the modules apply sigmoid / tanh themselves)."""
    edge_index = random_dag(9, 0.5, seed=8)
    inputs, lg = case(edge_index, 9, "P", seed=8)
    g = torch.Generator().manual_seed(0)
    for name in ("source", "transition", "mark", "direct"):
        inputs[name] = torch.randn(inputs[name].shape, generator=g, dtype=torch.float64) * 2
    assert_matches_oracle(inputs, edge_index, lg, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# gradcheck
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("mode", ["P", "D"])
@pytest.mark.parametrize("graph", ["diamond", "random", "edgeless"])
def test_gradcheck(graph, mode, recompute, backend):
    if graph == "diamond":
        edge_index, n = ei([(3, 1), (3, 0), (1, 2), (0, 2), (2, 4), (1, 4)]), 5
    elif graph == "random":
        edge_index, n = random_dag(6, 0.6, seed=3), 6
    else:
        edge_index, n = ei([]), 3
    inputs, lg = case(edge_index, n, mode, heads=2, kdim=2, vdim=3, seed=7)
    xs = tuple(inputs[name].clone().requires_grad_(True) for name in NAMES)

    def f(*args):
        return plstm_graph.plstm_dag(*args, edge_index, lg, recompute=recompute,
                                     **impl_kwargs(backend))

    assert torch.autograd.gradcheck(f, xs, eps=1e-6, atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# precision
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["P", "D"])
def test_float32_vs_oracle(backend, mode):
    edge_index, n = precision_graph()
    inputs, lg = case(edge_index, n, mode, seed=3, dtype=torch.float32)
    g = cotangent_for(inputs)
    y, grads = run(inputs, edge_index, lg, g.float(), backend=backend)
    y_ref, grads_ref = run_oracle(inputs, edge_index, lg, g)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    for name, got, ref in zip(NAMES, grads, grads_ref):
        assert got.dtype == torch.float32, name
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def _within_one_rounding(low, ref32, dtype):
    """``low`` is ``ref32`` rounded once to ``dtype`` (round-to-nearest: half an ulp)."""
    ulp = torch.finfo(dtype).eps  # 2 ** -(mantissa bits)
    err = (low.float() - ref32).abs()
    bound = ref32.abs() * ulp + torch.finfo(dtype).tiny
    assert bool((err <= bound).all()), float((err / (ref32.abs() + 1e-30)).max())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["P", "D"])
def test_half_precision_accumulates_in_float32(backend, dtype, mode):
    edge_index, n = precision_graph()
    inputs, lg = case(edge_index, n, mode, seed=4, dtype=dtype)
    g = cotangent_for(inputs).to(dtype)
    y, grads = run(inputs, edge_index, lg, g, backend=backend)
    assert y.dtype == dtype
    for name, gr in zip(NAMES, grads):
        assert gr.dtype == dtype, name
    # the same (already rounded) values in float32: the low-precision result may differ by
    # the final rounding only, which it would not if states were accumulated in low precision
    inputs32 = {k: v.float() for k, v in inputs.items()}
    y32, grads32 = run(inputs32, edge_index, lg, g.float(), backend=backend)
    _within_one_rounding(y, y32, dtype)
    for gr, gr32 in zip(grads, grads32):
        _within_one_rounding(gr, gr32, dtype)
    # and against the float64 oracle on the rounded inputs
    y_ref, grads_ref = run_oracle(inputs, edge_index, lg, g.double())
    tol = dict(rtol=2e-2, atol=2e-2 * float(y_ref.abs().max()))
    torch.testing.assert_close(y.double(), y_ref, **tol)
    for name, got, ref in zip(NAMES, grads, grads_ref):
        torch.testing.assert_close(got.double(), ref, rtol=2e-2,
                                   atol=2e-2 * float(ref.abs().max()) + 1e-6)


# ---------------------------------------------------------------------------------------------
# options: recompute, node_level, schedule, backend=None, determinism
# ---------------------------------------------------------------------------------------------
def _opt_case(mode="P", dtype=torch.float64):
    edge_index = random_dag(20, 0.3, seed=12)
    inputs, lg = case(edge_index, 20, mode, seed=12, dtype=dtype)
    return inputs, edge_index, lg


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["P", "D"])
def test_recompute_identical(backend, dtype, mode):
    inputs, edge_index, lg = _opt_case(mode, dtype)
    identical(run(inputs, edge_index, lg, backend=backend),
                      run(inputs, edge_index, lg, backend=backend, recompute=True))


@pytest.mark.parametrize("mode", ["P", "D"])
def test_explicit_node_level(mode):
    inputs, edge_index, lg = _opt_case(mode)
    ref = run(inputs, edge_index, lg)
    level = plstm_graph.topological_levels(edge_index, 20)
    identical(ref, run(inputs, edge_index, lg, node_level=level))
    # any valid leveling (gaps, non-generation levels) gives the same numbers
    stretched = level * 3 + 1
    y, grads = run(inputs, edge_index, lg, node_level=stretched)
    torch.testing.assert_close(y, ref[0], **TIGHT)
    for a, b in zip(grads, ref[1]):
        torch.testing.assert_close(a, b, **TIGHT)
    # levels counted from the sinks (as late as possible)
    rev = plstm_graph.topological_levels(plstm_graph.reverse_dag(edge_index), 20)
    late = int(rev.max()) - rev
    y, grads = run(inputs, edge_index, lg, node_level=late)
    torch.testing.assert_close(y, ref[0], **TIGHT)
    for a, b in zip(grads, ref[1]):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("mode", ["P", "D"])
def test_prebuilt_schedule(mode):
    inputs, edge_index, lg = _opt_case(mode)
    ref = run(inputs, edge_index, lg)
    sched = build_schedule(edge_index, lg, num_nodes=20)
    identical(ref, run(inputs, edge_index, lg, schedule=sched))
    # reusable: a second call with the same schedule gives the same again
    identical(ref, run(inputs, edge_index, lg, schedule=sched, recompute=True))
    # a schedule for another graph is refused
    other = build_schedule(edge_index[:, :-1], lg[:, (lg != edge_index.size(1) - 1).all(0)],
                           num_nodes=20)
    with pytest.raises(ValueError, match="schedule"):
        run(inputs, edge_index, lg, schedule=other)


def test_backend_none():
    inputs, edge_index, lg = _opt_case()
    y, grads = run(inputs, edge_index, lg, backend=None)
    y_ref, grads_ref = run(inputs, edge_index, lg, backend=BACKENDS[-1])
    torch.testing.assert_close(y, y_ref, **TIGHT)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, **TIGHT)
    # and without any keyword at all
    x = leaf(inputs)
    y2 = plstm_graph.plstm_dag(*(x[n] for n in NAMES), edge_index, lg)
    torch.testing.assert_close(y2.detach(), y_ref, **TIGHT)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_deterministic(backend, dtype):
    edge_index, n = precision_graph()
    inputs, lg = case(edge_index, n, "P", seed=9, dtype=dtype)
    identical(run(inputs, edge_index, lg, backend=backend),
                      run(inputs, edge_index, lg, backend=backend))


def test_unused_output_part_gives_zero_grads():
    """Gradient of only part of the output: nodes outside the cone get exactly zero."""
    edge_index = ei([(0, 1), (1, 2), (3, 4)])
    inputs, lg = case(edge_index, 5, "P", seed=1)
    g = torch.zeros(5, 2, 4, dtype=torch.float64)
    g[2] = 1.0
    _, grads = run(inputs, edge_index, lg, g)
    gq, gk, gv, gs, gt, gm, gd = grads
    assert bool((gk[3:] == 0).all()) and bool((gv[3:] == 0).all())
    assert bool((gs[2] == 0).all()) and bool((gm[[0, 2]] == 0).all())
    assert bool((gq[[0, 1, 3, 4]] == 0).all()) and bool((gd[[0, 1, 3, 4]] == 0).all())
    assert bool((gk[:3] != 0).any())
    _, grads_ref = run_oracle(inputs, edge_index, lg, g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, **TIGHT)
