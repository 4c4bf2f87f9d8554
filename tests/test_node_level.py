"""Node-level transitions (docs/contract.md, "Node-level transitions"): ``plstm_dag(..., transition[N, H], line_index=None)``
against the per-arc op on the full line graph and the float64 oracle, and PLSTMConv's use of it.
"""
import pytest
import torch

import plstm_graph
from plstm_graph import PLSTMConv, line_graph
from plstm_graph.dag import build_node_schedule
from plstm_graph.ops import native

from harness import (GRAPHS, NAMES, NODE_IMPLS, TIGHT, TOL, assert_all_close, cotangent_for,
                     disjoint, ei, forbid_line_graphs, grads_of, impl_kwargs, isolated_graph,
                     leaf, plstm_oracle, precision_graph, random_dag, random_inputs,
                     undirected_graph)

needs_native = pytest.mark.skipif("native/scan" not in NODE_IMPLS,
                                  reason="native extension not built")


@pytest.fixture(autouse=True)
def _node_level_on_every_graph(monkeypatch):
    """The layer tests here exercise the node-level path on sparse graphs too, where the layer
    would otherwise pick the per-arc form (see test_layer_picks_node_level_on_dense_graphs)."""
    import plstm_graph.nn.conv as conv_module

    monkeypatch.setattr(conv_module, "NODE_LEVEL_MIN_ARCS_PER_EDGE", -1.0)


def test_layer_picks_node_level_on_dense_graphs(monkeypatch):
    import plstm_graph.nn.conv as conv_module

    monkeypatch.setattr(conv_module, "NODE_LEVEL_MIN_ARCS_PER_EDGE", 2.0)
    conv = PLSTMConv(5, 6, heads=2)
    dense = random_dag(40, 0.5, seed=1)
    assert conv.prepare(dense, 40).line_index is None           # L >> E: no line graph
    sparse = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    assert conv.prepare(sparse, 5).line_index is not None       # a chain: L < 2 E
    assert conv_module.count_arcs(dense, 40) == line_graph(dense, 40).size(1)


def node_case(edge_index, n, seed=0, dtype=torch.float64, heads=2, kdim=3, vdim=4):
    inputs = random_inputs(n, edge_index.size(1), n, heads, kdim, vdim, seed=seed, dtype=dtype)
    if edge_index.size(1):  # a few multi-predecessor nodes with |T| near 1 (long routes matter)
        inputs["transition"] = inputs["transition"] * 1.5
    return inputs


def run_node(inputs, edge_index, g, **kwargs):
    x = leaf(inputs)
    y = plstm_graph.plstm_dag(*(x[n] for n in NAMES), edge_index, None, **kwargs)
    return y.detach(), grads_of(y, x, g)


def run_arcs(inputs, edge_index, g, fn, dtype=None, **kwargs):
    """The per-arc recurrence on the full line graph with ``transition[shared node]``
    gathered per arc; autograd through the gather sums the arc gradients per node."""
    x = leaf(inputs, dtype)
    line = line_graph(edge_index, x["query"].size(0))
    args = [x[n] for n in NAMES]
    args[4] = x["transition"][edge_index[1, line[0]]]
    y = fn(*args, edge_index, line, **kwargs)
    return y.detach(), grads_of(y, x, g.to(y.dtype))


def run_carry_oracle(inputs, carry, edge_index, g):
    """The float64 oracle on the full line graph with ``T_{a->b} = T_n g_b`` (the carry of the
    outgoing edge): the output and the gradients of the seven inputs and the carry (zeros
    where unused; ``None`` when the output does not depend on them)."""
    r = leaf(dict(inputs, carry=carry))
    line = line_graph(edge_index, r["query"].size(0))
    args = [r[k] for k in NAMES]
    args[4] = r["transition"][edge_index[1, line[0]]] * r["carry"][line[1]]
    y = plstm_oracle(*args, edge_index, line)
    if not y.requires_grad:
        return y.detach(), None
    names = NAMES + ("carry",)
    grads = torch.autograd.grad(y, [r[k] for k in names], g, allow_unused=True)
    return y.detach(), [torch.zeros_like(r[k]) if d is None else d for k, d in zip(names, grads)]


