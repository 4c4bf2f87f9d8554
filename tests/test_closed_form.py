"""The native closed form (``closed_form_forward/backward``): the algorithm choice, numerics the
shared suite in test_native.py does not reach (zero gates, multi-word ancestor sets, half
types), the op contract and the layout checks."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
import torch  # noqa: E402

import plstm_graph  # noqa: E402
from harness import NAMES, disjoint, plstm_oracle, random_dag, random_inputs  # noqa: E402
from plstm_graph.dag import DagSchedule, build_schedule  # noqa: E402
from plstm_graph.ops import native  # noqa: E402

from plstm_graph.ops import dispatch as dispatcher

if not plstm_graph.WITH_NATIVE:
    pytest.skip(f"native ops not built: {native.unavailable_reason('cpu')}",
                allow_module_level=True)

OPS = torch.ops.plstm_graph


def batch(sizes, prob=0.35, seed=0):
    return disjoint([(random_dag(n, prob, seed=seed + i), n) for i, n in enumerate(sizes)])


def inputs(n, ei, li, dtype=torch.float64, **kw):
    x = random_inputs(n, ei.size(1), li.size(1), dtype=torch.float64, **kw)
    return {k: v.to(dtype).requires_grad_() for k, v in x.items()}


def cf_args(x, s):
    return [x[k] for k in NAMES] + [s.tensors()]


def closed_form(x, ei, li, **kw):
    return plstm_graph.plstm_dag(*(x[k] for k in NAMES), ei, li, backend="native",
                                 algorithm="closed_form", **kw)


def against_oracle(x, ei, li, tol=1e-10):
    y = closed_form(x, ei, li)
    ref = plstm_oracle(*(x[k] for k in NAMES), ei, li)
    torch.testing.assert_close(y, ref, atol=tol, rtol=tol)
    if not ref.requires_grad:  # no nodes: nothing to differentiate
        assert y.numel() == 0
        return
    g = torch.randn_like(ref)
    got = torch.autograd.grad(y, [x[k] for k in NAMES], g, allow_unused=True)
    want = torch.autograd.grad(ref, [x[k] for k in NAMES], g, allow_unused=True,
                               materialize_grads=True)
    for name, a, b in zip(NAMES, got, want):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=lambda m: f"d{name}: {m}")


# ---------------------------------------------------------------------------------------------
# choice of algorithm
# ---------------------------------------------------------------------------------------------
def test_auto_choice():
    cpu = torch.device("cpu")
    ei, n = batch([18] * 32, prob=0.15)
    li = plstm_graph.line_graph(ei, n)
    s = build_schedule(ei, li, n)
    assert dispatcher.resolve_algorithm(None, "native", cpu, s, 24, 24) == "closed_form"
    assert dispatcher.resolve_algorithm(None, "torch", cpu, s, 24, 24) == "closed_form"
    chain = torch.stack([torch.arange(2999), torch.arange(1, 3000)])
    s_chain = build_schedule(chain, plstm_graph.line_graph(chain, 3000), 3000)
    assert dispatcher.resolve_algorithm(None, "native", cpu, s_chain, 24, 24) == "scan"
    assert dispatcher.resolve_algorithm(None, "torch", cpu, s_chain, 24, 24) == "scan"
    # one mid-sized component: the padded torch closed form is not worth it, the native one is
    big, n_big = batch([200], prob=0.02, seed=1)
    s_big = build_schedule(big, plstm_graph.line_graph(big, n_big), n_big)
    assert dispatcher.resolve_algorithm(None, "torch", cpu, s_big, 24, 24) == "scan"
    assert dispatcher.resolve_algorithm(None, "native", cpu, s_big, 24, 24) == "closed_form"
    assert dispatcher.resolve_algorithm("closed_form", "torch", cpu, s, 24, 24) == "closed_form"
    # a forced closed form where it cannot run is refused with the reason
    with pytest.raises(RuntimeError, match="CPU kernels only"):
        dispatcher.resolve_algorithm("closed_form", "native", torch.device("cuda"), s, 24, 24)
    with pytest.raises(ValueError, match="largest component has 3000 nodes"):
        dispatcher.resolve_algorithm("closed_form", "native", cpu, s_chain, 24, 24)
    with pytest.raises(ValueError, match="unknown algorithm"):
        dispatcher.resolve_algorithm("attention", "native", cpu, s, 24, 24)


def test_bounds_decide_like_the_exact_count():
    """The choice first tries the bounds 0 and component_pairs for the ancestor pairs and only
    counts them when those disagree; it must always agree with the exact count."""
    cpu = torch.device("cpu")
    cases = [batch([n] * max(1, 400 // n), prob=p, seed=n) for n in (5, 20, 60, 150)
             for p in (0.05, 0.3)]
    chain = torch.stack([torch.arange(999), torch.arange(1, 1000)])
    cases.append((chain, 1000))
    for ei, n in cases:
        s = build_schedule(ei, plstm_graph.line_graph(ei, n), n)
        for kv in (4, 24, 64):
            exact = (dispatcher.closed_form_cost(s, kv, kv) <
                     dispatcher.scan_cost(s, kv, kv))
            got = dispatcher.resolve_algorithm(None, "native", cpu, s, kv, kv)
            assert got == ("closed_form" if exact else "scan")


def test_auto_choice_is_used():
    """plstm_dag with algorithm=None on a batch of small graphs runs the closed-form op."""
    ei, n = batch([9] * 6)
    li = plstm_graph.line_graph(ei, n)
    x = inputs(n, ei, li, dtype=torch.float32, heads=2, kdim=8, vdim=8)
    y = plstm_graph.plstm_dag(*(x[k] for k in NAMES), ei, li, backend="native")
    assert y.grad_fn is not None and "ClosedForm" in y.grad_fn.name()
    y_scan = plstm_graph.plstm_dag(*(x[k] for k in NAMES), ei, li, backend="native",
                                   algorithm="scan")
    torch.testing.assert_close(y, y_scan, atol=2e-5, rtol=2e-4)


# ---------------------------------------------------------------------------------------------
# numerics
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["P", "D"])
def test_gradcheck(mode):
    ei, n = batch([7, 5, 1, 6], prob=0.4, seed=3)
    li = plstm_graph.line_graph(ei, n)
    if mode == "D":
        li = plstm_graph.multitree(ei, li)
    x = inputs(n, ei, li, heads=2, kdim=3, vdim=2, seed=4)
    s = build_schedule(ei, li, n)
    assert torch.autograd.gradcheck(lambda *a: native.closed_form_native(*a, s),
                                    [x[k] for k in NAMES])


@pytest.mark.parametrize("which", ["source", "mark", "transition", "all"])
def test_zero_gates_still_get_gradients(which):
    """Gates that are exactly zero make parts of the gate matrix vanish, but their gradients do
    not: the kernel walks the ancestor structure, not the non-zero values."""
    ei, n = batch([8, 10], prob=0.4, seed=11)
    li = plstm_graph.line_graph(ei, n)
    x = inputs(n, ei, li, heads=2, kdim=3, vdim=4, seed=2)
    with torch.no_grad():
        names = ["source", "mark", "transition"] if which == "all" else [which]
        for name in names:
            x[name][::2] = 0.0
    against_oracle(x, ei, li)


def test_component_larger_than_one_bit_word():
    """Ancestor sets span several 64-bit words past 64 nodes."""
    ei, n = batch([150, 3], prob=0.04, seed=5)
    li = plstm_graph.line_graph(ei, n)
    x = inputs(n, ei, li, heads=1, kdim=2, vdim=3, seed=1)
    against_oracle(x, ei, li, tol=1e-9)


def _one_head(x, h):
    """The inputs of head h alone (H = 1), as leaves."""
    return {k: v.detach()[:, h:h + 1].clone().requires_grad_() for k, v in x.items()}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sizes", [[9, 14, 6], [120, 7]], ids=["small", "large"])
def test_heads_computed_together_equal_each_head_alone(sizes, dtype):
    """A task computes a group of heads of a component at once (all of them, or fewer where a
    large component's path weights would leave the cache: the 120-node one here); per head
    the arithmetic and its order are those of the head alone, so every output and gradient
    equals, bit for bit, the call with that head only."""
    ei, n = batch(sizes, prob=0.05 if sizes[0] > 100 else 0.35, seed=4)
    li = plstm_graph.line_graph(ei, n)
    x = inputs(n, ei, li, dtype=dtype, heads=3, kdim=5, vdim=4, seed=2)
    y = closed_form(x, ei, li)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x[k] for k in NAMES], g)
    for h in range(3):
        xh = _one_head(x, h)
        yh = closed_form(xh, ei, li)
        assert torch.equal(yh, y[:, h:h + 1].detach())
        for name, a, b in zip(NAMES, torch.autograd.grad(yh, [xh[k] for k in NAMES],
                                                           g[:, h:h + 1]), grads):
            assert torch.equal(a, b[:, h:h + 1]), (name, h)
    if sizes[0] > 100 and dtype == torch.float64:
        against_oracle(x, ei, li, tol=1e-9)


@pytest.mark.parametrize("n", [0, 1, 5])
def test_no_edges(n):
    ei = torch.empty(2, 0, dtype=torch.long)
    li = torch.empty(2, 0, dtype=torch.long)
    x = inputs(n, ei, li, heads=2, kdim=3, vdim=4)
    against_oracle(x, ei, li)


def test_node_ids_not_in_topological_order():
    ei = torch.tensor([[4, 4, 2, 0, 3], [2, 0, 0, 1, 1]])  # 4 -> 2 -> 0 -> 1 <- 3, 4 -> 0
    li = plstm_graph.line_graph(ei, 5)
    x = inputs(5, ei, li, heads=3, kdim=2, vdim=5, seed=8)
    against_oracle(x, ei, li)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_types_accumulate_in_float32(dtype):
    ei, n = batch([12, 9], prob=0.3, seed=6)
    li = plstm_graph.line_graph(ei, n)
    s = build_schedule(ei, li, n)
    x = random_inputs(n, ei.size(1), li.size(1), heads=2, kdim=8, vdim=8, seed=3)
    half = {k: v.to(dtype) for k, v in x.items()}
    out = OPS.closed_form_forward(*cf_args(half, s))
    assert out.dtype == dtype
    ref = OPS.closed_form_forward(*cf_args({k: v.float() for k, v in half.items()}, s))
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    dy = torch.randn_like(ref)
    grads = OPS.closed_form_backward(dy.to(dtype), *cf_args(half, s))
    grads_ref = OPS.closed_form_backward(dy.to(dtype).float(),
                                         *cf_args({k: v.float() for k, v in half.items()}, s))
    for a, b in zip(grads, grads_ref):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b, atol=5e-2, rtol=5e-2)


def test_threads_do_not_change_a_bit():
    ei, n = batch([20] * 40 + [300], prob=0.1, seed=2)
    li = plstm_graph.line_graph(ei, n)
    x = inputs(n, ei, li, dtype=torch.float32, heads=4, kdim=16, vdim=16)

    def run():
        y = closed_form(x, ei, li)
        return [y.detach()] + list(torch.autograd.grad(y.sum(), [x[k] for k in NAMES]))

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        many = run()
        torch.set_num_threads(1)
        one = run()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(many, one):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# the op contract
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_opcheck(dtype):
    ei, n = batch([6, 4], prob=0.5, seed=1)
    li = plstm_graph.line_graph(ei, n)
    s = build_schedule(ei, li, n)
    x = inputs(n, ei, li, dtype=dtype)
    torch.library.opcheck(OPS.closed_form_forward.default, tuple(cf_args(x, s)))
    detached = {k: v.detach() for k, v in x.items()}
    out = OPS.closed_form_forward(*cf_args(detached, s))
    torch.library.opcheck(OPS.closed_form_backward.default,
                          tuple([torch.randn_like(out)] + cf_args(detached, s)))


def test_op_is_differentiable_by_itself():
    """The autograd is wired in C++: the raw op differentiates (gradcheck), with no Python in
    between, and an output that does not reach the loss gives no gradient work."""
    ei, n = batch([7, 8], seed=4)
    li = plstm_graph.line_graph(ei, n)
    s = build_schedule(ei, li, n)
    x = inputs(n, ei, li, heads=2, kdim=3, vdim=2)
    args = cf_args(x, s)
    assert torch.autograd.gradcheck(lambda *a: OPS.closed_form_forward(*a, *args[7:]),
                                    args[:7])
    out = OPS.closed_form_forward(*args)
    assert out.requires_grad and "ClosedForm" in out.grad_fn.name()
    grads = torch.autograd.grad((out[:0] * 1.0).sum(), args[:7], allow_unused=True)
    assert all(g is None or not g.any() for g in grads)


def _layout(case):
    """A valid layout with one defect: (args, what DagSchedule.check() says, whether the op
    itself must raise). The op range-checks every index and checks, in its kernels, what keeps
    its accesses in bounds; the rest of the structure is the builder's (or check()'s)."""
    ei = torch.tensor([[0, 1, 1, 3], [1, 2, 4, 4]])  # 0 -> 1 -> {2, 4}, 3 -> 4 ; and node 5
    n = 6
    li = plstm_graph.line_graph(ei, n)
    s = build_schedule(ei, li, n)
    x = {k: v.detach() for k, v in inputs(n, ei, li).items()}
    args = cf_args(x, s)

    def put(field, value):
        args[7][DagSchedule.FIELDS.index(field)] = value

    comp_node = s.comp_node.clone()
    if case == "node_twice":  # in bounds: wrong numbers, which check() finds
        comp_node[1] = comp_node[0]
        put("comp_node", comp_node)
        return args, "lists 0 twice", False
    if case == "node_out_of_range":
        comp_node[0] = 99
        put("comp_node", comp_node)
        return args, "out of range", True
    if case == "not_topological":  # node 1 before node 0, positions to match
        node_pos = s.node_pos.clone()
        node_pos[0], node_pos[1] = s.node_pos[1], s.node_pos[0]
        i, j = int((comp_node == 0).nonzero()), int((comp_node == 1).nonzero())
        comp_node[i], comp_node[j] = 1, 0
        put("comp_node", comp_node)
        put("node_pos", node_pos)
        return args, "topological order", True
    if case == "node_pos_stale":  # comp_node reordered, node_pos not: check() names it
        i, j = int((comp_node == 0).nonzero()), int((comp_node == 1).nonzero())
        comp_node[i], comp_node[j] = 1, 0
        put("comp_node", comp_node)
        return args, "node_pos", False
    if case == "ptr_end":
        ptr = s.comp_node_ptr.clone()
        ptr[-1] -= 1
        put("comp_node_ptr", ptr)
        return args, "comp_node_ptr|lists|position", False
    if case == "ptr_decreasing":
        ptr = s.comp_edge_ptr.clone()
        ptr[1] = 5
        put("comp_edge_ptr", ptr)
        return args, "non-decreasing|out of range", True  # (5 > E: the range check first)
    if case == "edge_order":  # edge 1 before edge 0, which feeds it through an arc
        ce, edge_pos = s.comp_edge.clone(), s.edge_pos.clone()
        i, j = int((ce == 0).nonzero()), int((ce == 1).nonzero())
        ce[i], ce[j] = 1, 0
        edge_pos[0], edge_pos[1] = s.edge_pos[1], s.edge_pos[0]
        put("comp_edge", ce)
        put("edge_pos", edge_pos)
        return args, "level order", True
    if case == "edge_pos_beyond_component":  # an in-range position past its component's end
        edge_pos = s.edge_pos.clone()
        edge_pos[0] = s.num_edges - 1
        put("edge_pos", edge_pos)
        return args, "edge_pos", True
    if case == "arcs_do_not_meet":
        arc_src = s.arc_src.clone()
        arc_src[0] = 3  # edge 3 (3 -> 4) does not end where its arc's edge starts
        put("arc_src", arc_src)
        return args, "do not meet", False
    if case == "edge_across_components":
        ptr = s.comp_node_ptr.clone()
        ptr[1] -= 1
        put("comp_node_ptr", ptr)
        return args, "not inside its component|position", True
    if case == "ptr_length":
        put("comp_edge_ptr", s.comp_edge_ptr[:-1])
        return args, "comp_edge_ptr must have shape", True
    raise AssertionError(case)


LAYOUT_CASES = ["node_twice", "node_out_of_range", "not_topological", "node_pos_stale",
                "ptr_end", "ptr_decreasing", "edge_order", "edge_pos_beyond_component",
                "arcs_do_not_meet", "edge_across_components", "ptr_length"]


@pytest.mark.parametrize("case", LAYOUT_CASES)
def test_bad_layout(case):
    """check() names every defect; the op raises where an access would leave its bounds and
    otherwise computes in bounds (a wrong schedule, wrong numbers), writing no input."""
    args, message, op_raises = _layout(case)
    schedule = args[7]
    with pytest.raises(ValueError, match=message):
        if len(schedule) != len(DagSchedule.FIELDS):
            raise ValueError("comp_edge_ptr must have shape")  # (not even a DagSchedule)
        DagSchedule(args[0].size(0), *schedule).check()
    before = [a.clone() for a in args[:7]] + [[t.clone() for t in schedule]]
    out_shape = (args[0].size(0), args[0].size(1), args[2].size(2))
    grad = torch.ones(out_shape, dtype=torch.float64)
    if op_raises:
        with pytest.raises(ValueError, match=message + "|component layout is inconsistent"):
            OPS.closed_form_forward(*args)
        with pytest.raises(ValueError, match=message + "|component layout is inconsistent"):
            OPS.closed_form_backward(grad, *args)
    else:
        assert OPS.closed_form_forward(*args).shape == out_shape
        assert len(OPS.closed_form_backward(grad, *args)) == 7
    for a, b in zip(args[:7] + schedule, before[:7] + before[7]):
        assert torch.equal(a, b)  # nothing was written


def test_bad_arguments_raise():
    ei, n = batch([5, 4], seed=2)
    li = plstm_graph.line_graph(ei, n)
    s = build_schedule(ei, li, n)
    x = {k: v.detach() for k, v in inputs(n, ei, li).items()}
    args = cf_args(x, s)
    bad = list(args)
    bad[6] = x["direct"][:-1]
    with pytest.raises(ValueError, match="direct must have shape"):
        OPS.closed_form_forward(*bad)
    bad = list(args)
    bad[6] = x["direct"].float()
    with pytest.raises(TypeError, match="direct has dtype"):
        OPS.closed_form_forward(*bad)
    bad = list(args)
    bad[7] = [s.edge_src.int()] + s.tensors()[1:]
    with pytest.raises(TypeError, match="int64"):
        OPS.closed_form_forward(*bad)
    with pytest.raises(ValueError, match="grad_out must have shape"):
        OPS.closed_form_backward(torch.ones(1, 2, 3, dtype=torch.float64), *args)


def test_strided_rows_are_read_in_place():
    """q, k, v as column slices of one wider tensor (how PLSTMConv hands them over) give the
    same values and gradients as contiguous copies."""
    ei, n = batch([6, 7], seed=9)
    li = plstm_graph.line_graph(ei, n)
    s = build_schedule(ei, li, n)
    x = inputs(n, ei, li, heads=2, kdim=3, vdim=4)
    wide = torch.cat([x["query"].detach().reshape(n, -1), x["key"].detach().reshape(n, -1),
                      x["value"].detach().reshape(n, -1), torch.randn(n, 5,
                                                                      dtype=torch.float64)], 1)
    wide.requires_grad_()
    q, k, v = wide[:, :6].view(n, 2, 3), wide[:, 6:12].view(n, 2, 3), wide[:, 12:20].view(n, 2, 4)
    assert not q.is_contiguous() and q.stride() == (25, 3, 1)
    rest = [x[k_].detach().requires_grad_() for k_ in NAMES[3:]]
    y = OPS.closed_form_forward(q, k, v, *rest, s.tensors())
    dense = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    y_ref = OPS.closed_form_forward(*dense, *[r.detach() for r in rest], s.tensors())
    assert torch.equal(y, y_ref)
    g = torch.randn_like(y)
    (dwide,) = torch.autograd.grad(y, [wide], g)
    dq, dk, dv = torch.autograd.grad(y_ref, dense, g)
    assert torch.equal(dwide[:, :6], dq.reshape(n, -1))
    assert torch.equal(dwide[:, 6:12], dk.reshape(n, -1))
    assert torch.equal(dwide[:, 12:20], dv.reshape(n, -1))
    assert not dwide[:, 20:].any()
