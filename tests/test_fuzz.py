"""Property-based fuzzing: random DAGs against the oracle on every backend, and random
corruptions of valid input against the error contract.

Example counts come from the hypothesis profile (conftest: "ci" by default, "long" with
``--long``); nothing here hard-codes ``max_examples``.
"""
import random
import re

import pytest
import torch
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

import plstm_graph
from harness import BACKENDS, IMPLS, NAMES, impl_kwargs, plstm_oracle

GATES = ("source", "transition", "mark", "direct")
FUZZ = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# ---------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------
@st.composite
def dags(draw, max_nodes=25):
    """(edge_index, num_nodes): a random DAG behind a random id permutation, possibly with
    parallel edges; edges in random order."""
    n = draw(st.integers(0, max_nodes))
    p = draw(st.sampled_from([0.0, 0.05, 0.15, 0.3, 0.5]))
    perm = draw(st.permutations(list(range(n))))
    rng = random.Random(draw(st.integers(0, 2 ** 32 - 1)))
    pairs = [(perm[i], perm[j]) for i in range(n) for j in range(i + 1, n) if rng.random() < p]
    if pairs and draw(st.booleans()):
        pairs += rng.sample(pairs, min(len(pairs), draw(st.integers(1, 3))))  # parallel edges
    rng.shuffle(pairs)
    if not pairs:
        return torch.empty(2, 0, dtype=torch.long), n
    return torch.tensor(pairs, dtype=torch.long).t().contiguous(), n


def make_inputs(edge_index, n, lg, mode, heads, kdim, vdim, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, lo=-1.0, hi=1.0):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(dtype)

    E, L = edge_index.size(1), lg.size(1)
    t = r(L, heads, lo=-3, hi=3)
    if mode == "P":  # the paper's normalisation over the arcs leaving each edge
        denom = torch.full((E, heads), 0.5, dtype=torch.float64)
        denom.index_add_(0, lg[0], t.abs().double())
        t = t / denom[lg[0]].to(dtype)
    else:
        t = torch.tanh(t)
    return dict(query=r(n, heads, kdim), key=r(n, heads, kdim), value=r(n, heads, vdim),
                source=r(E, heads, lo=0, hi=1), transition=t, mark=r(E, heads, lo=0, hi=1),
                direct=r(n, heads, lo=0, hi=1))


@st.composite
def problems(draw, max_nodes=25):
    edge_index, n = draw(dags(max_nodes))
    mode = draw(st.sampled_from(["P", "D"]))
    lg = plstm_graph.line_graph(edge_index, num_nodes=n)
    if mode == "D":
        lg = plstm_graph.multitree(edge_index, lg)
    heads, kdim, vdim = (draw(st.integers(1, 3)), draw(st.integers(1, 5)),
                         draw(st.integers(1, 5)))
    inputs = make_inputs(edge_index, n, lg, mode, heads, kdim, vdim,
                         draw(st.integers(0, 2 ** 31 - 1)))
    note(f"n={n} E={edge_index.size(1)} L={lg.size(1)} mode={mode} H={heads} K={kdim} "
         f"V={vdim} edge_index={edge_index.tolist()}")
    return inputs, edge_index, lg


def _grads(y, xs, cot):
    if not y.requires_grad:
        return [torch.zeros_like(x) for x in xs]
    gs = torch.autograd.grad(y, xs, cot, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(xs, gs)]


# ---------------------------------------------------------------------------------------------
# valid input: every backend == oracle (float64, forward and all seven gradients)
# ---------------------------------------------------------------------------------------------
@FUZZ
@given(problem=problems(), cot_seed=st.integers(0, 1000), recompute=st.booleans())
def test_fuzz_matches_oracle(problem, cot_seed, recompute):
    inputs, edge_index, lg = problem
    n, heads = inputs["query"].shape[:2]
    cot = torch.randn(n, heads, inputs["value"].size(-1), dtype=torch.float64,
                      generator=torch.Generator().manual_seed(cot_seed))
    xs = [inputs[k].clone().requires_grad_(True) for k in NAMES]
    y_ref = plstm_oracle(*xs, edge_index, lg)
    g_ref = _grads(y_ref, xs, cot)
    scale = 1.0 + float(y_ref.detach().abs().max()) if y_ref.numel() else 1.0
    for backend in IMPLS:
        xs = [inputs[k].clone().requires_grad_(True) for k in NAMES]
        y = plstm_graph.plstm_dag(*xs, edge_index, lg, recompute=recompute,
                                  **impl_kwargs(backend))
        assert y.dtype == torch.float64 and y.shape == y_ref.shape
        torch.testing.assert_close(y.detach(), y_ref.detach(), rtol=1e-9, atol=1e-9 * scale)
        for name, a, b in zip(NAMES, _grads(y, xs, cot), g_ref):
            gscale = 1.0 + (float(b.abs().max()) if b.numel() else 0.0)
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * gscale,
                                       msg=lambda m: f"{backend}: grad of {name}: {m}")