def cotangent(inputs):
    return cotangent_for(inputs).to(inputs["query"].dtype)


# ---------------------------------------------------------------------------------------------
# the op against the arc op and the oracle
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", NODE_IMPLS)
@pytest.mark.parametrize("graph", list(GRAPHS))
def test_matches_arc_op_and_oracle(impl, graph):
    edge_index, n = GRAPHS[graph]()
    inputs = node_case(edge_index, n, seed=len(graph))
    before = {k: v.clone() for k, v in inputs.items()}
    g = cotangent(inputs)
    got = run_node(inputs, edge_index, g, **impl_kwargs(impl))
    assert got[0].shape == (n, 2, 4) and got[0].dtype == torch.float64
    if graph not in ("dense60",):  # (the oracle is a Python loop over edges)
        assert_all_close(got, run_arcs(inputs, edge_index, g, plstm_oracle), **TIGHT)
    arcs = run_arcs(inputs, edge_index, g, plstm_graph.plstm_dag, backend="torch",
                    algorithm="scan")
    assert_all_close(got, arcs, **TIGHT)
    for k in inputs:
        assert torch.equal(inputs[k], before[k])


@pytest.mark.parametrize("impl", NODE_IMPLS)
@pytest.mark.parametrize("graph", ["diamond", "random12", "fan", "isolated", "union", "chain",
                                   "edgeless"])
