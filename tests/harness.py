"""The one test harness for every numeric test of ``plstm_dag`` and the layers above it.

* Graph builders: :func:`ei` (from pairs), :func:`random_dag` and the large vectorised
  generators (from ``benchmarks/_graphs.py``, shared with the benchmarks), :func:`chain`,
  :func:`fan_graph`, :func:`tree`, :func:`precision_graph`, :func:`isolated_graph`,
  :func:`union_graph`, :func:`shuffled_union`, :func:`undirected_graph` (PyG ``Data``), and :data:`GRAPHS`, the named small cases
  (random with random node ids, chains, trees, fans, dense, empty, edgeless, odd sizes).
* The implementation matrix: :data:`BACKENDS`, :data:`IMPLS` (backend x algorithm, arc transitions),
  :data:`NODE_IMPLS` (node-level transitions), :data:`DEVICES`, :func:`impl_kwargs`.
* Tolerances per dtype against the float64 oracle: :data:`TOL`.
* Runners: :func:`run` (the package, forward and the seven gradients), :func:`run_oracle`
  (the float64 oracle of ``oracle.py``), :func:`assert_matches_oracle` and
  :func:`assert_close`.

The oracles themselves (the sequential per-edge recurrence and the multitree pruning) are in
``oracle.py``, which shares no code with the package.
"""
import os
import random
import sys

import torch

import plstm_graph
from plstm_graph.ops import native
from oracle import chain_oracle, multitree_oracle, node_generations, plstm_oracle  # noqa: F401

_BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "benchmarks")
if _BENCHMARKS not in sys.path:
    sys.path.insert(0, _BENCHMARKS)

from _graphs import (butterfly_dag, chain_dag, disjoint, random_dag,  # noqa: E402,F401
                     random_inputs, uniform_dag, windowed_dag)

NAMES = ("query", "key", "value", "source", "transition", "mark", "direct")

# ---------------------------------------------------------------------------------------------
# the implementation matrix
# ---------------------------------------------------------------------------------------------
_NATIVE_CPU = plstm_graph.WITH_NATIVE and native.available(torch.device("cpu"))
BACKENDS = ["torch"] + (["native"] if _NATIVE_CPU else [])  # automatic algorithm
IMPLS = ["torch/scan", "torch/closed_form"]  # "backend/algorithm", arc transitions
if _NATIVE_CPU:
    IMPLS += ["native/scan", "native/closed_form"]
NODE_IMPLS = ["torch/scan", "torch/closed_form"]  # node-level transitions
if plstm_graph.WITH_NATIVE and native.node_scan_available("cpu"):
    NODE_IMPLS.append("native/scan")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and native.WITH_CUDA else [])


def impl_kwargs(impl):
    """``"native/scan"`` -> ``dict(backend="native", algorithm="scan")``; a plain backend name
    (or None) passes through with the automatic algorithm."""
    if impl is None or "/" not in impl:
        return dict(backend=impl)
    backend, algorithm = impl.split("/")
    return dict(backend=backend, algorithm=algorithm)


# ---------------------------------------------------------------------------------------------
# tolerances against the float64 oracle, by the dtype the implementation ran in
# ---------------------------------------------------------------------------------------------
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10),
       torch.float32: dict(rtol=2e-4, atol=2e-5),
       torch.bfloat16: dict(rtol=6e-2, atol=6e-2)}
TIGHT = TOL[torch.float64]


# ---------------------------------------------------------------------------------------------
# graph builders (small; the large ones come from benchmarks/_graphs.py)
# ---------------------------------------------------------------------------------------------
def ei(pairs):
    """``[2, E]`` long edges from ``(tail, head)`` pairs."""
    if not pairs:
        return torch.empty(2, 0, dtype=torch.long)
    return torch.tensor(pairs, dtype=torch.long).t().contiguous()


def chain(n, seed=0, skips=0, shuffle=True):
    """A path through ``n`` nodes plus ``skips`` random forward skip edges; behind shuffled
    node ids and in shuffled edge order unless ``shuffle=False`` (then ``i -> i + 1``)."""
    if not shuffle:
        return torch.stack([torch.arange(n - 1), torch.arange(1, n)])
    rng = random.Random(seed)
    perm = list(range(n))
    rng.shuffle(perm)
    pairs = [(perm[i], perm[i + 1]) for i in range(n - 1)]
    for _ in range(skips):
        i = rng.randrange(n - 2)
        pairs.append((perm[i], perm[rng.randrange(i + 2, n)]))
    rng.shuffle(pairs)
    return ei(pairs)


def tree(n, seed=0):
    """A random out-tree on ``n`` shuffled node ids (every node but the root has one parent):
    a multitree already, so D-mode pruning keeps every arc."""
    rng = random.Random(seed)
    perm = list(range(n))
    rng.shuffle(perm)
    pairs = [(perm[rng.randrange(i)], perm[i]) for i in range(1, n)]
    rng.shuffle(pairs)
    return ei(pairs)


