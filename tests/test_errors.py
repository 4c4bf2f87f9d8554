"""The bad-input contract (docs/contract.md, "Bad input"): ValueError / TypeError naming the
problem, inputs left untouched; and odd-but-valid layouts (strided views) giving the right
answer."""
import re

import networkx as nx
import pytest
import torch

import plstm_graph
from plstm_graph.ops import native
from harness import NAMES, ei, plstm_oracle, random_dag, random_inputs

GATES = ("source", "transition", "mark", "direct")


def valid_case(n=8, p=0.5, seed=1, dtype=torch.float64, heads=2, kdim=3, vdim=4):
    edge_index = random_dag(n, p, seed=seed)
    lg = plstm_graph.line_graph(edge_index, num_nodes=n)
    inputs = random_inputs(n, edge_index.size(1), lg.size(1), heads, kdim, vdim, seed=seed,
                           dtype=dtype)
    return inputs, edge_index, lg


def _snapshot(obj):
    if isinstance(obj, torch.Tensor) and obj.device.type != "meta":
        return obj.clone()
    return None


def _same(a, b):
    if b is None:
        return True
    return (a.shape == b.shape and a.dtype == b.dtype and
            torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)) and
            torch.equal(a.isnan(), b.isnan()))


def expect_error(exc, match, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` raises ``exc`` matching ``match`` and mutates no tensor."""
    before = [_snapshot(a) for a in args]
    kw_before = {k: _snapshot(v) for k, v in kwargs.items()}
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kwargs)
    for i, (a, b) in enumerate(zip(args, before)):
        assert _same(a, b), f"argument {i} was modified"
    for k, b in kw_before.items():
        assert _same(kwargs[k], b), f"argument {k} was modified"
    return info


def expect_op_error(exc, match, inputs, edge_index, line_index, **kw):
    args = [inputs[n] for n in NAMES] + [edge_index, line_index]
    return expect_error(exc, match, plstm_graph.plstm_dag, *args, **kw)


def on_cycle(edge_index, node):
    g = nx.DiGraph(edge_index.t().tolist())
    return any(node in scc and len(scc) > 1 for scc in nx.strongly_connected_components(g))


# ---------------------------------------------------------------------------------------------
# graph structure
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["two_cycle", "long_cycle", "random_back_edge"])
def test_directed_cycle(kind):
    if kind == "two_cycle":
        edge_index, n = ei([(0, 1), (1, 2), (2, 1), (2, 3)]), 4
    elif kind == "long_cycle":
        edge_index, n = ei([(5, 0), (0, 3), (3, 1), (1, 4), (4, 0), (4, 2)]), 6
    else:
        edge_index, n = random_dag(12, 0.3, seed=4), 12
        g = nx.DiGraph(edge_index.t().tolist())
        u = next(x for x in g if len(nx.descendants(g, x)) >= 2)
        w = max(nx.descendants(g, u), key=lambda x: len(nx.ancestors(g, x)))
        edge_index = torch.cat([edge_index, torch.tensor([[w], [u]])], 1)
    lg = plstm_graph.line_graph(edge_index, num_nodes=n)
    inputs = random_inputs(n, edge_index.size(1), lg.size(1))
    info = expect_op_error(ValueError, "cycle", inputs, edge_index, lg)
    m = re.search(r"node (\d+)", str(info.value))
    assert m and on_cycle(edge_index, int(m.group(1))), str(info.value)
    # the D-mode pruning and the levels refuse it too
    for fn in (lambda: plstm_graph.multitree(edge_index, lg),
               lambda: plstm_graph.topological_levels(edge_index, n, method="torch")):
        with pytest.raises(ValueError, match="cycle") as info:
            fn()
        m = re.search(r"node (\d+)", str(info.value))
        assert m and on_cycle(edge_index, int(m.group(1))), str(info.value)


def test_self_loop():
    edge_index = ei([(0, 1), (1, 1), (1, 2)])
    lg = plstm_graph.line_graph(edge_index, num_nodes=3)
    inputs = random_inputs(3, 3, lg.size(1))
    expect_op_error(ValueError, "self-loop", inputs, edge_index, lg)
    # and with a line graph that does not mention the loop
    inputs = random_inputs(3, 3, 1)
    expect_op_error(ValueError, "self-loop", inputs, edge_index, ei([(0, 2)]))


def test_line_arc_edges_do_not_meet():
    inputs, edge_index, lg = valid_case()
    src, dst = edge_index[0].tolist(), edge_index[1].tolist()
    a, b = next((a, b) for a in range(len(src)) for b in range(len(src)) if dst[a] != src[b])
    bad = torch.cat([lg, torch.tensor([[a], [b]])], 1)
    inputs = random_inputs(8, edge_index.size(1), bad.size(1))
    expect_op_error(ValueError, "do not meet", inputs, edge_index, bad)
    expect_error(ValueError, "do not meet", plstm_graph.multitree, edge_index, bad)


@pytest.mark.parametrize("which", ["edge_index", "line_index"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.int16, torch.bool])
def test_index_dtype(which, dtype):
    inputs, edge_index, lg = valid_case()
    if which == "edge_index":
        edge_index = edge_index.to(dtype)
    else:
        lg = lg.to(dtype)
    expect_op_error(TypeError, f"{which}.*dtype|dtype.*{which}", inputs, edge_index, lg)


@pytest.mark.parametrize("which", ["edge_index", "line_index"])
def test_negative_ids(which):
    inputs, edge_index, lg = valid_case()
    if which == "edge_index":
        edge_index = edge_index.clone()
        edge_index[1, 3] = -1
    else:
        lg = lg.clone()
        lg[0, 2] = -3
    expect_op_error(ValueError, f"{which}.*negative", inputs, edge_index, lg)


@pytest.mark.parametrize("which,row", [("edge_index", 0), ("edge_index", 1), ("line_index", 0),
                                       ("line_index", 1)])
def test_ids_past_the_end(which, row):
    inputs, edge_index, lg = valid_case()
    if which == "edge_index":
        edge_index = edge_index.clone()
        edge_index[row, 0] = 8  # N == 8
    else:
        lg = lg.clone()
        lg[row, 0] = edge_index.size(1)
    expect_op_error(ValueError, f"{which}.*out of range", inputs, edge_index, lg)


@pytest.mark.parametrize("which", ["edge_index", "line_index"])
@pytest.mark.parametrize("shape", ["three_rows", "one_row", "flat", "3d"])
def test_index_shape(which, shape):
    inputs, edge_index, lg = valid_case()
    t = edge_index if which == "edge_index" else lg
    if shape == "three_rows":
        t = torch.cat([t, t[:1]], 0)
    elif shape == "one_row":
        t = t[:1]
    elif shape == "flat":
        t = t.reshape(-1)
    else:
        t = t[None]
    if which == "edge_index":
        edge_index = t
    else:
        lg = t
    expect_op_error(ValueError, f"{which}.*shape", inputs, edge_index, lg)


# ---------------------------------------------------------------------------------------------
# tensor shapes, dtypes, values
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("how", ["short", "long", "heads", "flat"])
def test_gate_shape(gate, how):
    inputs, edge_index, lg = valid_case()
    t = inputs[gate]
    inputs[gate] = {"short": t[:-1], "long": torch.cat([t, t[:1]]), "heads": t[:, :1],
                    "flat": t[:, 0]}[how]
    expect_op_error(ValueError, f"{gate}.*shape", inputs, edge_index, lg)


def test_query_key_width_mismatch():
    inputs, edge_index, lg = valid_case()
    inputs["key"] = torch.cat([inputs["key"], inputs["key"][..., :1]], -1)
    expect_op_error(ValueError, "query and key", inputs, edge_index, lg)


@pytest.mark.parametrize("which", ["key", "value", "source", "direct"])
def test_head_count_mismatch(which):
    inputs, edge_index, lg = valid_case(heads=2)
    inputs[which] = torch.cat([inputs[which], inputs[which][:, :1]], 1)
    expect_op_error(ValueError, f"{which}|query and key", inputs, edge_index, lg)


@pytest.mark.parametrize("which", ["value", "key", "query"])
def test_node_count_mismatch(which):
    inputs, edge_index, lg = valid_case()
    inputs[which] = inputs[which][:-1]
    expect_op_error(ValueError, f"{which}|query and key|direct|out of range", inputs,
                    edge_index, lg)


@pytest.mark.parametrize("which", ["query", "key", "value"])
def test_wrong_rank_qkv(which):
    inputs, edge_index, lg = valid_case()
    inputs[which] = inputs[which][..., 0]
    expect_op_error(ValueError, f"{which}.*shape", inputs, edge_index, lg)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_gate(gate, bad):
    inputs, edge_index, lg = valid_case()
    inputs[gate] = inputs[gate].clone()
    inputs[gate][1, 1] = bad
    expect_op_error(ValueError, f"{gate}.*(NaN|finite)", inputs, edge_index, lg)


@pytest.mark.parametrize("which", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mixed_dtypes(which, dtype):
    inputs, edge_index, lg = valid_case()
    inputs[which] = inputs[which].to(dtype)
    expect_op_error(TypeError, "dtype", inputs, edge_index, lg)


@pytest.mark.parametrize("which", NAMES)
@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.bool, torch.complex64])
def test_non_float_tensors(which, dtype):
    inputs, edge_index, lg = valid_case()
    inputs[which] = (inputs[which] * 3).to(dtype)
    expect_op_error(TypeError, f"{which}.*(float|dtype)", inputs, edge_index, lg)


def test_integer_everything():
    inputs, edge_index, lg = valid_case()
    inputs = {k: (v * 3).long() for k, v in inputs.items()}
    expect_op_error(TypeError, "float", inputs, edge_index, lg)


@pytest.mark.parametrize("which", NAMES + ("edge_index", "line_index"))
@pytest.mark.parametrize("kind", ["list", "none", "numpy"])
def test_non_tensor_inputs(which, kind):
    inputs, edge_index, lg = valid_case()
    args = dict(inputs, edge_index=edge_index, line_index=lg)
    t = args[which]
    args[which] = {"list": t.tolist(), "none": None, "numpy": t.numpy()}[kind]
    if which == "line_index" and kind == "none":
        # line_index=None asks for node-level transitions, which need transition [N, H]
        with pytest.raises(ValueError, match=r"transition must have shape \[N.*line_index"):
            plstm_graph.plstm_dag(*(args[n] for n in NAMES + ("edge_index", "line_index")))
        return
    with pytest.raises(TypeError, match=f"{which}.*Tensor"):
        plstm_graph.plstm_dag(*(args[n] for n in NAMES + ("edge_index", "line_index")))


# ---------------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["reversed", "flat", "short", "float", "negative", "2d"])
def test_invalid_node_level(how):
    inputs, edge_index, lg = valid_case()
    level = plstm_graph.topological_levels(edge_index, 8)
    bad = {"reversed": int(level.max()) - level, "flat": torch.zeros_like(level),
           "short": level[:-1], "float": level.double(), "negative": level - 1,
           "2d": level[None]}[how]
    exc = TypeError if how == "float" else ValueError
    expect_op_error(exc, "node_level", inputs, edge_index, lg, node_level=bad)


def test_node_level_on_cycle_is_refused():
    edge_index = ei([(0, 1), (1, 2), (2, 0)])
    lg = plstm_graph.line_graph(edge_index)
    inputs = random_inputs(3, 3, lg.size(1))
    expect_op_error(ValueError, "node_level", inputs, edge_index, lg,
                    node_level=torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("backend", ["cuda", "Torch", "", "triton"])
def test_unknown_backend(backend):
    inputs, edge_index, lg = valid_case()
    expect_op_error(ValueError, "backend", inputs, edge_index, lg, backend=backend)


def test_native_unavailable(monkeypatch):
    """As on a machine where the extension was not built (simulated where it was)."""
    monkeypatch.setattr(native, "WITH_NATIVE", False)
    inputs, edge_index, lg = valid_case()
    expect_op_error(RuntimeError, "native", inputs, edge_index, lg, backend="native")
    # and backend=None quietly takes the torch path
    out = plstm_graph.plstm_dag(*inputs.values(), edge_index, lg)
    assert out.shape[0] == inputs["query"].shape[0]


# ---------------------------------------------------------------------------------------------
# devices
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["edge_index", "line_index", "query", "transition", "direct"])
def test_mixed_devices_meta(which):
    """The "meta" device stands in for a second device (no GPU needed)."""
    inputs, edge_index, lg = valid_case()
    args = dict(inputs, edge_index=edge_index, line_index=lg)
    args[which] = args[which].to("meta")
    with pytest.raises(ValueError, match="device") as info:
        plstm_graph.plstm_dag(*(args[n] for n in NAMES + ("edge_index", "line_index")))
    msg = str(info.value)
    assert "meta" in msg and "cpu" in msg and which in msg, msg
    for n in NAMES:
        if n != which:
            assert torch.equal(args[n], inputs[n])


def test_node_level_on_other_device():
    inputs, edge_index, lg = valid_case()
    level = plstm_graph.topological_levels(edge_index, 8).to("meta")
    with pytest.raises(ValueError, match="node_level.*meta|device"):
        plstm_graph.plstm_dag(*(inputs[n] for n in NAMES), edge_index, lg, node_level=level)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mixed_devices_cuda():
    inputs, edge_index, lg = valid_case()
    inputs["query"] = inputs["query"].cuda()
    with pytest.raises(ValueError, match="device"):
        plstm_graph.plstm_dag(*(inputs[n] for n in NAMES), edge_index, lg)


# ---------------------------------------------------------------------------------------------
# strided layouts are valid and give the right answer
# ---------------------------------------------------------------------------------------------
def test_non_contiguous_inputs_give_the_right_answer():
    n, heads, kdim, vdim = 11, 2, 3, 4
    inputs, edge_index, lg = valid_case(n=n, p=0.45, seed=6, heads=heads, kdim=kdim,
                                        vdim=vdim)
    E, L = edge_index.size(1), lg.size(1)
    g = torch.Generator().manual_seed(2)
    cot = torch.randn(n, heads, vdim, generator=g, dtype=torch.float64)

    def run(args, ei_, lg_, **kw):
        leaves = [a.detach().requires_grad_(True) if not a.is_leaf or not a.requires_grad
                  else a for a in args]
        y = plstm_graph.plstm_dag(*leaves, ei_, lg_, **kw)
        return y.detach(), torch.autograd.grad(y, leaves, cot)

    contiguous = [inputs[k] for k in NAMES]
    y_ref, g_ref = run(contiguous, edge_index, lg)
    # strided views with the same values
    q = torch.zeros(n, heads, 2 * kdim, dtype=torch.float64)
    q[..., ::2] = inputs["query"]
    k = inputs["key"].permute(2, 1, 0).contiguous().permute(2, 1, 0)
    v = inputs["value"].transpose(0, 1).contiguous().transpose(0, 1)
    gates = [inputs[x].t().contiguous().t() for x in GATES]
    ei_nc = edge_index.t().contiguous().t()
    lg_nc = torch.zeros(2, 2 * L, dtype=torch.long)
    lg_nc[:, ::2] = lg
    lg_nc = lg_nc[:, ::2]
    strided = [q[..., ::2], k, v] + gates
    for t in strided + [ei_nc, lg_nc]:
        assert not t.is_contiguous() or t.numel() <= 1
    level = torch.zeros(2 * n, dtype=torch.long)
    level[::2] = plstm_graph.topological_levels(edge_index, n)
    for kw in ({}, {"node_level": level[::2]}, {"recompute": True}):
        y, grads = run(strided, ei_nc, lg_nc, **kw)
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        for name, a, b in zip(NAMES, grads, g_ref):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
    # an expanded (stride-0) value and a non-contiguous upstream gradient
    v0 = inputs["value"][:1].detach().requires_grad_(True)
    args = [inputs["query"], inputs["key"], v0.expand(n, heads, vdim)] + \
        [inputs[x] for x in GATES]
    y = plstm_graph.plstm_dag(*args, edge_index, lg)
    cot_nc = torch.randn(vdim, heads, n, dtype=torch.float64, generator=g).permute(2, 1, 0)
    (gv0,) = torch.autograd.grad(y, v0, cot_nc)
    vx = v0.detach().expand(n, heads, vdim).clone().requires_grad_(True)
    args_ref = [inputs["query"], inputs["key"], vx] + [inputs[x] for x in GATES]
    y_o = plstm_oracle(*args_ref, edge_index, lg)
    torch.testing.assert_close(y.detach(), y_o.detach(), rtol=1e-10, atol=1e-10)
    (gvx,) = torch.autograd.grad(y_o, vx, cot_nc.contiguous())
    torch.testing.assert_close(gv0, gvx.sum(0, keepdim=True), rtol=1e-10, atol=1e-10)


def test_non_contiguous_index_for_dag_functions():
    edge_index = random_dag(12, 0.4, seed=3)
    ei_nc = edge_index.t().contiguous().t()
    assert not ei_nc.is_contiguous()
    assert torch.equal(plstm_graph.line_graph(ei_nc), plstm_graph.line_graph(edge_index))
    for method in ("torch", "networkx"):
        assert torch.equal(plstm_graph.topological_levels(ei_nc, 12, method=method),
                           plstm_graph.topological_levels(edge_index, 12, method=method))
    lg = plstm_graph.line_graph(edge_index)
    assert torch.equal(plstm_graph.multitree(ei_nc, lg.t().contiguous().t()),
                       plstm_graph.multitree(edge_index, lg))


# ---------------------------------------------------------------------------------------------
# bad input to the DAG helpers
# ---------------------------------------------------------------------------------------------
def _bad_index_cases():
    good = ei([(0, 1), (1, 2)])
    return {
        "list": (TypeError, "edge_index.*Tensor", [[0, 1], [1, 2]]),
        "float": (TypeError, "edge_index.*dtype", good.float()),
        "int32": (TypeError, "edge_index.*dtype", good.int()),
        "three_rows": (ValueError, "edge_index.*shape", torch.cat([good, good[:1]])),
        "flat": (ValueError, "edge_index.*shape", good.reshape(-1)),
        "negative": (ValueError, "negative", ei([(0, 1), (-1, 2)])),
    }


@pytest.mark.parametrize("case", sorted(_bad_index_cases()))
def test_line_graph_bad_input(case):
    exc, match, edge_index = _bad_index_cases()[case]
    expect_error(exc, match, plstm_graph.line_graph, edge_index)


@pytest.mark.parametrize("num_nodes", [2, -1, 2.5, True])
def test_line_graph_bad_num_nodes(num_nodes):
    expect_error(ValueError, "num_nodes|out of range", plstm_graph.line_graph,
                 ei([(0, 1), (1, 2)]), num_nodes=num_nodes)


@pytest.mark.parametrize("case", sorted(_bad_index_cases()))
@pytest.mark.parametrize("method", ["networkx", "torch"])
def test_topological_levels_bad_input(case, method):
    exc, match, edge_index = _bad_index_cases()[case]
    expect_error(exc, match, plstm_graph.topological_levels, edge_index, method=method)


def test_topological_levels_bad_options():
    expect_error(ValueError, "out of range", plstm_graph.topological_levels,
                 ei([(0, 1), (1, 2)]), num_nodes=2)
    expect_error(ValueError, "method", plstm_graph.topological_levels, ei([(0, 1)]),
                 method="dfs")
    expect_error(ValueError, "self-loop", plstm_graph.topological_levels, ei([(0, 0)]))


@pytest.mark.parametrize("case", sorted(_bad_index_cases()))
def test_multitree_bad_edge_index(case):
    exc, match, edge_index = _bad_index_cases()[case]
    expect_error(exc, match, plstm_graph.multitree, edge_index, ei([(0, 1)]))


@pytest.mark.parametrize("how", ["float", "three_rows", "negative", "past_end", "not_meeting",
                                 "list"])
def test_multitree_bad_line_index(how):
    edge_index = ei([(0, 1), (1, 2), (2, 3)])
    lg = {"float": ei([(0, 1)]).float(), "three_rows": torch.zeros(3, 1, dtype=torch.long),
          "negative": ei([(-1, 1)]), "past_end": ei([(1, 3)]), "not_meeting": ei([(0, 2)]),
          "list": [[0], [1]]}[how]
    exc = TypeError if how in ("float", "list") else ValueError
    match = {"float": "dtype", "three_rows": "shape", "negative": "negative",
             "past_end": "out of range", "not_meeting": "do not meet", "list": "Tensor"}[how]
    expect_error(exc, match, plstm_graph.multitree, edge_index, lg)


def test_multitree_self_loop_and_cycle():
    expect_error(ValueError, "self-loop", plstm_graph.multitree, ei([(0, 1), (1, 1)]),
                 ei([(0, 1)]))
    expect_error(ValueError, "cycle", plstm_graph.multitree, ei([(0, 1), (1, 0)]),
                 ei([(0, 1), (1, 0)]))


@pytest.mark.parametrize("case", sorted(_bad_index_cases()))
def test_to_dag_bad_edge_index(case):
    exc, match, edge_index = _bad_index_cases()[case]
    expect_error(exc, match, plstm_graph.to_dag, edge_index)


def test_to_dag_bad_options():
    edge_index = ei([(0, 1), (1, 0), (1, 2), (2, 1)])
    expect_error(ValueError, "self-loop", plstm_graph.to_dag, ei([(0, 1), (1, 1)]))
    expect_error(ValueError, "out of range", plstm_graph.to_dag, edge_index, num_nodes=2)
    expect_error(ValueError, "rank", plstm_graph.to_dag, edge_index, rank=torch.tensor([0, 1]))
    expect_error(ValueError, "rank", plstm_graph.to_dag, edge_index,
                 rank=torch.tensor([0, 1, 1]))


@pytest.mark.parametrize("rows", [2, 5])
def test_to_dag_edge_attr_wrong_length(rows):
    edge_index = ei([(0, 1), (1, 0), (1, 2), (2, 1)])
    expect_error(ValueError, "edge_attr", plstm_graph.to_dag, edge_index,
                 torch.zeros(rows, 3))