def test_carry_matches_scaled_arc_transitions(impl, graph):
    """carry g_b scales the state carried into edge b: per arc, T_{a->b} = T_n g_b."""
    edge_index, n = GRAPHS[graph]()
    inputs = node_case(edge_index, n, seed=3)
    gen = torch.Generator().manual_seed(11)
    carry = torch.rand(edge_index.size(1), 2, generator=gen, dtype=torch.float64) * 1.5 - 0.25
    g = cotangent(inputs)
    x = leaf(dict(inputs, carry=carry))
    names = NAMES + ("carry",)
    y = plstm_graph.plstm_dag(*(x[k] for k in NAMES), edge_index, None, carry=x["carry"],
                              **impl_kwargs(impl))
    got = [torch.zeros_like(x[k]) if d is None else d for k, d in zip(
        names, torch.autograd.grad(y, [x[k] for k in names], g, allow_unused=True))] \
        if y.requires_grad else None
    y_ref, want = run_carry_oracle(inputs, carry, edge_index, g)
    torch.testing.assert_close(y.detach(), y_ref, **TIGHT)
    if got is None:
        return
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, **TIGHT, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("impl", NODE_IMPLS)
def test_gradcheck_with_carry(impl):
    edge_index, n = random_dag(7, 0.6, seed=3), 7
    inputs = node_case(edge_index, n, seed=7, heads=2, kdim=2, vdim=3)
    carry = torch.rand(edge_index.size(1), 2, dtype=torch.float64)
    xs = tuple(t.clone().requires_grad_(True) for t in [inputs[k] for k in NAMES] + [carry])

    def f(*args):
        return plstm_graph.plstm_dag(*args[:7], edge_index, None, carry=args[7], **impl_kwargs(impl))

    assert torch.autograd.gradcheck(f, xs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("impl", NODE_IMPLS)
def test_edgeless_is_direct_term_only(impl):
    inputs = node_case(ei([]), 4)
    y, _ = run_node(inputs, ei([]), cotangent(inputs), **impl_kwargs(impl))
    q, k, v, d = (inputs[x] for x in ("query", "key", "value", "direct"))
    torch.testing.assert_close(y, d[..., None] * (q * k).sum(-1, keepdim=True) * v, **TIGHT)


@pytest.mark.parametrize("impl", NODE_IMPLS)
def test_isolated_nodes_get_direct_term(impl):
    edge_index, n = isolated_graph()
    inputs = node_case(edge_index, n, seed=2)
    y, _ = run_node(inputs, edge_index, cotangent(inputs), **impl_kwargs(impl))
    iso = [0, 3, 6, 9, 13, 15]
    q, k, v, d = (inputs[x][iso] for x in ("query", "key", "value", "direct"))
    torch.testing.assert_close(y[iso], d[..., None] * (q * k).sum(-1, keepdim=True) * v, **TIGHT)


@pytest.mark.parametrize("impl", NODE_IMPLS)
@pytest.mark.parametrize("heads,kdim,vdim", [(1, 1, 1), (3, 5, 2), (2, 1, 6)])
def test_shapes(impl, heads, kdim, vdim):
    edge_index = random_dag(9, 0.4, seed=heads)
    inputs = node_case(edge_index, 9, seed=1, heads=heads, kdim=kdim, vdim=vdim)
    g = cotangent(inputs)
    assert_all_close(run_node(inputs, edge_index, g, **impl_kwargs(impl)),
                     run_arcs(inputs, edge_index, g, plstm_oracle), **TIGHT)


@pytest.mark.parametrize("impl", NODE_IMPLS)
def test_explicit_levels_and_prebuilt_schedule(impl):
    edge_index = random_dag(20, 0.3, seed=12)
    inputs = node_case(edge_index, 20, seed=12)
    g = cotangent(inputs)
    ref = run_node(inputs, edge_index, g, **impl_kwargs(impl))
    level = plstm_graph.topological_levels(edge_index, 20)
    assert_all_close(ref, run_node(inputs, edge_index, g, node_level=level * 3 + 1, **impl_kwargs(impl)),
                     **TIGHT)
    sched = build_node_schedule(edge_index, 20)
    assert_all_close(ref, run_node(inputs, edge_index, g, schedule=sched, **impl_kwargs(impl)), **TIGHT)


def test_backend_none_is_native_on_cpu_and_matches():
    edge_index = random_dag(15, 0.4, seed=4)
    inputs = node_case(edge_index, 15, seed=4)
    g = cotangent(inputs)
    assert_all_close(run_node(inputs, edge_index, g),
                     run_node(inputs, edge_index, g, backend="torch"), **TIGHT)


# ---------------------------------------------------------------------------------------------
# gradcheck
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", NODE_IMPLS)
@pytest.mark.parametrize("graph", ["diamond", "random", "isolated", "edgeless"])
def test_gradcheck(impl, graph):
    if graph == "diamond":
        edge_index, n = GRAPHS["diamond"]()
    elif graph == "random":
        edge_index, n = random_dag(7, 0.6, seed=3), 7
    elif graph == "isolated":
        edge_index, n = ei([(4, 1), (1, 3), (4, 3)]), 6
    else:
        edge_index, n = ei([]), 3
    inputs = node_case(edge_index, n, seed=7, heads=2, kdim=2, vdim=3)
    xs = tuple(inputs[name].clone().requires_grad_(True) for name in NAMES)

    def f(*args):
        return plstm_graph.plstm_dag(*args, edge_index, None, **impl_kwargs(impl))

    assert torch.autograd.gradcheck(f, xs, eps=1e-6, atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# precision and determinism
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", NODE_IMPLS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2),
                                       (torch.float16, 2e-2)])
