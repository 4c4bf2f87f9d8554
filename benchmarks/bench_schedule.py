"""Schedule construction and torch-scan cost on deep and wide DAGs.

For every graph: topological levels (networkx vs the ``"torch"`` method), the full line graph,
its multitree pruning, ``build_schedule`` on both line graphs, and one float32
forward + backward of ``plstm_dag`` on the full line graph (P-mode) with a prebuilt schedule,
on the torch backend and (when built) the native one. Every graph runs in a fresh
subprocess, so ``peak RSS`` is that graph's own high-water mark; ``mt dRSS`` is the growth of
the resident set while ``multitree`` ran (sampled every 2 ms).

Graphs (node ids are a random permutation of a hidden topological order, edges shuffled):

* ``chain``: a path with ``--chain`` edges (``--chain`` levels).
* ``windowed``: ``--nodes`` nodes, ``--edges`` edges, each from a uniformly random node among
  the ``--window`` before its head (a few in-edges per node, deep).
* ``uniform``: ``--edges`` edges between uniformly random node pairs (shallow, many roots).
* ``butterfly``: the FFT butterfly with ``2**--log-width`` lanes (a multitree whose root sets
  grow to the full width; the dense-bitset case of ``multitree``).

Times are the best of ``--repeat`` runs (the reference multitree, the package's Python
implementation, runs once).

Usage::

    python benchmarks/bench_schedule.py                       # the requirement's sizes
    python benchmarks/bench_schedule.py --edges 30000 --nodes 10000 --chain 2000
    python benchmarks/bench_schedule.py --graphs windowed --reference   # also Python multitree
    python benchmarks/bench_schedule.py --threads 1           # torch intra-op threads
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import plstm_graph  # noqa: E402
from _graphs import butterfly_dag, chain_dag, uniform_dag, windowed_dag  # noqa: E402
from plstm_graph import dag  # noqa: E402
from plstm_graph.ops import native  # noqa: E402

GRAPHS = ("chain", "windowed", "uniform", "butterfly")


# ---------------------------------------------------------------------------------------------
# graphs
# ---------------------------------------------------------------------------------------------
def make_graph(name, args):
    if name == "chain":
        return chain_dag(args.chain, args.seed)[0]
    if name == "windowed":
        return windowed_dag(args.nodes, args.edges, args.window, args.seed)
    if name == "uniform":
        return uniform_dag(args.nodes, args.edges, args.seed)
    if name == "butterfly":
        return butterfly_dag(args.log_width)
    raise ValueError(name)


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


class RssPeak:
    """Peak resident set size while the block runs (sampled by a thread)."""

    def __enter__(self):
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.delta = self.peak - self.start


REPEAT = 1


def timed(fn, *args, **kwargs):
    """Result and best wall time of ``REPEAT`` calls (the machine may be shared)."""
    best = float("inf")
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t0)
    return out, best


def scan_fwd_bwd(edge_index, line_index, schedule, backend, args):
    n = schedule.num_nodes
    e, l = edge_index.size(1), line_index.size(1)
    g = torch.Generator().manual_seed(0)
    h, k, v = args.heads, args.kdim, args.vdim

    def r(*shape, lo=-1.0, hi=1.0):
        return (torch.rand(*shape, generator=g) * (hi - lo) + lo).requires_grad_(True)

    raw = torch.rand(l, h, generator=g) * 6 - 3
    denom = torch.zeros(e, h).index_add_(0, line_index[0], raw.abs())
    t = (raw / (0.5 + denom[line_index[0]])).requires_grad_(True)  # P-mode normalisation
    xs = [r(n, h, k), r(n, h, k), r(n, h, v), r(e, h, lo=0, hi=1), t, r(e, h, lo=0, hi=1),
          r(n, h, lo=0, hi=1)]
    fwd = bwd = float("inf")
    for _ in range(REPEAT):
        for x in xs:
            x.grad = None
        t0 = time.perf_counter()
        y = plstm_graph.plstm_dag(*xs, edge_index, line_index, schedule=schedule,
                                  backend=backend)
        t1 = time.perf_counter()
        y.sum().backward()
        t2 = time.perf_counter()
        fwd, bwd = min(fwd, t1 - t0), min(bwd, t2 - t1)
    finite = bool(torch.isfinite(y).all()) and all(bool(torch.isfinite(x.grad).all())
                                                    for x in xs)
    return fwd, bwd, finite


def measure(name, args):
    global REPEAT
    REPEAT = max(1, args.repeat)
    if args.threads:
        torch.set_num_threads(args.threads)
    edge_index = make_graph(name, args)
    n = int(edge_index.max()) + 1
    row = dict(graph=name, N=n, E=edge_index.size(1))
    if args.networkx:
        lv_nx, row["t_lv_nx"] = timed(dag.topological_levels, edge_index, n, method="networkx")
    level, row["t_lv_torch"] = timed(dag.topological_levels, edge_index, n, method="torch")
    if args.networkx:
        assert torch.equal(level, lv_nx), "torch levels differ from networkx"
    row["levels"] = int(level.max()) + 1 if n else 0
    line_index, row["t_line"] = timed(dag.line_graph, edge_index, n)
    row["L"] = line_index.size(1)
    with RssPeak() as mem:
        pruned, row["t_mt"] = timed(dag.multitree, edge_index, line_index, level)
    row["mt_drss_mb"] = mem.delta / 2**20
    row["L_mt"] = pruned.size(1)
    if args.reference:
        with RssPeak() as mem:
            t0 = time.perf_counter()  # once: it is the slow one
            ref = dag._multitree_checked(edge_index, line_index, level, method="python")
            row["t_mt_ref"] = time.perf_counter() - t0
        row["mt_ref_drss_mb"] = mem.delta / 2**20
        assert torch.equal(ref, pruned), "multitree differs from its Python reference"
    schedule, row["t_sched"] = timed(dag.build_schedule, edge_index, line_index, n,
                                     node_level=level)
    _, row["t_sched_mt"] = timed(dag.build_schedule, edge_index, pruned, n, node_level=level)
    if args.scan:
        fwd, bwd, ok = scan_fwd_bwd(edge_index, line_index, schedule, "torch", args)
        row["t_scan"], row["t_scan_fwd"], row["scan_finite"] = fwd + bwd, fwd, ok
        if native.available(torch.device("cpu")):
            fwd, bwd, ok = scan_fwd_bwd(edge_index, line_index, schedule, "native", args)
            row["t_native"], row["native_finite"] = fwd + bwd, ok
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["threads"] = torch.get_num_threads()
    return row


COLUMNS = [("graph", "graph", "{}"), ("E", "E", "{:,}"), ("L", "L", "{:,}"),
           ("L_mt", "L_multitree", "{:,}"), ("levels", "levels", "{:,}"),
           ("t_lv_nx", "lv nx s", "{:.3f}"), ("t_lv_torch", "lv torch s", "{:.3f}"),
           ("t_line", "line s", "{:.3f}"), ("t_mt", "multitree s", "{:.3f}"),
           ("mt_drss_mb", "mt dRSS MB", "{:.0f}"), ("t_mt_ref", "mt ref s", "{:.2f}"),
           ("mt_ref_drss_mb", "ref dRSS MB", "{:.0f}"), ("t_sched", "sched s", "{:.3f}"),
           ("t_sched_mt", "sched mt s", "{:.3f}"), ("t_scan", "torch f+b s", "{:.2f}"),
           ("t_native", "native f+b s", "{:.2f}"), ("peak_rss_mb", "peak RSS MB", "{:.0f}")]


def print_table(rows):
    cols = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    cells = [[c[1] for c in cols]]
    for r in rows:
        cells.append([c[2].format(r[c[0]]) if c[0] in r else "-" for c in cols])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    for i, row in enumerate(cells):
        print("  ".join(x.rjust(w) for x, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    bad = [r["graph"] for r in rows if not r.get("scan_finite", True) or
           not r.get("native_finite", True)]
    if bad:
        print("NON-FINITE scan output or gradients on:", ", ".join(bad))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--graphs", default="chain,windowed,uniform",
                   help=f"comma-separated subset of {','.join(GRAPHS)}")
    p.add_argument("--chain", type=int, default=20_000, help="chain length (edges = levels)")
    p.add_argument("--nodes", type=int, default=100_000, help="nodes of windowed/uniform")
    p.add_argument("--edges", type=int, default=300_000, help="edges of windowed/uniform")
    p.add_argument("--window", type=int, default=1000, help="window of the windowed DAG")
    p.add_argument("--log-width", type=int, default=13, help="butterfly has 2**this lanes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--kdim", type=int, default=4)
    p.add_argument("--vdim", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3,
                   help="time every stage (but the reference) this often, report the best")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--no-networkx", dest="networkx", action="store_false",
                   help="skip the networkx levelling")
    p.add_argument("--no-scan", dest="scan", action="store_false",
                   help="skip the forward/backward scan")
    p.add_argument("--reference", action="store_true",
                   help="also time the Python multitree (the reference of the native op) "
                        "and check it gives the same arcs")
    p.add_argument("--in-process", action="store_true",
                   help="run all graphs in this process (peak RSS is then cumulative)")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = [g for g in args.graphs.split(",") if g]
    for g in names:
        if g not in GRAPHS:
            p.error(f"unknown graph {g!r}; choose from {GRAPHS}")
    if args.json:  # child mode: one graph, one JSON line
        print(json.dumps(measure(names[0], args)))
        return
    rows = []
    for name in names:
        if args.in_process:
            rows.append(measure(name, args))
        else:
            # a later --graphs overrides an earlier one
            child = list(argv if argv is not None else sys.argv[1:])
            cmd = [sys.executable, os.path.abspath(__file__), *child, f"--graphs={name}",
                   "--json"]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                sys.stderr.write(out.stderr)
                raise SystemExit(f"{name}: child failed with code {out.returncode}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"# {name} done", file=sys.stderr, flush=True)
    print(f"torch {torch.__version__}, threads {rows[0]['threads'] if rows else '?'}, "
          f"native {'yes' if native.available(torch.device('cpu')) else 'no'}, "
          f"scan heads={args.heads} K={args.kdim} V={args.vdim} float32 P-mode full line graph")
    print_table(rows)


if __name__ == "__main__":
    main()
