"""The native ops (``plstm_graph._C``): against the torch backend and the float64 oracle, on
every graph shape we care about, plus the op-level contract (opcheck, torch.compile,
determinism, index checks)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import plstm_graph
from harness import (DEVICES, NAMES, TOL, assert_close, chain, cotangent_for, disjoint,
                     lines, random_dag, random_inputs, run, run_oracle)
from plstm_graph.dag import DagSchedule, build_schedule
from plstm_graph.ops import native
from plstm_graph.ops.dispatch import CLOSED_FORM_MAX_NODES, resolve_backend
from plstm_graph.ops.scan_torch import scan_torch

if not plstm_graph.WITH_NATIVE:
    pytest.skip(f"native ops not built: {native.unavailable_reason('cpu')}",
                allow_module_level=True)

OPS = torch.ops.plstm_graph
SCAN = NAMES[:6]
ALGORITHMS = ["scan", "closed_form"]


# ---------------------------------------------------------------------------------------------
# helpers (graphs, inputs, runners and tolerances are in harness.py)
# ---------------------------------------------------------------------------------------------
def make(num_nodes, ei, li, dtype=torch.float64, heads=2, kdim=3, vdim=4, seed=0,
         device="cpu"):
    x = random_inputs(num_nodes, ei.size(1), li.size(1), heads=heads, kdim=kdim, vdim=vdim,
                      seed=seed, dtype=torch.float64)
    return {k: v.to(device=device, dtype=dtype).requires_grad_() for k, v in x.items()}


def native_algorithms(num_nodes, ei, li, device):
    """The native algorithms that can run this graph: the scan always, the closed form on the
    CPU when no component is too large for it."""
    algorithms = ["scan"]
    s = build_schedule(ei.cpu(), li.cpu(), num_nodes)
    if device == "cpu" and s.max_component_nodes <= CLOSED_FORM_MAX_NODES:
        algorithms.append("closed_form")
    return algorithms


def check_all(num_nodes, ei, li, dtype=torch.float64, device="cpu", with_oracle=True, **kw):
    """Both native algorithms against the torch backend and (optionally) the float64 oracle."""
    ei, li = ei.to(device), li.to(device)
    x = make(num_nodes, ei, li, dtype=dtype, device=device, **kw)
    grad_out = cotangent_for(x).to(device=device, dtype=dtype)
    y_t, g_t = run(x, ei, li, grad_out, backend="torch")
    if with_oracle:
        y_o, g_o = run_oracle(x, ei, li, grad_out)
    for algorithm in native_algorithms(num_nodes, ei, li, device):
        y_n, g_n = run(x, ei, li, grad_out, backend="native/" + algorithm)
        assert y_n.dtype == dtype and y_n.device.type == device
        assert_close(y_n, y_t, dtype, f"{algorithm}: out vs torch")
        for name, a, b in zip(NAMES, g_n, g_t):
            assert_close(a, b, dtype, f"{algorithm}: d{name} vs torch")
        if with_oracle:
            assert_close(y_n, y_o, dtype, f"{algorithm}: out vs oracle")
            for name, a, b in zip(NAMES, g_n, g_o):
                assert_close(a, b, dtype, f"{algorithm}: d{name} vs oracle")


def op_args(x, s, keep=True):
    """The scan op's arguments: the seven inputs, the schedule list, keep_states."""
    return [x[k] for k in NAMES] + [s.tensors(), keep]


def bwd_args(grad_out, args, states):
    """The backward op's arguments for the forward op's `args`."""
    return [grad_out] + args[:7] + [states, args[7]]


def cf_args(x, s):
    return [x[k] for k in NAMES] + [s.tensors()]


# ---------------------------------------------------------------------------------------------
# numerics
# ---------------------------------------------------------------------------------------------
def test_native_is_default_backend():
    assert native.available("cpu")
    assert resolve_backend(None, torch.device("cpu")) == "native"
    assert "available" in native.unavailable_reason("cpu")
    assert native.available("cuda") == native.WITH_CUDA
    assert isinstance(plstm_graph.WITH_CUDA, bool)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["P", "D"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_dag_matches_torch_and_oracle(device, dtype, mode, seed):
    n = 12 + 3 * seed
    ei = random_dag(n, edge_prob=0.35, seed=seed)  # shuffled node ids and edge order
    check_all(n, ei, lines(ei, n, mode), dtype=dtype, device=device, seed=seed)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["P", "D"])