@FUZZ
@given(graph=dags())
def test_fuzz_dag_helpers(graph):
    """line_graph == brute force; multitree is a multitree subset, idempotent; torch levels ==
    networkx levels; every arc climbs."""
    edge_index, n = graph
    src, dst = edge_index[0].tolist(), edge_index[1].tolist()
    E = len(src)
    lg = plstm_graph.line_graph(edge_index, num_nodes=n)
    brute = [(a, b) for a in range(E) for b in range(E) if dst[a] == src[b]]
    assert [tuple(x) for x in lg.t().tolist()] == brute
    level = plstm_graph.topological_levels(edge_index, n)
    assert torch.equal(level, plstm_graph.topological_levels(edge_index, n, method="torch"))
    for u, w in zip(src, dst):
        assert level[u] < level[w]
    for w in range(n):  # a generation: one above the highest predecessor
        preds = [level[u] for u, x in zip(src, dst) if x == w]
        assert int(level[w]) == (int(max(preds)) + 1 if preds else 0)
    mt = plstm_graph.multitree(edge_index, lg)
    kept = [tuple(x) for x in mt.t().tolist()]
    assert set(kept) <= set(brute) and len(set(kept)) == len(kept)
    assert set(mt[1].tolist()) == set(lg[1].tolist())
    # at most one path between any two edges: count paths in topological order of edges
    succ = {}
    for a, b in kept:
        succ.setdefault(a, []).append(b)
    order = sorted(range(E), key=lambda e: (int(level[src[e]]), e))
    for x in range(E):
        count = [0] * E
        count[x] = 1
        for e in order:
            for b in succ.get(e, []):
                count[b] += count[e]
        assert max(count) <= 1
    assert torch.equal(plstm_graph.multitree(edge_index, mt), mt)


# ---------------------------------------------------------------------------------------------
# corrupted input: ValueError / TypeError naming the problem, nothing else
# ---------------------------------------------------------------------------------------------
CORRUPTIONS = ["id_past_end", "negative_id", "back_edge", "self_loop", "bad_arc",
               "nonfinite_gate", "gate_length", "index_dtype", "value_dtype", "mixed_dtype"]
EXPECT = {"id_past_end": "out of range", "negative_id": "negative", "back_edge": "cycle",
          "self_loop": "self-loop", "bad_arc": "do not meet|out of range|negative",
          "nonfinite_gate": "NaN|finite", "gate_length": "shape",
          "index_dtype": "dtype", "value_dtype": "float|dtype", "mixed_dtype": "dtype"}


def _rebuild_gates(inputs, edge_index, lg):
    """Gates sized for a changed edge_index / line_index (so that only the intended problem
    remains)."""
    heads = inputs["query"].size(1)
    g = torch.Generator().manual_seed(0)
    out = dict(inputs)
    for name, rows in (("source", edge_index.size(1)), ("mark", edge_index.size(1)),
                       ("transition", lg.size(1))):
        out[name] = torch.rand(rows, heads, generator=g, dtype=torch.float64)
    return out


