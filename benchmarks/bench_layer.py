"""PLSTMConv against GATConv, forward + backward, the two taking turns call by call.

``benchmark.py`` times one row after the other, so a slower or faster phase of a shared
machine lands on one of them and moves their ratio (on the 2-core VMs here by up to 10%).
Here every round calls each layer once, in turn, on the same input, and the ratio is that of
the two medians. Layers: ``PLSTMConv(C, C, heads=4)`` on a prepared batch (line graph, levels
and schedule passed, as a ``DAGPlan`` view gives them) and ``GATConv(C, C / 4, heads=4)``, on
``--graphs`` MUTAG-sized random DAGs (the graphs of ``benchmark.py``).

    python benchmarks/bench_layer.py --threads 1
    python benchmarks/bench_layer.py --threads 2 --graphs 32 --rounds 300
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import plstm_graph  # noqa: E402
from plstm_graph.dag import build_schedule, line_graph, topological_levels  # noqa: E402
from torch_geometric.nn import GATConv  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark import batch_of  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--graphs", type=int, default=128)
    parser.add_argument("--channels", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=10, help="rounds not counted")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, edge_index, _ = batch_of(args.graphs)
    level = topological_levels(edge_index, n)
    line = line_graph(edge_index, n)
    schedule = build_schedule(edge_index, line, n, node_level=level)
    c = args.channels
    x = torch.randn(n, c, requires_grad=True)
    conv = plstm_graph.PLSTMConv(c, c, heads=4)
    gat = GATConv(c, c // 4, heads=4)
    calls = {
        f"PLSTMConv({c}, {c}, heads=4)": lambda: conv(x, edge_index, line_index=line,
                                                      node_level=level, schedule=schedule),
        f"GATConv({c}, {c // 4}, heads=4)": lambda: gat(x, edge_index),
    }
    times = {name: [] for name in calls}
    for round_ in range(args.warmup + args.rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call().sum().backward()
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    plstm, gat_t = medians.values()
    print(f"# {args.graphs} MUTAG-sized graphs ({n} nodes, {edge_index.size(1)} edges), "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, "
          f"native={plstm_graph.WITH_NATIVE}, {args.rounds} rounds taking turns")
    for name, t in medians.items():
        print(f"  {name:<26} fwd+bwd {t * 1e3:7.2f} ms")
    print(f"  ratio {plstm / gat_t:.2f}x")
    return dict(medians, ratio=plstm / gat_t)


if __name__ == "__main__":
    main()