def fan_graph(fan_in=12, fan_out=13, seed=0):
    """fan_in sources -> hub -> fan_out sinks, behind a shuffled id permutation, plus a few
    edges from sources straight to sinks. Returns ``(edge_index, num_nodes)``."""
    n = fan_in + fan_out + 1
    rng = random.Random(seed)
    perm = list(range(n))
    rng.shuffle(perm)
    hub = perm[0]
    srcs, sinks = perm[1:fan_in + 1], perm[fan_in + 1:]
    pairs = [(s, hub) for s in srcs] + [(hub, t) for t in sinks]
    pairs += [(srcs[i], sinks[i]) for i in range(3)]
    rng.shuffle(pairs)
    return ei(pairs), n


def precision_graph():
    """12 sources -> hub -> 20-long chain, with skip edges, behind shuffled ids: many
    accumulations into every state. Returns ``(edge_index, num_nodes)``."""
    n = 33
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(4)).tolist()
    pairs = [(i, 12) for i in range(12)] + [(12 + i, 13 + i) for i in range(20)]
    pairs += [(i, 14 + i) for i in range(0, 12, 2)]
    edge_index = torch.tensor([[perm[u] for u, _ in pairs], [perm[w] for _, w in pairs]])
    node_generations(edge_index, n)  # raises on a cycle
    return edge_index, n


ISOLATED = [0, 3, 6, 9, 13, 15]


def isolated_graph():
    """A random DAG relabelled into 16 nodes with the nodes :data:`ISOLATED` (the last id
    among them) on no edge. Returns ``(edge_index, 16)``."""
    edge_index = random_dag(10, 0.4, seed=3)
    new_id = torch.tensor([1, 2, 4, 5, 7, 8, 10, 11, 12, 14])
    return new_id[edge_index], 16


UNION_PARTS = ((lambda: (random_dag(7, 0.5, seed=1), 7)), (lambda: (ei([]), 3)),
               (lambda: (random_dag(11, 0.3, seed=2), 11)),
               (lambda: (fan_graph(11, 4, seed=3)[0], 16)),
               (lambda: (random_dag(1, 0.5, seed=0), 1)))


def union_parts():
    """The parts of :func:`union_graph`: random DAGs, an edgeless graph, a fan, one node."""
    return [part() for part in UNION_PARTS]


def union_graph():
    """The disjoint union of :func:`union_parts` (a batch as PyG lays it out)."""
    return disjoint(union_parts())


def shuffled_union(graphs, seed):
    """Disjoint union of DAGs with the node ids of the union shuffled (as a shuffled batch)."""
    edge_index, total = disjoint(graphs)
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return perm[edge_index], total


GRAPHS = {
    "single": lambda: (random_dag(1, 0.5, seed=0), 1),
    "pair": lambda: (random_dag(2, 1.0, seed=1), 2),
    "random7": lambda: (random_dag(7, 0.5, seed=2), 7),
    "random12": lambda: (random_dag(12, 0.35, seed=3), 12),
    "sparse31": lambda: (random_dag(31, 0.12, seed=4), 31),
    "diamond": lambda: (ei([(3, 1), (3, 0), (1, 2), (0, 2), (2, 4), (1, 4)]), 5),
    "chain": lambda: (chain(64, seed=2, skips=6), 64),
    "tree": lambda: (tree(23, seed=5), 23),
    "fan": lambda: fan_graph(12, 13, seed=1),
    "precision": precision_graph,
    "isolated": isolated_graph,
    "union": union_graph,
    "dense60": lambda: (random_dag(60, 0.3, seed=6), 60),
    "edgeless": lambda: (ei([]), 5),
    "empty": lambda: (ei([]), 0),
}


def undirected_graph(num_nodes, seed, edge_dim=None, feat=6):
    """A PyG ``Data`` storing both directions of every edge of a random DAG (PyG's undirected
    convention), with float64 node features and, with ``edge_dim``, edge attributes equal on
    both directions."""
    from torch_geometric.data import Data

    dag = random_dag(num_nodes, 0.25, seed)
    edge_index = torch.cat([dag, dag.flip(0)], dim=1)
    g = torch.Generator().manual_seed(seed)
    data = Data(x=torch.randn(num_nodes, feat, generator=g, dtype=torch.float64),
                edge_index=edge_index, num_nodes=num_nodes)
    if edge_dim is not None:
        attr = torch.randn(dag.size(1), edge_dim, generator=g, dtype=torch.float64)
        data.edge_attr = torch.cat([attr, attr])
    return data


def lines(edge_index, num_nodes, mode):
    """The line graph of ``mode`` ``"P"`` (full) or ``"D"`` (its multitree pruning)."""
    line_index = plstm_graph.line_graph(edge_index, num_nodes=num_nodes)
    return plstm_graph.multitree(edge_index, line_index) if mode == "D" else line_index


