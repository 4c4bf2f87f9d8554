"""Dense DAGs: PLSTMConv on node-level transitions against its per-arc path and GATConv.

P-mode without edge features has one transition per shared node (docs/contract.md, "Node-level transitions"), so the layer
runs the node-level scan: O(E K V) work and O(N K V) state, no line graph. The per-arc path on
the full line graph (``L = sum_n indeg(n) outdeg(n)`` arcs) computes the same function. Rows:

* ``plstm node``: ``PLSTMConv(64, 64, heads=4, mode="P")`` called as ``conv(x, edge_index)``;
* ``plstm arc``: the same layer and weights forced onto the per-arc path;
* ``gat``: PyG's ``GATConv(64, 16, heads=4)`` (64 output channels) on the same graph;
* ``plstm arc +edge`` / ``plstm factorised +edge``: the layer with 8 edge features
  (``edge_dim=8``), its P-mode transitions per arc from ``[x_n; e_a; e_b]`` on the line graph
  (``transition_form="arc"``) or node-level as ``t_n beta_b`` (``"factorised"``, O(E), no
  line graph). These two are different parametrisations, not one function.

Each row is forward + backward (``out.square().mean().backward()``), median of ``--runs`` runs
after one warm-up call (which also prepares and caches the DAG: preparation time is printed
separately). Graphs: a seeded random DAG with 600 nodes and ~14k edges, and a seeded random DAG
with 30,000 nodes and 300k edges (P-mode rows only; the arc row is skipped with a note when
its estimated memory exceeds ``--arc-mem-gb``).

    python benchmarks/bench_dense.py                 # 1 and 2 threads
    python benchmarks/bench_dense.py --threads 1 --runs 3
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import plstm_graph  # noqa: E402
from plstm_graph import PLSTMConv  # noqa: E402
from torch_geometric.nn import GATConv  # noqa: E402


def random_dag(num_nodes: int, num_edges: int, seed: int) -> torch.Tensor:
    """``num_edges`` distinct forward pairs of a hidden random order, drawn uniformly, behind
    shuffled node ids (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    pairs = set()
    while len(pairs) < num_edges:
        a = torch.randint(0, num_nodes, (2 * (num_edges - len(pairs)),), generator=gen)
        b = torch.randint(0, num_nodes, (a.numel(),), generator=gen)
        keep = a != b
        lo, hi = torch.minimum(a, b)[keep], torch.maximum(a, b)[keep]
        pairs.update(zip(lo.tolist(), hi.tolist()))
    pairs = sorted(pairs)  # (a fixed order, then a seeded random subset of the right size)
    perm = torch.randperm(len(pairs), generator=gen)[:num_edges]
    edge_index = torch.tensor(pairs, dtype=torch.long).t()[:, perm]
    ids = torch.randperm(num_nodes, generator=gen)
    return ids[edge_index].contiguous()


def num_arcs(edge_index: torch.Tensor, num_nodes: int) -> int:
    indeg = torch.bincount(edge_index[1], minlength=num_nodes)
    outdeg = torch.bincount(edge_index[0], minlength=num_nodes)
    return int((indeg * outdeg).sum())


def time_step(module, x, edge_index, runs: int, *extra):
    """(first call incl. preparation, median of ``runs`` forward+backward) in ms."""
    def step():
        module.zero_grad(set_to_none=True)
        xg = x.detach().requires_grad_(True)
        out = module(xg, edge_index, *extra)
        out.square().mean().backward()

    t0 = time.perf_counter()
    step()
    first = (time.perf_counter() - t0) * 1e3
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return first, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--big-runs", type=int, default=3)
    parser.add_argument("--arc-mem-gb", type=float, default=8.0,
                        help="skip the arc path on the big graph above this estimate")
    parser.add_argument("--no-big", action="store_true", help="only the 600-node graph")
    args = parser.parse_args()

    torch.manual_seed(0)
    graphs = [("dense 600", 600, random_dag(600, 14_000, seed=1))]
    if not args.no_big:
        graphs.append(("random 30k/300k", 30_000, random_dag(30_000, 300_000, seed=2)))

    print(f"torch {torch.__version__}, native={plstm_graph.WITH_NATIVE}, "
          f"{platform.machine()}, {os.cpu_count()} cores")
    for name, n, edge_index in graphs:
        print(f"- {name}: N={n}, E={edge_index.size(1)}, "
              f"L={num_arcs(edge_index, n)} line-graph arcs, "
              f"levels={int(plstm_graph.topological_levels(edge_index, n, method='torch').max()) + 1}")
    print()
    print("| graph | threads | model | first call (ms) | fwd+bwd median (ms) |")
    print("|---|---|---|---|---|")
    for name, n, edge_index in graphs:
        x = torch.randn(n, 64, generator=torch.Generator().manual_seed(3))
        big = n > 1000
        conv = PLSTMConv(64, 64, heads=4, mode="P")
        with torch.no_grad():  # non-zero gate weights, as after some training
            for gate in conv._gate_modules():
                gate.node.weight.normal_(0.0, 0.1)
        arc = PLSTMConv(64, 64, heads=4, mode="P")
        arc.load_state_dict(conv.state_dict())
        arc._arc_transitions = True
        models = [("plstm node", conv, ())]
        # arc path: states and state gradients [E, H, K, V] plus the [L] arc index work
        arc_gb = (3 * edge_index.size(1) * 4 * 16 * 16 * 4 + 40 * num_arcs(edge_index, n)) / 1e9
        if not big or arc_gb <= args.arc_mem_gb:
            models.append(("plstm arc", arc, ()))
        if not big:
            models.append(("gat", GATConv(64, 16, heads=4), ()))
        edge_attr = torch.randn(edge_index.size(1), 8, generator=torch.Generator().manual_seed(4))
        for form in ("arc", "factorised"):
            if form == "arc" and big and arc_gb > args.arc_mem_gb:
                continue
            with_edges = PLSTMConv(64, 64, heads=4, mode="P", edge_dim=8, transition_form=form)
            with torch.no_grad():
                for gate in with_edges._gate_modules():
                    gate.node.weight.normal_(0.0, 0.1)
                    for lin in gate.edges:
                        lin.weight.normal_(0.0, 0.1)
            models.append((f"plstm {form} +edge", with_edges, (edge_attr,)))
        runs = args.big_runs if big else args.runs
        for threads in args.threads:
            torch.set_num_threads(threads)
            for label, model, extra in models:
                if isinstance(model, PLSTMConv):  # the first call prepares the DAG again
                    model._cache.clear()
                first, med = time_step(model, x, edge_index, runs, *extra)
                print(f"| {name} | {threads} | {label} | {first:.1f} | {med:.1f} |", flush=True)
            if big and not any(label == "plstm arc" for label, _, _ in models):
                print(f"| {name} | {threads} | plstm arc | skipped: ~{arc_gb:.1f} GB estimated "
                      f"> --arc-mem-gb | |")
        with torch.no_grad():  # the two paths are one function
            diff = float((conv(x, edge_index) - arc(x, edge_index)).abs().max()) \
                if models[1][0] == "plstm arc" else float("nan")
        print(f"| {name} | | max abs diff node vs arc | {diff:.2e} | |")


if __name__ == "__main__":
    main()