def test_batch_of_graphs(device, mode):
    graphs = [(random_dag(9, 0.4, seed=s), 9) for s in range(40)]
    ei, n = disjoint(graphs)
    check_all(n, ei, lines(ei, n, mode), device=device, with_oracle=False, heads=3, kdim=5,
              vdim=6)
    small, m = disjoint(graphs[:4])
    check_all(m, small, lines(small, m, mode), device=device)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_graph(device):
    ei = torch.empty(2, 0, dtype=torch.long)
    check_all(0, ei, ei.clone(), device=device)


@pytest.mark.parametrize("device", DEVICES)
def test_edgeless_graph_and_isolated_nodes(device):
    ei = torch.empty(2, 0, dtype=torch.long)
    check_all(5, ei, ei.clone(), device=device)
    ei = torch.tensor([[0, 2, 2], [2, 5, 6]])  # nodes 1, 3, 4, 7 isolated
    check_all(8, ei, plstm_graph.line_graph(ei, 8), device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["P", "D"])
def test_wide_fan_in_and_fan_out(device, mode):
    # 12 sources -> hub -> 14 sinks, plus a second hub fed by the first one's sinks
    src = list(range(12)) + [12] * 14 + list(range(13, 27))
    dst = [12] * 12 + list(range(13, 27)) + [27] * 14
    ei = torch.tensor([src, dst])
    perm = torch.randperm(ei.size(1))
    ei = ei[:, perm]
    check_all(28, ei, lines(ei, 28, mode), device=device, heads=1)


@pytest.mark.parametrize("device", DEVICES)
def test_deep_chain(device):
    n = 80
    ei = chain(n, shuffle=False)
    check_all(n, ei, plstm_graph.line_graph(ei, n), device=device, with_oracle=True)
    # long chain with skip connections: depth > 50 and more than one in-arc per edge
    skip = torch.stack([torch.arange(0, n - 2, 3), torch.arange(2, n, 3)])
    ei2 = torch.cat([ei, skip], 1)
    check_all(n, ei2, plstm_graph.line_graph(ei2, n), device=device, with_oracle=False)


@pytest.mark.parametrize("device", DEVICES)
def test_one_large_component(device):
    # one big connected DAG (the by-level plan) next to small graphs
    big = random_dag(200, edge_prob=0.03, seed=5)
    ei, n = disjoint([(big, 200)] + [(random_dag(6, 0.5, seed=s), 6) for s in range(5)])
    check_all(n, ei, plstm_graph.line_graph(ei, n), device=device, with_oracle=False,
              heads=2, kdim=8, vdim=8)