def case(edge_index, num_nodes, mode="P", heads=2, kdim=3, vdim=4, seed=0,
         dtype=torch.float64):
    """Random inputs for ``edge_index`` and its ``mode`` line graph: ``(inputs, line_index)``."""
    line_index = lines(edge_index, num_nodes, mode)
    inputs = random_inputs(num_nodes, edge_index.size(1), line_index.size(1), heads, kdim, vdim,
                           seed=seed, dtype=dtype)
    return inputs, line_index


# ---------------------------------------------------------------------------------------------
# runners
# ---------------------------------------------------------------------------------------------
def leaf(inputs, dtype=None, device=None):
    """Fresh leaves that require gradients (cast to ``dtype`` / moved to ``device``). Without
    a cast they alias the inputs, strides included, so non-contiguous inputs stay so."""
    return {n: t.detach().to(dtype=dtype or t.dtype, device=device or t.device)
            .requires_grad_(True) for n, t in inputs.items()}


def grads_of(y, inputs, cotangent):
    """The seven input gradients of ``y`` under ``cotangent``, zeros where unused."""
    xs = [inputs[n] for n in NAMES]
    if not y.requires_grad:
        return [torch.zeros_like(x) for x in xs]
    gs = torch.autograd.grad(y, xs, cotangent, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(xs, gs)]


def cotangent_for(inputs):
    """A fixed float64 upstream gradient shaped like the output for ``inputs``."""
    n, h = inputs["query"].shape[:2]
    vdim = inputs["value"].shape[-1]
    return torch.randn(n, h, vdim, generator=torch.Generator().manual_seed(5),
                       dtype=torch.float64)


def run(inputs, edge_index, line_index, cotangent=None, backend="torch", **kw):
    """``plstm_dag`` on fresh leaves of ``inputs``: ``(y, grads)`` (grads in :data:`NAMES`
    order). ``backend`` is an entry of :data:`IMPLS` or a plain backend name."""
    x = leaf(inputs)
    kw.update(impl_kwargs(backend))
    y = plstm_graph.plstm_dag(*(x[n] for n in NAMES), edge_index, line_index, **kw)
    if cotangent is None:
        cotangent = torch.randn(y.shape, generator=torch.Generator().manual_seed(5),
                                dtype=torch.float64)
    return y.detach(), grads_of(y, x, cotangent.to(dtype=y.dtype, device=y.device))


def run_oracle(inputs, edge_index, line_index, cotangent):
    """The float64 oracle on the CPU for the same values: ``(y, grads)``."""
    x = leaf(inputs, torch.float64, "cpu")
    y = plstm_oracle(*(x[n] for n in NAMES), edge_index.cpu(), line_index.cpu())
    return y.detach(), grads_of(y, x, cotangent.to(dtype=torch.float64, device="cpu"))


def assert_close(got, want, dtype=torch.float64, what="", **tol):
    """``got`` against ``want`` in float64 on the CPU, with :data:`TOL` of ``dtype`` unless
    ``tol`` is given."""
    tol = tol or TOL[dtype]
    torch.testing.assert_close(got.detach().double().cpu(), want.detach().double().cpu(),
                               msg=lambda m: f"{what}: {m}", **tol)


def assert_all_close(got, want, dtype=torch.float64, what="", **tol):
    """Outputs and the seven gradients of two :func:`run` results."""
    (y1, g1), (y2, g2) = got, want
    assert_close(y1, y2, dtype, f"{what} out", **tol)
    for name, a, b in zip(NAMES, g1, g2):
        assert a.shape == b.shape, name
        assert_close(a, b, dtype, f"{what} grad of {name}", **tol)


def assert_matches_oracle(inputs, edge_index, line_index, backend="torch", **tol):
    """One implementation against the float64 oracle, forward and all seven gradients, with
    :data:`TOL` of the inputs' dtype unless ``tol`` is given. Returns the package's result."""
    dtype = inputs["query"].dtype
    g = cotangent_for(inputs)
    y, grads = run(inputs, edge_index, line_index, g, backend=backend)
    y_ref, grads_ref = run_oracle(inputs, edge_index, line_index, g)
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert_all_close((y, grads), (y_ref, grads_ref), dtype, backend or "auto", **tol)
    return y, grads


def perturb(module, seed=0):
    """Random values for the zero-initialised gate weights, so that every input matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return module


def identical(a, b):
    """Two :func:`run` results equal bit for bit."""
    (y1, g1), (y2, g2) = a, b
    assert torch.equal(y1, y2)
    for name, x1, x2 in zip(NAMES, g1, g2):
        assert torch.equal(x1, x2), name


def forbid_line_graphs(monkeypatch, module, names=("line_graph", "build_schedule")):
    """Make ``module``'s line-graph builders (by default the line graph and the arc schedule)
    fail the test when called: for the paths that must not build one."""
    def refuse(*args, **kwargs):
        raise AssertionError("line_graph was built")

    for name in names:
        monkeypatch.setattr(module, name, refuse)