def test_low_precision_vs_float64(impl, dtype, tol):
    edge_index, n = precision_graph()
    inputs = node_case(edge_index, n, seed=3, dtype=dtype)
    g = cotangent(inputs)
    y, grads = run_node(inputs, edge_index, g, **impl_kwargs(impl))
    assert y.dtype == dtype and all(d.dtype == dtype for d in grads)
    # the float64 oracle on the same (rounded) inputs
    y_ref, grads_ref = run_arcs(inputs, edge_index, g.double(), plstm_oracle, torch.float64)
    torch.testing.assert_close(y.double(), y_ref, rtol=tol, atol=tol * float(y_ref.abs().max()))
    for name, got, ref in zip(NAMES, grads, grads_ref):
        torch.testing.assert_close(got.double(), ref, rtol=tol,
                                   atol=tol * float(ref.abs().max()) + 1e-6,
                                   msg=lambda m: f"grad of {name}: {m}")
    if dtype != torch.float32:  # float32 states: the result is the float32 one rounded once
        y32, _ = run_node({k: v.float() for k, v in inputs.items()}, edge_index, g.float(),
                          **impl_kwargs(impl))
        err = (y.float() - y32).abs()
        assert bool((err <= y32.abs() * torch.finfo(dtype).eps + torch.finfo(dtype).tiny).all())


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_native_is_deterministic_over_thread_counts(dtype):
    edge_index = random_dag(300, 0.1, seed=9)  # wide levels: the thread pool is used
    inputs = node_case(edge_index, 300, seed=9, dtype=dtype, heads=4, kdim=8, vdim=8)
    g = cotangent(inputs)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_node(inputs, edge_index, g, backend="native")
        torch.set_num_threads(2)
        two = run_node(inputs, edge_index, g, backend="native")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0])
    for a, b in zip(one[1], two[1]):
        assert torch.equal(a, b)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-2, atol=2e-2)
    assert_all_close(one, run_node(inputs, edge_index, g, backend="torch"), **tol)


@needs_native
def test_native_op_registration():
    """Schema, fake kernel and autograd registration of the native op (torch.library.opcheck)."""
    edge_index = random_dag(9, 0.4, seed=2)
    inputs = node_case(edge_index, 9, seed=2)
    s = build_node_schedule(edge_index, 9)
    args = [inputs[n].clone().requires_grad_(True) for n in NAMES]
    op = torch.ops.plstm_graph.node_scan_forward.default
    torch.library.opcheck(op, (*args, None, s.tensors()))
    carry = torch.rand(edge_index.size(1), 2, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(op, (*args, carry, s.tensors()))


@needs_native
def test_torch_compile_traces_the_native_op():
    edge_index = random_dag(10, 0.4, seed=1)
    inputs = node_case(edge_index, 10, seed=1)
    s = build_node_schedule(edge_index, 10)

    def f(*xs):
        return plstm_graph.plstm_dag(*xs, edge_index, None, schedule=s, backend="native",
                                     validate=False)

    xs = [inputs[n].clone().requires_grad_(True) for n in NAMES]
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    y_c = compiled(*xs)
    y_e = f(*xs)
    torch.testing.assert_close(y_c, y_e, **TIGHT)
    g = torch.randn_like(y_e)
    for a, b in zip(torch.autograd.grad(y_c, xs, g), torch.autograd.grad(y_e, xs, g)):
        torch.testing.assert_close(a, b, **TIGHT)
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available() or not native.WITH_CUDA,
                    reason="needs a GPU and the CUDA build of the extension")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_carry", [False, True])