def test_wider_heads_and_odd_widths():
    ei = random_dag(15, 0.3, seed=7)
    check_all(15, ei, plstm_graph.line_graph(ei, 15), heads=4, kdim=19, vdim=33)
    check_all(15, ei, plstm_graph.line_graph(ei, 15), dtype=torch.float32, heads=3, kdim=24,
              vdim=24)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_recompute(device, dtype):
    graphs = [(random_dag(10, 0.35, seed=s), 10) for s in range(12)]
    for ei, n in (disjoint(graphs), (random_dag(40, 0.1, seed=3), 40)):
        li = plstm_graph.line_graph(ei, n).to(device)
        ei = ei.to(device)
        x = make(n, ei, li, dtype=dtype, device=device)
        g = torch.randn(n, 2, 4, dtype=dtype, device=device)
        y0, g0 = run(x, ei, li, g, backend="native", algorithm="scan")
        y1, g1 = run(x, ei, li, g, backend="native", recompute=True, algorithm="scan")
        yt, gt = run(x, ei, li, g, backend="torch", recompute=True)
        assert torch.equal(y0, y1)
        for a, b, c in zip(g0, g1, gt):
            assert torch.equal(a, b)  # same arithmetic, same order
            assert_close(a, c, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_non_contiguous_inputs(device, algorithm):
    if algorithm == "closed_form" and device != "cpu":
        pytest.skip("the closed form has CPU kernels only")
    n = 14
    ei = random_dag(n, 0.3, seed=4)
    li = plstm_graph.line_graph(ei, n)
    E, L, H, K, V = ei.size(1), li.size(1), 2, 3, 4
    base = make(n, ei, li, device=device)
    # the same values behind transposed / strided views
    q = base["query"].detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    k = base["key"].detach().permute(2, 0, 1).contiguous().permute(1, 2, 0).requires_grad_()
    v = torch.zeros(n, H, 2 * V, dtype=torch.float64, device=device)
    v[:, :, ::2] = base["value"].detach()
    v = v[:, :, ::2].requires_grad_()
    s = base["source"].detach().t().contiguous().t().requires_grad_()
    t = base["transition"].detach().t().contiguous().t().requires_grad_()
    m = torch.stack([base["mark"].detach()] * 2, -1)[..., 0].requires_grad_()
    assert not q.is_contiguous() and not k.is_contiguous() and not v.is_contiguous()
    assert E == 0 or not s.is_contiguous()
    x = dict(query=q, key=k, value=v, source=s, transition=t, mark=m,
             direct=base["direct"].detach().requires_grad_())
    g = torch.randn(V, n, H, dtype=torch.float64, device=device).permute(1, 2, 0)
    assert not g.is_contiguous()
    y1, g1 = run(x, ei.to(device), li.to(device), g, backend="native", algorithm=algorithm)
    y2, g2 = run(base, ei.to(device), li.to(device), g, backend="native", algorithm=algorithm)
    assert torch.equal(y1, y2)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)
    # non-contiguous index tensors straight into the op
    sched = build_schedule(ei, li, n)
    args = op_args({k_: base[k_].detach() for k_ in NAMES}, sched)
    args[7] = [t if f.endswith("level_ptr") else torch.stack([t, t], 1)[:, 0].to(device)
               for f, t in zip(DagSchedule.FIELDS, args[7])]
    assert not args[7][0].is_contiguous() or args[7][0].numel() <= 1
    out, _ = OPS.scan_forward(*args)
    assert_close(out, scan_torch(*[base[k_].detach() for k_ in NAMES], sched), torch.float64)
    if algorithm == "closed_form":
        cargs = args[:8]
        assert_close(OPS.closed_form_forward(*cargs), out, torch.float64)


def test_bfloat16_directly_into_the_op():
    """bf16 inputs go into the kernels as they are and accumulate in float32."""
    n = 20
    ei = random_dag(n, 0.3, seed=9)
    li = plstm_graph.line_graph(ei, n)
    s = build_schedule(ei, li, n)
    x = make(n, ei, li, dtype=torch.float32)
    xb = {k: v.detach().bfloat16() for k, v in x.items()}
    out_b, states_b = OPS.scan_forward(*op_args(xb, s))
    assert out_b.dtype == torch.bfloat16 and states_b.dtype == torch.float32
    ref, ref_states = OPS.scan_forward(*op_args({k: v.float() for k, v in xb.items()}, s))
    assert torch.equal(states_b, ref_states)  # same float32 arithmetic on the same values
    torch.testing.assert_close(out_b.float(), ref, atol=1e-2, rtol=1e-2)
    gy = torch.randn_like(ref)
    gb = OPS.scan_backward(*bwd_args(gy.bfloat16(), op_args(xb, s), states_b))
    gf = OPS.scan_backward(*bwd_args(gy.bfloat16().float(),
                                     op_args({k: v.float() for k, v in xb.items()}, s),
                                     ref_states))
    for a, b in zip(gb, gf):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b, atol=2e-2, rtol=2e-2)
    # half precision as well
    out_h, _ = OPS.scan_forward(*op_args({k: v.half() for k, v in xb.items()}, s))
    torch.testing.assert_close(out_h.float(), ref, atol=1e-2, rtol=1e-2)


# ---------------------------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------------------------
def _fwd_bwd(x, ei, li, s, recompute=False, algorithm=None):
    y = plstm_graph.plstm_dag(*(x[k] for k in NAMES), ei, li, schedule=s, backend="native",
                              recompute=recompute, algorithm=algorithm)
    g = torch.autograd.grad(y, [x[k] for k in NAMES], torch.ones_like(y))
    return [y.detach()] + list(g)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", ["batch", "big"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bitwise_deterministic(device, shape, algorithm):
    if algorithm == "closed_form" and device != "cpu":
        pytest.skip("the closed form has CPU kernels only")
    if shape == "batch":
        ei, n = disjoint([(random_dag(17, 0.2, seed=s), 17) for s in range(64)])
    else:
        ei, n = random_dag(300, 0.02, seed=1), 300
    li = plstm_graph.line_graph(ei, n)
    s = build_schedule(ei.to(device), li.to(device), n)
    x = make(n, ei, li, dtype=torch.float32, heads=4, kdim=16, vdim=16, device=device)
    ei, li = ei.to(device), li.to(device)
    first = _fwd_bwd(x, ei, li, s, algorithm=algorithm)
    for _ in range(2):
        again = _fwd_bwd(x, ei, li, s, algorithm=algorithm)
        for a, b in zip(first, again):
            assert torch.equal(a, b)
    # the thread count does not change a single bit either
    if device == "cpu":
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            single = _fwd_bwd(x, ei, li, s, algorithm=algorithm)
        finally:
            torch.set_num_threads(threads)
        for a, b in zip(first, single):
            assert torch.equal(a, b)


