"""``torch.compile`` of a PLSTMNet training step on prepared batches, against eager.

The batches come from a shuffled ``DAGDataLoader`` over the bundled MUTAG after ``PrepareDAG``
(batches of 64, the last one smaller, so graph sizes and batch sizes change every step). The
plan of every batch is built eagerly, outside the compiled function
(``DAGPlan.from_data(batch).build()``): index bookkeeping is data-dependent Python and C++
that a compiler cannot trace, and it runs once per batch either way.

Reports the time to the first compiled step, the number of graph breaks and recompiles
(``torch._dynamo`` counters) and the median step time of eager and compiled after the first
epoch, the two models taking turns step by step (same batches, same initial weights).

    python benchmarks/bench_compile.py --threads 1 --epochs 3
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import plstm_graph  # noqa: E402
from plstm_graph import DAGDataLoader, DAGPlan, PLSTMNet, PrepareDAG  # noqa: E402
from plstm_graph.datasets import load_mutag  # noqa: E402


def step_fn(model):
    def step(x, edge_attr, batch, y, plan, num_graphs):
        out = model(x, None, edge_attr, batch, plan=plan, batch_size=num_graphs)
        loss = F.cross_entropy(out, y)
        loss.backward()
        return loss
    return step


def run(args):
    torch.manual_seed(0)
    root = tempfile.mkdtemp(prefix="plstm_bench_compile_")  # processed with PrepareDAG here
    dataset = load_mutag(root=root, pre_transform=PrepareDAG())
    loader = DAGDataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                           generator=torch.Generator().manual_seed(0))
    batches = [(b, DAGPlan.from_data(b).build()) for _ in range(args.epochs) for b in loader]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    runs = {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)  # the same initial weights for both
        model = PLSTMNet(dataset.num_features, args.hidden, dataset.num_classes, edge_dim=4)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        # the model is compiled, as PyG recommends; loss and backward stay outside
        step = step_fn(torch.compile(model, dynamic=True, backend=args.backend)
                       if name == "compiled" else model)
        runs[name] = dict(step=step, opt=opt, times=[], first=None)
    # the two take turns, step by step, so that a busier or quieter phase of a shared machine
    # hits both alike (timed one after the other, they differed by the machine's mood)
    for i, (b, plan) in enumerate(batches):
        for r in runs.values():
            start = time.perf_counter()
            r["opt"].zero_grad(set_to_none=True)
            r["step"](b.x, plan.edge_attr, b.batch, b.y, plan, b.num_graphs)
            r["opt"].step()
            elapsed = time.perf_counter() - start
            if i == 0:
                r["first"] = elapsed
            else:
                r["times"].append(elapsed)
    counters = torch._dynamo.utils.counters
    if args.verbose:
        for reason, count in counters["graph_break"].items():
            print(f"graph break x{count}: {reason[:300]}")
    results = {}
    for name, r in runs.items():
        times = r["times"]
        results[name] = dict(first=r["first"],
                             median=statistics.median(times[len(loader):] or times),
                             breaks=sum(counters["graph_break"].values()),
                             graphs=counters["stats"]["unique_graphs"])
    print(f"# {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"thread(s), native={plstm_graph.WITH_NATIVE}, MUTAG batches of {args.batch_size}, "
          f"hidden {args.hidden}, {len(batches)} steps, backend {args.backend}, duck shapes "
          f"{'off' if args.no_duck_shape else 'on'}")
    print("| | first step | step (median after epoch 1) | graph breaks | graphs compiled |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r['first'] * 1e3:.0f} ms | {r['median'] * 1e3:.1f} ms | "
              f"{r['breaks'] if name == 'compiled' else '-'} | "
              f"{r['graphs'] if name == 'compiled' else '-'} |")
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--backend", default="inductor", help="torch.compile backend")
    p.add_argument("--no-duck-shape", action="store_true",
                   help="torch.fx.experimental._config.use_duck_shape = False (no recompile when "
                        "sizes that were equal in one batch differ in a later one)")
    p.add_argument("--verbose", action="store_true", help="print the graph-break reasons")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.no_duck_shape:
        import torch.fx.experimental._config as fx_config

        fx_config.use_duck_shape = False
    run(args)


if __name__ == "__main__":
    main()