def test_cuda_kernels_match_oracle(dtype, with_carry):
    """The CUDA node-level kernels (backend=None takes them on CUDA) against the float64 oracle
    on the full line graph, over graphs with isolated nodes, fan-in/fan-out and a long chain;
    two identical calls agree bit for bit."""
    parts = [(random_dag(12, 0.4, seed=s), 12) for s in range(6)]
    parts += [GRAPHS[name]() for name in ("fan", "isolated", "chain")]
    edge_index, n = disjoint(parts)
    inputs = node_case(edge_index, n, seed=5, heads=3, kdim=5, vdim=7)
    gen = torch.Generator().manual_seed(5)
    carry = torch.rand(edge_index.size(1), 3, generator=gen, dtype=torch.float64) + 0.25
    g = cotangent(inputs)
    names = NAMES + (("carry",) if with_carry else ())
    y_ref, want = (run_carry_oracle(inputs, carry, edge_index, g) if with_carry else
                   run_arcs(inputs, edge_index, g, plstm_oracle))
    runs = []
    for _ in range(2):
        x = leaf(dict(inputs, carry=carry), dtype=dtype, device="cuda")
        y = plstm_graph.plstm_dag(*(x[k] for k in NAMES), edge_index.cuda(), None,
                                  carry=x["carry"] if with_carry else None)
        runs.append((y, torch.autograd.grad(y, [x[k] for k in names], g.to("cuda", dtype))))
    (y, got), (y2, got2) = runs
    assert torch.equal(y, y2) and all(torch.equal(a, b) for a, b in zip(got, got2))
    tol = TOL[dtype]
    torch.testing.assert_close(y.cpu().double(), y_ref, **tol)
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a.cpu().double(), b, **tol,
                                   msg=lambda m: f"grad of {name}: {m}")


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def _bad_case():
    edge_index = random_dag(8, 0.5, seed=1)
    return node_case(edge_index, 8, seed=1), edge_index


def _call(inputs, edge_index, **kwargs):
    return plstm_graph.plstm_dag(*(inputs[n] for n in NAMES), edge_index, None, **kwargs)


@pytest.mark.parametrize("impl", [None] + NODE_IMPLS)
def test_transition_shape_must_be_per_node(impl):
    inputs, edge_index = _bad_case()
    line = line_graph(edge_index, 8)
    inputs["transition"] = torch.rand(line.size(1), 2, dtype=torch.float64)
    extra = impl_kwargs(impl) if impl else {}
    with pytest.raises(ValueError, match=r"transition must have shape \[N.*line_index"):
        _call(inputs, edge_index, **extra)
    # and the converse: [N, H] with a line_index says how to ask for node-level transitions
    inputs, edge_index = _bad_case()
    if line.size(1) != 8:
        with pytest.raises(ValueError, match="line_index=None"):
            plstm_graph.plstm_dag(*(inputs[n] for n in NAMES), edge_index, line, **extra)


@pytest.mark.parametrize("impl", NODE_IMPLS)
@pytest.mark.parametrize("how", ["cycle", "self_loop", "out_of_range", "negative"])
def test_bad_graph(impl, how):
    inputs, _ = _bad_case()
    edge_index = {"cycle": ei([(0, 1), (1, 2), (2, 0), (3, 4)]),
                  "self_loop": ei([(0, 1), (2, 2)]),
                  "out_of_range": ei([(0, 1), (1, 8)]),
                  "negative": ei([(0, 1), (-1, 2)])}[how]
    inputs = node_case(edge_index, 8, seed=1)
    match = {"cycle": "cycle", "self_loop": "self-loop", "out_of_range": "out of range",
             "negative": "negative"}[how]
    with pytest.raises(ValueError, match=match):
        _call(inputs, edge_index, **impl_kwargs(impl))


