"""Where the closed form beats the level scan: native fwd+bwd of both algorithms on batches of
equal-sized graphs, by graph size, next to the dispatcher's cost estimates.

    python benchmarks/bench_algorithms.py [--threads 1] [--nodes 2000]

Graphs: "tree" (a random tree plus a few ring closures, molecule- and AST-like) and "dense" (a
random DAG with about three in-edges per node, Bayesian-network-like), ids shuffled, batched
up to about --nodes nodes. H=4, K=V=24, float32. The last column says which algorithm
``plstm_dag(..., algorithm=None)`` picks. ``--backend torch`` compares the two pure-PyTorch
implementations instead of the native ones.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import plstm_graph  # noqa: E402
from plstm_graph.dag import build_schedule  # noqa: E402

from plstm_graph.ops import dispatch as dispatcher  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared helpers
from _timing import median_seconds  # noqa: E402

H, K, V = 4, int(os.getenv("BENCH_K", 24)), int(os.getenv("BENCH_V", 24))
NAMES = ("query", "key", "value", "source", "transition", "mark", "direct")


def graph(kind: str, n: int, rng: random.Random):
    if kind == "tree":
        pairs = {(rng.randrange(i), i) for i in range(1, n)}
        while len(pairs) < n - 1 + max(1, n // 10):
            u, w = rng.sample(range(n), 2)
            pairs.add((min(u, w), max(u, w)))
    else:
        pairs = set()
        for w in range(1, n):
            for _ in range(3):
                pairs.add((rng.randrange(w), w))
    perm = list(range(n))
    rng.shuffle(perm)
    return [(perm[u], perm[w]) if perm[u] < perm[w] else (perm[w], perm[u]) for u, w in pairs]


def batch(kind: str, n: int, total: int, seed: int = 0):
    rng = random.Random(seed)
    edges, off = [], 0
    for _ in range(max(1, total // n)):
        edges += [(u + off, w + off) for u, w in graph(kind, n, rng)]
        off += n
    return off, torch.tensor(edges, dtype=torch.long).t().contiguous()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--sizes", default="8,16,32,64,128,256,512")
    parser.add_argument("--backend", default="native", choices=("native", "torch"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} threads, H={H}, K={K}, V={V}, float32, fwd+bwd")
    print("| graphs | nodes per graph | N | E | scan | closed form | scan / closed | "
          "cost scan / closed | auto picks |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in ("tree", "dense"):
        for n in (int(x) for x in args.sizes.split(",")):
            num_nodes, ei = batch(kind, n, args.nodes)
            li = plstm_graph.line_graph(ei, num_nodes)
            s = build_schedule(ei, li, num_nodes)
            g = torch.Generator().manual_seed(0)
            shapes = [(num_nodes, H, K), (num_nodes, H, K), (num_nodes, H, V),
                      (ei.size(1), H), (li.size(1), H), (ei.size(1), H), (num_nodes, H)]
            xs = [torch.rand(*sh, generator=g).requires_grad_() for sh in shapes]
            with torch.no_grad():
                xs[4].mul_(0.5)
            row = {}
            for algorithm in ("scan", "closed_form"):
                def call(algorithm=algorithm):
                    y = plstm_graph.plstm_dag(*xs, ei, li, schedule=s, backend=args.backend,
                                              algorithm=algorithm, validate=False)
                    y.sum().backward()
                row[algorithm] = median_seconds(call, "cpu", 30, budget=10.0)
            if args.backend == "native":
                cost = dispatcher.scan_cost(s, K, V) / dispatcher.closed_form_cost(s, K, V)
            else:
                cost = (dispatcher.torch_scan_cost(s, K, V) /
                        dispatcher.torch_closed_form_cost(s, K, V))
            auto = dispatcher.resolve_algorithm(None, args.backend, torch.device("cpu"), s, K, V)
            if os.getenv("BENCH_FEATURES"):
                print("#features", kind, n, K, V, num_nodes, ei.size(1), li.size(1),
                      s.path_work, s.ancestor_pairs, s.num_components, s.max_component_nodes,
                      s.max_component_edges, row["scan"], row["closed_form"])
            print(f"| {kind} | {n} | {num_nodes} | {ei.size(1)} | {row['scan'] * 1e3:.2f} ms | "
                  f"{row['closed_form'] * 1e3:.2f} ms | "
                  f"{row['scan'] / row['closed_form']:.2f} | {cost:.2f} | {auto} |", flush=True)


if __name__ == "__main__":
    main()