_ISA_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    import plstm_graph
    from harness import random_dag, random_inputs
    graphs = [random_dag(12, 0.3, seed=s) + 12 * s for s in range(8)]
    ei = torch.cat(graphs, 1)
    li = plstm_graph.line_graph(ei, 96)
    res = []
    for dtype in (torch.float32, torch.float64):
        x = random_inputs(96, ei.size(1), li.size(1), heads=2, kdim=8, vdim=12, seed=1,
                          dtype=dtype, requires_grad=True)
        names = ("query", "key", "value", "source", "transition", "mark", "direct")
        for algorithm in ("scan", "closed_form"):
            y = plstm_graph.plstm_dag(*(x[k] for k in names), ei, li, backend="native",
                                      algorithm=algorithm)
            res += [y.detach()] + list(torch.autograd.grad(y.sum(), [x[k] for k in names]))
        # node-level transitions (one per node), with and without a carry
        xn = random_inputs(96, ei.size(1), 96, heads=2, kdim=8, vdim=12, seed=2, dtype=dtype,
                           requires_grad=True)
        g = torch.Generator().manual_seed(3)  # the same carry in both processes
        carry = torch.rand(ei.size(1), 2, generator=g, dtype=dtype).requires_grad_()
        for c in (None, carry):
            y = plstm_graph.plstm_dag(*(xn[k] for k in names), ei, None, backend="native",
                                      algorithm="scan", carry=c)
            wrt = [xn[k] for k in names] + ([c] if c is not None else [])
            res += [y.detach()] + list(torch.autograd.grad(y.sum(), wrt))
    torch.save(res, sys.argv[1])
