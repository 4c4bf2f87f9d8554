"""Speed and memory of plstm_dag and PLSTMConv.

Rows: the per-edge Python loop the authors' code runs (one graph at a time), the torch
level scan, its closed form (where components are small enough for padding), the native level
scan, the native closed form (where components are small enough; "(auto)" marks what
``plstm_dag`` picks by default), and ``PLSTMConv(96, 96, heads=4)`` next to
``GATConv(96, 24, heads=4)`` and ``GINConv`` on the same batches (on the dense DAG also
``PLSTMConv(64, 64, heads=4, mode="P")`` against ``GATConv(64, 16, heads=4)``, the widths of
its target). The last lines give the linear-in-edges targets as ratios of the run's rows. Graphs: batches of 1, 32,
128 and 1024 MUTAG-sized random DAGs, a dense random DAG (600 nodes, 14k edges, 215k
line-graph arcs), a 20,000-node chain and a random DAG with 300k edges. H=4, K=V=24, float32.

The column "transitions" says what the op ran on: ``arc`` is one transition per line-graph
arc (``transition [L, H]`` with ``line_index``), ``node`` one per shared node
(``transition [N, H]``, ``line_index=None``, docs/contract.md "Node-level transitions": no line
graph, O(E) work; what ``PLSTMConv`` runs in P-mode without edge features on dense graphs). The
layer row "plain call" is ``conv(x, edge_index)`` as a PyG user calls it (the layer prepares and
caches the DAG, and picks node-level transitions where the line graph is dense).

    python benchmarks/benchmark.py                 # full table (CPU: a few minutes)
    python benchmarks/benchmark.py --quick         # small sizes only
    python benchmarks/benchmark.py --device cuda   # on a GPU

"saved" is the memory autograd keeps between forward and backward (summed over the tensors
saved for backward); "peak" is the peak of torch's allocator on CUDA and is left out on CPU.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import plstm_graph  # noqa: E402
from plstm_graph.dag import (build_node_schedule, build_schedule, line_graph,  # noqa: E402
                             topological_levels)
from plstm_graph.ops.dispatch import CLOSED_FORM_MAX_NODES, resolve_algorithm  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared helpers
from _timing import median_seconds  # noqa: E402
from bench_dense import random_dag as dense_dag  # noqa: E402

H, K, V = 4, 24, 24


# ---------------------------------------------------------------------------------------------
# graphs
# ---------------------------------------------------------------------------------------------
def mutag_like_dag(rng: random.Random, offset: int = 0):
    """A molecule-sized graph (~18 nodes, ~20 bonds: a random tree plus a few ring closures)
    oriented from lower to higher id, with ids shuffled so they are no topological order."""
    n = rng.randint(12, 24)
    bonds = {(rng.randrange(i), i) for i in range(1, n)}
    while len(bonds) < n + 1:
        u, w = rng.sample(range(n), 2)
        bonds.add((min(u, w), max(u, w)))
    perm = list(range(n))
    rng.shuffle(perm)
    edges = [(perm[u], perm[w]) if perm[u] < perm[w] else (perm[w], perm[u]) for u, w in bonds]
    return n, [(u + offset, w + offset) for u, w in edges]


def batch_of(num_graphs: int, seed: int = 0):
    rng = random.Random(seed)
    edges, n_total, sizes = [], 0, []
    for _ in range(num_graphs):
        n, e = mutag_like_dag(rng, n_total)
        sizes.append((n_total, n, len(edges), len(e)))
        edges += e
        n_total += n
    return n_total, torch.tensor(edges, dtype=torch.long).t().contiguous(), sizes


def chain(n: int, seed: int = 0):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return n, torch.stack([perm[:-1], perm[1:]]), None


def random_wide_dag(num_edges: int, seed: int = 0):
    """~num_edges/3 nodes, each taking three in-edges from random earlier nodes in a window."""
    g = torch.Generator().manual_seed(seed)
    n = num_edges // 3 + 1
    heads = torch.arange(1, n).repeat_interleave(3)
    back = torch.randint(1, 200, (heads.numel(),), generator=g)
    tails = (heads - back).clamp(min=0)
    ei = torch.unique(torch.stack([tails, heads]), dim=1)
    perm = torch.randperm(n, generator=g)
    return n, perm[ei], None


# ---------------------------------------------------------------------------------------------
# the per-edge loop (how the authors' code runs: one graph at a time, one edge at a time)
# ---------------------------------------------------------------------------------------------
def per_edge_loop(q, k, v, S, T, M, D, edge_index, line_index, sizes):
    out = D[..., None] * (q * k).sum(-1, keepdim=True) * v
    rows = [out[i] for i in range(out.size(0))]
    src, dst = edge_index[0].tolist(), edge_index[1].tolist()
    incoming: Dict[int, List] = {}
    for j, (a, b) in enumerate(line_index.t().tolist()):
        incoming.setdefault(b, []).append((j, a))
    level = topological_levels(edge_index, q.size(0)).tolist()
    for n0, n, e0, ne in sizes:
        order = sorted(range(e0, e0 + ne), key=lambda e: level[src[e]])
        states = {}
        for e in order:
            u = src[e]
            c = S[e][:, None, None] * k[u][:, :, None] * v[u][:, None, :]
            for j, a in incoming.get(e, []):
                c = c + T[j][:, None, None] * states[a]
            states[e] = c
            w = dst[e]
            rows[w] = rows[w] + M[e][:, None] * torch.einsum("hkv,hk->hv", c, q[w])
    return torch.stack(rows)


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
def saved_bytes(fn: Callable) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def inputs(num_nodes, num_edges, num_arcs, device, requires_grad=True):
    g = torch.Generator().manual_seed(0)

    def r(*shape, scale=1.0):
        return (torch.rand(*shape, generator=g) * scale).to(device).requires_grad_(requires_grad)

    return [r(num_nodes, H, K), r(num_nodes, H, K), r(num_nodes, H, V), r(num_edges, H),
            r(num_arcs, H, scale=0.5), r(num_edges, H), r(num_nodes, H)]


def fmt_time(t: Optional[float]) -> str:
    if t is None:
        return "-"
    return f"{t * 1e3:.2f} ms" if t < 1 else f"{t:.2f} s"


def fmt_bytes(b: Optional[int]) -> str:
    if b is None:
        return "-"
    return f"{b / 2**20:.1f} MiB"


def run_case(name, num_nodes, edge_index, sizes, device, args, rows):
    edge_index = edge_index.to(device)
    t0 = time.perf_counter()
    level = topological_levels(edge_index, num_nodes, method="torch")
    line = line_graph(edge_index, num_nodes)
    sched = build_schedule(edge_index, line, num_nodes, node_level=level)
    t_sched = time.perf_counter() - t0
    E, L = edge_index.size(1), line.size(1)
    xs = inputs(num_nodes, E, L, device)
    base = dict(graph=name, N=num_nodes, E=E, L=L, levels=sched.num_levels,
                schedule=fmt_time(t_sched))
    repeat = args.repeat

    def record(impl, fwd, fwdbwd, saved=None, transitions="arc"):
        rows.append(dict(base, impl=impl, transitions=transitions, fwd=fmt_time(fwd),
                         fwd_bwd=fmt_time(fwdbwd), saved=fmt_bytes(saved), _fwdbwd=fwdbwd))
        print(f"# {name}: {impl} ({transitions}): fwd {fmt_time(fwd)}, fwd+bwd "
              f"{fmt_time(fwdbwd)}", flush=True)

    def record_call(impl, call, transitions="arc"):
        """Times ``call()`` forward only (no grad) and forward + backward of its sum."""
        def fwd():
            with torch.no_grad():
                call()

        def fb():
            call().sum().backward()

        record(impl, median_seconds(fwd, device, repeat), median_seconds(fb, device, repeat),
               saved_bytes(call), transitions)

    # the per-edge loop: only where it finishes in reasonable time
    if sizes is not None and len(sizes) <= args.max_loop_graphs and device == "cpu":
        def loop_fwd():
            with torch.no_grad():
                per_edge_loop(*xs, edge_index, line, sizes)

        def loop_fb():
            per_edge_loop(*xs, edge_index, line, sizes).sum().backward()

        record("per-edge loop", median_seconds(loop_fwd, device, 5),
               median_seconds(loop_fb, device, 5))

    arc_budget = args.max_arc_state is None or E + L <= args.max_arc_state

    native_ok = plstm_graph.ops.native.available(torch.device(device))
    closed_ok = (plstm_graph.ops.native.closed_form_available(torch.device(device)) and
                 sched.max_component_nodes <= CLOSED_FORM_MAX_NODES)
    variants = [("torch", "scan", False)] if arc_budget else []
    if args.recompute and arc_budget:
        variants.append(("torch", "scan", True))
    if resolve_algorithm(None, "torch", torch.device(device), sched, K, V) == "closed_form":
        variants.append(("torch", "closed_form", False))
    if native_ok:
        variants.append(("native", "scan", False))
        if args.recompute:
            variants.append(("native", "scan", True))
    if closed_ok:
        variants.append(("native", "closed_form", False))
    for backend, algorithm, recompute in variants:
        def call(backend=backend, algorithm=algorithm, recompute=recompute):
            return plstm_graph.plstm_dag(*xs, edge_index, line, schedule=sched, backend=backend,
                                         algorithm=algorithm, recompute=recompute,
                                         validate=False)

        label = f"plstm_dag {backend}" + (" closed form" if algorithm == "closed_form" else "")
        label += " recompute" if recompute else ""
        if backend == "native" and not recompute and algorithm == resolve_algorithm(
                None, "native", torch.device(device), sched, K, V):
            label += " (auto)"
        record_call(label, call)

    # what a caller without a prebuilt schedule pays: levels, schedule and checks in the call
    if native_ok and E <= 100_000:
        record_call("plstm_dag native (auto), schedule built in the call",
                    lambda: plstm_graph.plstm_dag(*xs, edge_index, line))

    # node-level transitions: one gate per shared node, no line graph
    node_sched = build_node_schedule(edge_index, num_nodes, node_level=level)
    xs_node = list(xs)
    xs_node[4] = inputs(num_nodes, E, num_nodes, device)[4]  # transition [N, H]
    node_backends = ["torch"] + (["native"] if plstm_graph.ops.native.node_scan_available(
        torch.device(device)) else [])
    for backend in node_backends:
        record_call(f"plstm_dag {backend} scan",
                    lambda backend=backend: plstm_graph.plstm_dag(
                        *xs_node, edge_index, None, schedule=node_sched, backend=backend,
                        validate=False), transitions="node")

    if args.layers and E <= 100_000:
        from torch_geometric.nn import GATConv, GINConv

        x = torch.randn(num_nodes, 96, device=device, requires_grad=True)
        conv = plstm_graph.PLSTMConv(96, 96, heads=H, key_dim=K, value_dim=V).to(device)
        gat = GATConv(96, 24, heads=4).to(device)
        gin = GINConv(torch.nn.Sequential(torch.nn.Linear(96, 96), torch.nn.ReLU(),
                                          torch.nn.Linear(96, 96))).to(device)
        conv(x, edge_index)  # prepares and caches the DAG, as a PyG user's first call
        plain = "node" if conv.prepare(edge_index, num_nodes).line_index is None else "arc"
        layer_calls = {
            "PLSTMConv(96,96,heads=4), prepared": (
                lambda: conv(x, edge_index, line_index=line, node_level=level,
                             schedule=sched), "arc"),
            "PLSTMConv(96,96,heads=4), plain call": (lambda: conv(x, edge_index), plain),
            "GATConv(96,24,heads=4)": (lambda: gat(x, edge_index), "-"),
            "GINConv(MLP 96)": (lambda: gin(x, edge_index), "-"),
        }
        if sizes is None and name.startswith("dense"):  # the dense-DAG target's own widths
            x64 = torch.randn(num_nodes, 64, device=device, requires_grad=True)
            conv64 = plstm_graph.PLSTMConv(64, 64, heads=4, mode="P").to(device)
            gat64 = GATConv(64, 16, heads=4).to(device)
            conv64(x64, edge_index)
            plain64 = ("node" if conv64.prepare(edge_index, num_nodes).line_index is None
                       else "arc")
            layer_calls["PLSTMConv(64,64,heads=4), plain call"] = (
                lambda: conv64(x64, edge_index), plain64)
            layer_calls["GATConv(64,16,heads=4)"] = (lambda: gat64(x64, edge_index), "-")
        for label, (call, transitions) in layer_calls.items():
            if transitions != "arc" or arc_budget:
                record_call(label, call, transitions)


def print_table(rows, device):
    cols = ["graph", "N", "E", "L", "levels", "schedule", "impl", "transitions", "fwd",
            "fwd_bwd", "saved"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("| " + " | ".join(c.ljust(widths[c]) for c in cols) + " | x loop |")
    print("|" + "|".join("-" * (widths[c] + 2) for c in cols) + "|--------|")
    loop = {}
    for r in rows:
        if r["impl"] == "per-edge loop":
            loop[r["graph"]] = r["_fwdbwd"]
        ref = loop.get(r["graph"])
        speedup = f"{ref / r['_fwdbwd']:.0f}x" if ref and r["impl"] != "per-edge loop" else ""
        print("| " + " | ".join(str(r[c]).ljust(widths[c]) for c in cols) +
              f" | {speedup.ljust(6)} |")


def print_targets(rows) -> None:
    """The linear-in-edges issue's targets, as ratios of rows of this run (forward+backward)."""
    t = {(r["graph"], r["impl"]): r["_fwdbwd"] for r in rows}

    def ratio(graph, a, b):
        return t[graph, a] / t[graph, b] if (graph, a) in t and (graph, b) in t else None

    checks = [
        ("32 x MUTAG-sized", "per-edge loop",
         "plstm_dag native (auto), schedule built in the call", "x",
         "native plstm_dag, schedule built in the call, against the per-edge loop", ">= 300x"),
        ("128 x MUTAG-sized", "PLSTMConv(96,96,heads=4), prepared", "GATConv(96,24,heads=4)",
         "", "PLSTMConv(96) / GATConv(96, 24), prepared", "<= 1.5x"),
        ("128 x MUTAG-sized", "PLSTMConv(96,96,heads=4), plain call", "GATConv(96,24,heads=4)",
         "", "PLSTMConv(96) / GATConv(96, 24), plain call", "<= 1.5x"),
    ]
    checks += [(g, "PLSTMConv(64,64,heads=4), plain call", "GATConv(64,16,heads=4)", "",
                f"{g}: PLSTMConv(64, mode='P') / GATConv(64, 16), plain call", "<= 3x")
               for g in sorted({r["graph"] for r in rows if r["graph"].startswith("dense")})]
    lines = []
    for graph, a, b, kind, what, target in checks:
        value = ratio(graph, a, b)
        if value is not None:
            lines.append(f"#   {what}: {value:.2f}x (target {target})" if not kind else
                         f"#   {what}: {value:.0f}x (target {target})")
    if lines:
        print("# targets (ratios of the rows above):")
        print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="small graphs only")
    parser.add_argument("--batches", default="1,32,128,1024")
    parser.add_argument("--chain", type=int, default=20_000)
    parser.add_argument("--wide", type=int, default=300_000, help="edges of the wide DAG")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--max-loop-graphs", type=int, default=128,
                        help="largest batch for the (slow) per-edge loop")
    parser.add_argument("--no-layers", dest="layers", action="store_false")
    parser.add_argument("--recompute", action="store_true", help="also time recompute=True")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dense", default="600,14000",
                        help="nodes,edges of the dense random DAG ('' to skip it)")
    parser.add_argument("--max-arc-state", type=int, default=None,
                        help="skip the per-arc torch rows and the prepared layer row on graphs "
                             "with more than this many edges + arcs (the torch scan on the "
                             "dense DAG takes seconds)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"# machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else "")
          + f", native={plstm_graph.WITH_NATIVE}")
    rows: List[dict] = []
    for b in [int(x) for x in args.batches.split(",") if x]:
        n, ei, sizes = batch_of(b)
        run_case(f"{b} x MUTAG-sized", n, ei, sizes, args.device, args, rows)
    if args.dense:
        n, e = (int(v) for v in args.dense.split(","))
        run_case(f"dense DAG {n} nodes", n, dense_dag(n, e, seed=1), None, args.device, args,
                 rows)
    if not args.quick:
        n, ei, _ = chain(args.chain)
        run_case(f"chain {args.chain}", n, ei, None, args.device, args, rows)
        n, ei, _ = random_wide_dag(args.wide)
        run_case(f"random DAG {ei.size(1)} edges", n, ei, None, args.device, args, rows)
    print_table(rows, args.device)
    print_targets(rows)
    return rows


if __name__ == "__main__":
    main()