@pytest.mark.parametrize("which", ["source", "transition", "mark", "direct"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_gates(which, value):
    inputs, edge_index = _bad_case()
    inputs[which] = inputs[which].clone()
    inputs[which][1, 0] = value
    with pytest.raises(ValueError, match=f"{which}.*NaN or infinite"):
        _call(inputs, edge_index)


def test_dtype_and_device_errors():
    inputs, edge_index = _bad_case()
    bad = dict(inputs, transition=inputs["transition"].float())
    with pytest.raises(TypeError, match="one dtype"):
        _call(bad, edge_index)
    bad = dict(inputs, transition=inputs["transition"].long())
    with pytest.raises(TypeError, match="floating"):
        _call(bad, edge_index)
    with pytest.raises(TypeError, match="edge_index.*long"):
        _call(inputs, edge_index.double())
    bad = dict(inputs, transition=inputs["transition"].to("meta"))
    with pytest.raises(ValueError, match="device"):
        _call(bad, edge_index)


def test_bad_options():
    inputs, edge_index = _bad_case()
    with pytest.raises(ValueError, match="backend"):
        _call(inputs, edge_index, backend="cuda")
    with pytest.raises(ValueError, match="algorithm"):
        _call(inputs, edge_index, algorithm="parallel")
    line = line_graph(edge_index, 8)
    arc_schedule = plstm_graph.dag.build_schedule(edge_index, line, 8)
    with pytest.raises(ValueError, match="NodeSchedule"):
        _call(inputs, edge_index, schedule=arc_schedule)
    other = build_node_schedule(edge_index[:, :-1], 8)
    with pytest.raises(ValueError, match="schedule"):
        _call(inputs, edge_index, schedule=other)
    if "native/scan" in NODE_IMPLS:
        with pytest.raises(RuntimeError, match="closed form"):
            _call(inputs, edge_index, backend="native", algorithm="closed_form")
    # backend=None with the closed form takes the pure-PyTorch one
    torch.testing.assert_close(_call(inputs, edge_index, algorithm="closed_form"),
                               _call(inputs, edge_index, algorithm="scan"), **TIGHT)


def test_bad_carry():
    inputs, edge_index = _bad_case()
    num_edges = edge_index.size(1)
    with pytest.raises(ValueError, match=r"carry must have shape \[E"):
        _call(inputs, edge_index, carry=torch.ones(num_edges, dtype=torch.float64))
    with pytest.raises(TypeError, match="carry has dtype"):
        _call(inputs, edge_index, carry=torch.ones(num_edges, 2))
    bad = torch.ones(num_edges, 2, dtype=torch.float64)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="carry contains NaN"):
        _call(inputs, edge_index, carry=bad)
    line = line_graph(edge_index, 8)
    arc_inputs = dict(inputs, transition=torch.rand(line.size(1), 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="carry is for node-level"):
        plstm_graph.plstm_dag(*(arc_inputs[n] for n in NAMES), edge_index, line,
                              carry=torch.ones(num_edges, 2, dtype=torch.float64))


def test_native_unavailable(monkeypatch):
    monkeypatch.setattr(native, "WITH_NATIVE", False)
    inputs, edge_index = _bad_case()
    with pytest.raises(RuntimeError, match="native"):
        _call(inputs, edge_index, backend="native")
    assert _call(inputs, edge_index).shape == (8, 2, 4)  # backend=None takes the torch path


@needs_native
def test_native_kernel_checks_the_schedule():
    """Called directly, the kernel refuses a schedule whose edges do not climb a level."""
    edge_index = random_dag(6, 0.6, seed=2)
    inputs = node_case(edge_index, 6, seed=2)
    s = build_node_schedule(edge_index, 6)
    index = s.tensors()
    at = {f: i for i, f in enumerate(type(s).FIELDS)}
    floats = [inputs[n] for n in NAMES]
    flat = list(index)
    flat[at["node_level_ptr"]] = torch.tensor([0, 6])  # every node on one level
    flat[at["level_ptr"]] = torch.tensor([0, edge_index.size(1)])
    with pytest.raises(ValueError, match="climb"):
        torch.ops.plstm_graph.node_scan_forward(*floats, None, flat)
    bad = list(index)
    i = at["in_edge"]
    bad[i] = bad[i].flip(0) if bad[i].numel() > 1 else bad[i]
    if not torch.equal(bad[i], index[i]):
        with pytest.raises(ValueError, match="in_edge"):
            torch.ops.plstm_graph.node_scan_forward(*floats, None, bad)
    short = list(index)
    short[0] = short[0][:-1]
    with pytest.raises(ValueError, match="edge_src"):
        torch.ops.plstm_graph.node_scan_forward(*floats, None, short)


# ---------------------------------------------------------------------------------------------
# PLSTMConv
# ---------------------------------------------------------------------------------------------
def _perturbed_conv(seed=0, **kwargs):
    conv = PLSTMConv(5, 6, heads=2, **kwargs).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in conv.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return conv


def _arc_twin(conv):
    twin = PLSTMConv(5, 6, heads=2, normalize_over=conv.normalize_over).double()
    twin.load_state_dict(conv.state_dict())
    twin._arc_transitions = True
    return twin


@pytest.mark.parametrize("normalize_over", ["source", "target"])
@pytest.mark.parametrize("graph", ["random12", "dense60", "fan", "isolated", "chain", "empty"])
@pytest.mark.parametrize("backend", [None, "torch"])
def test_conv_node_path_equals_arc_path(normalize_over, graph, backend):
    edge_index, n = GRAPHS[graph]()
    conv = _perturbed_conv(seed=len(graph), normalize_over=normalize_over, backend=backend)
    assert conv.node_level_transitions()
    twin = _arc_twin(conv)
    assert not twin.node_level_transitions()
    x = torch.randn(n, 5, dtype=torch.float64, requires_grad=True)
    out, ref = conv(x, edge_index), twin(x, edge_index)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    if n == 0:
        return
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x] + list(conv.parameters()), g)
    want = torch.autograd.grad(ref, [x] + list(twin.parameters()), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_conv_node_path_on_undirected_input_and_reversed_flow():

    data = undirected_graph(14, 3)
    for flow in ("source_to_target", "target_to_source"):
        conv = _perturbed_conv(seed=2, flow=flow)
        twin = _arc_twin(conv)
        twin.flow = flow
        torch.testing.assert_close(conv(data.x[:, :5], data.edge_index),
                                   twin(data.x[:, :5], data.edge_index), rtol=1e-10, atol=1e-10)


def test_conv_node_path_builds_no_line_graph(monkeypatch):
    import plstm_graph.nn.conv as conv_module

    forbid_line_graphs(monkeypatch, conv_module)
    edge_index, n = GRAPHS["dense60"]()
    conv = _perturbed_conv()
    prepared = conv.prepare(edge_index, n)
    assert prepared.line_index is None
    assert isinstance(prepared.schedule, plstm_graph.dag.NodeSchedule)
    x = torch.randn(n, 5, dtype=torch.float64)
    conv(x, edge_index).sum()
    # D-mode and edge features keep the line graph
    with pytest.raises(AssertionError, match="line_graph"):
        _perturbed_conv(mode="D").prepare(edge_index, n)
    with pytest.raises(AssertionError, match="line_graph"):
        _perturbed_conv(edge_dim=2).prepare(edge_index, n)


def test_conv_edge_mask_on_node_path_equals_arc_path():
    edge_index, n = GRAPHS["random12"]()
    conv = _perturbed_conv(seed=3)
    twin = _arc_twin(conv)
    x = torch.randn(n, 5, dtype=torch.float64)
    mask = torch.rand(edge_index.size(1), dtype=torch.float64, requires_grad=True)
    out, ref = conv(x, edge_index, edge_mask=mask), twin(x, edge_index, edge_mask=mask)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, mask, g)[0],
                               torch.autograd.grad(ref, mask, g)[0], rtol=1e-9, atol=1e-10)
    assert conv.prepare(edge_index, n).line_index is None


def test_conv_edge_mask_on_node_path_builds_no_line_graph(monkeypatch):
    import plstm_graph.nn.conv as conv_module

    edge_index, n = GRAPHS["dense60"]()
    conv = _perturbed_conv(seed=4)
    twin = _arc_twin(conv)
    x = torch.randn(n, 5, dtype=torch.float64)
    mask = torch.rand(edge_index.size(1), dtype=torch.float64)
    ref = twin(x, edge_index, edge_mask=mask)

    forbid_line_graphs(monkeypatch, conv_module, ("line_graph",))
    torch.testing.assert_close(conv(x, edge_index, edge_mask=mask), ref, rtol=1e-10,
                               atol=1e-10)