""")


def test_cpu_isa_variants_agree(tmp_path):
    """The baseline and the AVX2 kernels (PLSTM_GRAPH_CPU_ISA=base forces the former) agree:
    the arc scan, the closed form and the node-level scan."""
    script = tmp_path / "isa.py"
    script.write_text(_ISA_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__))))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results = []
    for isa in ("base", "auto"):
        env = dict(os.environ, PLSTM_GRAPH_CPU_ISA=isa,
                   PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        out = tmp_path / f"{isa}.pt"
        subprocess.run([sys.executable, str(script), str(out)], env=env, check=True,
                       cwd=root, timeout=300)
        results.append(torch.load(out))
    for a, b in zip(*results):
        tol = TOL[a.dtype]
        torch.testing.assert_close(a, b, **tol)


# ---------------------------------------------------------------------------------------------
# the op contract: opcheck, torch.compile, bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_opcheck(keep, dtype):
    n = 9
    ei = random_dag(n, 0.4, seed=2)
    li = plstm_graph.line_graph(ei, n)
    s = build_schedule(ei, li, n)
    x = make(n, ei, li, dtype=dtype)
    args = op_args(x, s, keep)
    torch.library.opcheck(OPS.scan_forward.default, tuple(args))
    out, states = OPS.scan_forward(*op_args({k: v.detach() for k, v in x.items()}, s, True))
    bargs = bwd_args(torch.randn_like(out), [x[k].detach() for k in NAMES] + args[7:],
                     states if keep else None)
    torch.library.opcheck(OPS.scan_backward.default, tuple(bargs))


@pytest.mark.parametrize("keep", [True, False])
def test_scan_op_is_differentiable_by_itself(keep):
    """The scan's autograd is wired in C++: the raw op differentiates (gradcheck) with or
    without kept states, and the states output carries no gradient."""
    n = 11
    ei = random_dag(n, 0.35, seed=2)
    li = plstm_graph.line_graph(ei, n)
    s = build_schedule(ei, li, n)
    x = make(n, ei, li, heads=2, kdim=2, vdim=3)
    a = [x[k] for k in NAMES]
    index = s.tensors()
    assert torch.autograd.gradcheck(lambda *t: OPS.scan_forward(*t, index, keep)[0], a)
    out, states = OPS.scan_forward(*a, index, keep)
    assert out.requires_grad and "Scan" in out.grad_fn.name()
    assert not states.requires_grad
    assert states.shape[0] == (ei.size(1) if keep else 0)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_torch_compile_fullgraph(algorithm):
    n = 16
    ei, n = disjoint([(random_dag(8, 0.4, seed=s), 8) for s in range(3)])
    li = plstm_graph.line_graph(ei, n)
    sched = build_schedule(ei, li, n)  # prebuilt outside the compiled function
    x = make(n, ei, li, dtype=torch.float32)

    def f(q, k, v, s_, t, m, d):
        y = plstm_graph.plstm_dag(q, k, v, s_, t, m, d, ei, li, schedule=sched,
                                  backend="native", algorithm=algorithm, validate=False)
        return (y * y).sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    args = [x[k] for k in NAMES]
    loss_c = compiled(*args)
    g_c = torch.autograd.grad(loss_c, args)
    loss_e = f(*args)
    g_e = torch.autograd.grad(loss_e, args)
    torch.testing.assert_close(loss_c, loss_e)
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b)
    torch._dynamo.reset()



@pytest.mark.parametrize("mode", ["P", "D"])
def test_torch_compile_fullgraph_plstmconv(mode):
    """The whole layer traces without graph breaks when handed a prebuilt schedule (the
    data-dependent checks are skipped while compiling; the eager call ran them)."""
    from plstm_graph.transforms import DAGPlan

    n = 24
    ei, n = disjoint([(random_dag(8, 0.4, seed=s), 8) for s in range(3)])
    plan = DAGPlan.from_graph(ei, n, edge_attr=torch.randn(ei.size(1), 3), orient="none")
    view = plan.view(mode)
    conv = plstm_graph.PLSTMConv(6, 8, heads=2, mode=mode, edge_dim=3, backend="native")
    with torch.no_grad():
        for p in conv.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(n, 6, requires_grad=True)

    def f(x):
        return conv(x, **view).pow(2).sum()

    loss_e = f(x)
    g_e = torch.autograd.grad(loss_e, [x] + list(conv.parameters()))
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss_c = compiled(x)
    g_c = torch.autograd.grad(loss_c, [x] + list(conv.parameters()))
    torch.testing.assert_close(loss_c, loss_e)
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b)
    torch._dynamo.reset()

def _good_args(n=10, seed=3):
    ei = random_dag(n, 0.4, seed=seed)
    li = plstm_graph.line_graph(ei, n)
    s = build_schedule(ei, li, n)
    x = make(n, ei, li, dtype=torch.float32)
    return op_args({k: v.detach() for k, v in x.items()}, s), s


FIELD = {f: i for i, f in enumerate(DagSchedule.FIELDS)}  # position in the schedule list


def _replace(args, field, value):
    args = list(args)
    args[7] = list(args[7])
    args[7][FIELD[field]] = value
    return args


def _corrupt(field, fn):
    args, s = _good_args()
    return _replace(args, field, fn(args[7][FIELD[field]].clone(), s))


def _set(pos, value):
    def fn(t, s):
        t[pos] = value
        return t
    return fn


# Out-of-range values and bad level pointers: every kernel refuses them before it reads an
# index (the range checks of csrc/checks.h).
BAD = {
    "edge_src_high": ("edge_src", _set(0, 10_000)),
    "edge_src_negative": ("edge_src", _set(1, -1)),
    "edge_dst_high": ("edge_dst", _set(-1, 10)),
    "arc_src_high": ("arc_src", _set(0, 999)),
    "arc_dst_negative": ("arc_dst", _set(0, -5)),
    "edge_order_high": ("edge_order", _set(0, 123456)),
    "level_ptr_end": ("level_ptr", _set(-1, 99)),
    "level_ptr_decreasing": ("level_ptr", lambda t, s: t.flip(0)),
    "in_ptr_high": ("in_ptr", _set(-1, 10_000)),
    "in_ptr_negative": ("in_ptr", _set(1, -3)),
    "in_arc_high": ("in_arc", _set(0, 77777)),
    "node_ptr_high": ("node_ptr", _set(-1, 10_000)),
    "node_edge_high": ("node_edge", _set(0, 10_000)),
    "node_edge_negative": ("node_edge", _set(0, -1)),
    "src_edge_high": ("src_edge", _set(0, 10_000)),
    "comp_edge_ptr_high": ("comp_edge_ptr", _set(-1, 10_000)),
    "comp_node_negative": ("comp_node", _set(0, -1)),
    "node_pos_high": ("node_pos", _set(0, 10_000)),
    "edge_pos_negative": ("edge_pos", _set(-1, -2)),
}
# Values in range that break the structure: a schedule is consistent by construction when
# build_schedule made it (from a checked graph); DagSchedule.check() finds these in one from
# elsewhere, and the kernels, which trust the structure, still stay in bounds.
BAD_STRUCTURE = {
    "edge_order_duplicate": ("edge_order", lambda t, s: torch.cat([t[:1], t[:1], t[2:]])),
    "in_arc_wrong_edge": ("in_arc", lambda t, s: t.roll(1)),
    "arc_does_not_climb": ("arc_src", lambda t, s: s.arc_dst.clone()),  # a -> a: a cycle
    "out_arc_wrong_edge": ("out_arc", lambda t, s: t.flip(0)),
    "src_edge_wrong_node": ("src_edge", lambda t, s: t.roll(1)),
    "comp_edge_twice": ("comp_edge", lambda t, s: torch.cat([t[:1], t[:-1]])),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_indices_raise(case):
    field, fn = BAD[case]
    args = _corrupt(field, fn)
    with pytest.raises(ValueError):
        OPS.scan_forward(*args)


@pytest.mark.parametrize("case", sorted(BAD_STRUCTURE))
def test_bad_structure_is_found_by_check(case):
    field, fn = BAD_STRUCTURE[case]
    args, s = _good_args()
    s.check()  # a built schedule passes
    bad = DagSchedule(s.num_nodes, *_corrupt(field, fn)[7])
    with pytest.raises(ValueError):
        bad.check()
    OPS.scan_forward(*_replace(args, field, getattr(bad, field)))  # no crash, in bounds


@pytest.mark.parametrize("case", ["out_ptr_high", "out_arc_high", "edge_src_high"])
def test_bad_indices_raise_in_backward(case):
    args, s = _good_args()
    out, states = OPS.scan_forward(*args)
    if case == "out_ptr_high":
        args = _replace(args, "out_ptr", s.out_ptr.clone().fill_(10_000))
    elif case == "out_arc_high":
        args = _replace(args, "out_arc", s.out_arc.clone().fill_(10_000))
    else:
        args = _replace(args, "edge_src", s.edge_src.clone().fill_(10_000))
    with pytest.raises(ValueError):
        OPS.scan_backward(*bwd_args(torch.ones_like(out), args, states))


def test_bad_arguments_raise():
    args, s = _good_args()
    with pytest.raises(TypeError):
        OPS.scan_forward(*_replace(args, "edge_src", args[7][FIELD["edge_src"]].int()))
    bad = list(args)
    bad[0] = args[0].double()
    with pytest.raises(TypeError):
        OPS.scan_forward(*bad)
    bad = list(args)
    bad[0] = args[0].long()
    with pytest.raises(TypeError):
        OPS.scan_forward(*bad)
    bad = list(args)
    bad[3] = args[3][:-1]  # source with one edge too few
    with pytest.raises(ValueError):
        OPS.scan_forward(*bad)
    bad = list(args)
    bad[2] = args[2][:, :1]  # value with a wrong head count
    with pytest.raises(ValueError):
        OPS.scan_forward(*bad)
    bad = list(args)
    bad[6] = args[6][:-1]  # direct with one node too few
    with pytest.raises(ValueError, match="direct"):
        OPS.scan_forward(*bad)
    with pytest.raises(ValueError):
        OPS.scan_forward(*_replace(args, "in_ptr", args[7][FIELD["in_ptr"]][:-1]))
    bad = list(args)
    bad[7] = args[7][:-1]  # a field short
    with pytest.raises(ValueError, match="index tensors"):
        OPS.scan_forward(*bad)
    out, states = OPS.scan_forward(*args)
    with pytest.raises(ValueError):
        OPS.scan_backward(*bwd_args(torch.ones_like(out)[:-1], args, states))
    with pytest.raises(ValueError):
        OPS.scan_backward(*bwd_args(torch.ones_like(out), args, states[:-1]))
    with pytest.raises(TypeError):
        OPS.scan_backward(*bwd_args(torch.ones_like(out), args, states.double()))


def test_cuda_version_check():
    assert native.cuda_mismatch(-1, None) is None
    assert native.cuda_mismatch(-1, "12.4") is None
    assert native.cuda_mismatch(12040, "12.1") is None
    assert "CUDA 12.4" in native.cuda_mismatch(12040, "13.0")
    assert "has no CUDA" in native.cuda_mismatch(13000, None)
    if native.WITH_CUDA:
        assert native.cuda_mismatch(native.CUDA_VERSION, torch.version.cuda) is None


def test_package_works_without_extension(monkeypatch):
    """With the ops reported missing, the default backend falls back to torch."""
    monkeypatch.setattr(native, "WITH_NATIVE", False)
    monkeypatch.setattr(native, "_REASON", "pretend it is missing")
    assert not native.available("cpu")
    assert resolve_backend(None, torch.device("cpu")) == "torch"
    with pytest.raises(RuntimeError, match="pretend it is missing"):
        resolve_backend("native", torch.device("cpu"))


# ---------------------------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available() or not native.WITH_CUDA,
                    reason="needs a GPU and the CUDA build of the extension")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("keep", [True, False])
def test_cuda_ops_match_cpu(dtype, keep):
    ei, n = disjoint([(random_dag(50, 0.1, seed=1), 50)] +
                     [(random_dag(12, 0.3, seed=s), 12) for s in range(20)])
    li = plstm_graph.line_graph(ei, n)
    s_cpu = build_schedule(ei, li, n)
    s_gpu = build_schedule(ei.cuda(), li.cuda(), n)
    x = make(n, ei, li, dtype=dtype, heads=3, kdim=8, vdim=16)
    xc = {k: v.detach() for k, v in x.items()}
    xg = {k: v.detach().cuda() for k, v in x.items()}
    out_c, st_c = OPS.scan_forward(*op_args(xc, s_cpu, keep))
    out_g, st_g = OPS.scan_forward(*op_args(xg, s_gpu, keep))
    tol = TOL[dtype]
    torch.testing.assert_close(out_g.cpu().double(), out_c.double(), **tol)
    gy = torch.randn_like(out_c)
    gc = OPS.scan_backward(*bwd_args(gy, op_args(xc, s_cpu), st_c if keep else None))
    gg = OPS.scan_backward(*bwd_args(gy.cuda(), op_args(xg, s_gpu), st_g if keep else None))
    for a, b in zip(gg, gc):
        torch.testing.assert_close(a.cpu().double(), b.double(), **tol)
    # bitwise reproducible on the device too
    gg2 = OPS.scan_backward(*bwd_args(gy.cuda(), op_args(xg, s_gpu), st_g if keep else None))
    for a, b in zip(gg, gg2):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available() or not native.WITH_CUDA,
                    reason="needs a GPU and the CUDA build of the extension")
def test_cuda_bad_index_raises():
    args, s = _good_args()
    args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
    args[7] = [t if f.endswith("level_ptr") else t.cuda()
               for f, t in zip(DagSchedule.FIELDS, args[7])]
    args = _replace(args, "in_arc", args[7][FIELD["in_arc"]].clone().fill_(10_000))
    with pytest.raises((ValueError, RuntimeError)):
        OPS.scan_forward(*args)
    torch.cuda.synchronize()  # the context is still usable


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_all_finite(dtype):
    """The gate check of every plstm_dag call: any NaN or infinity anywhere, in any of the
    tensors, at any position (the vectorised body and its tail), strided or empty."""
    x = torch.rand(1003, dtype=dtype)
    assert OPS.all_finite([x, x[::3], torch.empty(0, 4, dtype=dtype)])
    for bad in (float("nan"), float("inf"), -float("inf")):
        for pos in (0, 500, 1002):
            y = x.clone()
            y[pos] = bad
            assert not OPS.all_finite([x, y])
            assert not OPS.all_finite([y.view(17, 59).t()])  # not contiguous
    big = torch.full((7,), torch.finfo(dtype).max, dtype=dtype)
    assert OPS.all_finite([big])  # large but finite values are fine (no sum to overflow)
    with pytest.raises(TypeError, match="floating"):
        OPS.all_finite([torch.ones(3, dtype=torch.long)])