@st.composite
def corrupted(draw):
    inputs, edge_index, lg = draw(problems(max_nodes=12))
    kind = draw(st.sampled_from(CORRUPTIONS))
    n = inputs["query"].size(0)
    E, L = edge_index.size(1), lg.size(1)
    rng = random.Random(draw(st.integers(0, 2 ** 32 - 1)))
    inputs = dict(inputs)
    if kind in ("id_past_end", "negative_id"):
        assume(E > 0)
        edge_index = edge_index.clone()
        edge_index[rng.randrange(2), rng.randrange(E)] = (
            n + rng.randrange(4) if kind == "id_past_end" else -1 - rng.randrange(4))
    elif kind == "back_edge":
        # close a cycle: an edge from a descendant back to an ancestor
        assume(E > 0)
        src, dst = edge_index[0].tolist(), edge_index[1].tolist()
        u = src[rng.randrange(E)]
        reach, stack = set(), [u]
        while stack:
            x = stack.pop()
            for s, d in zip(src, dst):
                if s == x and d not in reach:
                    reach.add(d)
                    stack.append(d)
        w = rng.choice(sorted(reach))
        pos = rng.randrange(E + 1)
        edge_index = torch.cat([edge_index[:, :pos], torch.tensor([[w], [u]]),
                                edge_index[:, pos:]], 1)
        lg = plstm_graph.line_graph(edge_index, num_nodes=n)
        inputs = _rebuild_gates(inputs, edge_index, lg)
    elif kind == "self_loop":
        assume(n > 0)
        u = rng.randrange(n)
        edge_index = torch.cat([edge_index, torch.tensor([[u], [u]])], 1)
        lg = plstm_graph.line_graph(edge_index, num_nodes=n) if rng.random() < 0.5 else lg
        inputs = _rebuild_gates(inputs, edge_index, lg)
    elif kind == "bad_arc":
        src, dst = edge_index[0].tolist(), edge_index[1].tolist()
        pairs = [(a, b) for a in range(E) for b in range(E) if dst[a] != src[b]]
        choice = rng.randrange(3)
        if choice == 0 and pairs:
            bad = torch.tensor([list(rng.choice(pairs))]).t()
        elif choice == 1 or E == 0:
            bad = torch.tensor([[0], [E + rng.randrange(3)]])
        else:
            bad = torch.tensor([[-1], [0]])
        pos = rng.randrange(L + 1)
        lg = torch.cat([lg[:, :pos], bad, lg[:, pos:]], 1)
        inputs = _rebuild_gates(inputs, edge_index, lg)
    elif kind == "nonfinite_gate":
        name = rng.choice([x for x in GATES if inputs[x].numel() > 0] or ["direct"])
        assume(inputs[name].numel() > 0)
        t = inputs[name].clone()
        t.view(-1)[rng.randrange(t.numel())] = rng.choice([float("nan"), float("inf"),
                                                           -float("inf")])
        inputs[name] = t
    elif kind == "gate_length":
        name = rng.choice(GATES)
        t = inputs[name]
        inputs[name] = torch.cat([t, t.new_zeros(1, t.size(1))]) if (
            t.size(0) == 0 or rng.random() < 0.5) else t[:-1]
    elif kind == "index_dtype":
        dtype = rng.choice([torch.float32, torch.float64, torch.int32, torch.int16])
        if rng.random() < 0.5:
            edge_index = edge_index.to(dtype)
        else:
            lg = lg.to(dtype)
    elif kind == "value_dtype":
        name = rng.choice(NAMES)
        inputs[name] = (inputs[name] * 4).to(rng.choice([torch.long, torch.int32, torch.bool]))
    else:  # mixed_dtype
        name = rng.choice(NAMES)
        inputs[name] = inputs[name].to(rng.choice([torch.float32, torch.bfloat16]))
    note(f"corruption={kind}")
    return kind, inputs, edge_index, lg


@FUZZ
@given(case=corrupted(), backend=st.sampled_from(BACKENDS + [None]))
def test_fuzz_corrupted_inputs_raise(case, backend):
    kind, inputs, edge_index, lg = case
    before = [t.clone() for t in list(inputs.values()) + [edge_index, lg]]
    try:
        plstm_graph.plstm_dag(*(inputs[n] for n in NAMES), edge_index, lg, backend=backend)
    except (ValueError, TypeError) as exc:
        assert re.search(EXPECT[kind], str(exc)), (kind, str(exc))
    except Exception as exc:  # noqa: BLE001  any other type breaks the contract
        pytest.fail(f"{kind}: {type(exc).__name__} instead of ValueError/TypeError: {exc}")
    else:
        pytest.fail(f"{kind}: no error raised")
    after = list(inputs.values()) + [edge_index, lg]
    for a, b in zip(after, before):
        assert a.dtype == b.dtype and torch.equal(a.nan_to_num(), b.nan_to_num())


@FUZZ
@given(case=corrupted(), method=st.sampled_from(["networkx", "torch"]))
def test_fuzz_corrupted_structure_in_dag_helpers(case, method):
    """The structural corruptions also get ValueError/TypeError from the DAG helpers."""
    kind, inputs, edge_index, lg = case
    assume(kind in ("id_past_end", "negative_id", "back_edge", "self_loop", "bad_arc",
                    "index_dtype"))
    n = inputs["query"].size(0)
    # multitree infers the node count, so an id past n is just one more node to it
    calls = [] if kind == "id_past_end" else [lambda: plstm_graph.multitree(edge_index, lg)]
    if kind != "bad_arc" and not (kind == "index_dtype" and lg.dtype != torch.long):
        calls.append(lambda: plstm_graph.topological_levels(edge_index, n, method=method))
        if kind != "back_edge":
            calls.append(lambda: plstm_graph.to_dag(edge_index, num_nodes=n))
        if kind not in ("back_edge", "self_loop"):  # a line graph of those is well defined
            calls.append(lambda: plstm_graph.line_graph(edge_index, num_nodes=n))
    for fn in calls:
        try:
            fn()
        except (ValueError, TypeError):
            pass
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"{kind}: {type(exc).__name__} instead of ValueError/TypeError: {exc}")
        else:
            pytest.fail(f"{kind}: no error raised")
