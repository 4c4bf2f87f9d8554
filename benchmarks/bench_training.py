"""Training speed of PLSTMNet against GIN, as a PyG user trains them.

One epoch = one pass over the data set with AdamW steps (forward, cross-entropy / MSE,
backward, step), batches from a shuffled ``DataLoader``. Rows:

* ``plstm plain``: ``PLSTMNet(in, hidden, out, num_layers=1)(x, edge_index, edge_attr, batch)``
  on raw PyG batches (the layer orients and prepares the DAG of every batch itself);
* ``plstm prepared``: the same model on batches of graphs that went through
  :class:`~plstm_graph.PrepareDAG` once (``pre_transform``), batched by
  :class:`~plstm_graph.DAGDataLoader`, with ``DAGPlan.from_data(batch)``;
* ``plstm linear-op``: the prepared model with the pLSTM op replaced by a plain linear map of
  the values (what the backbone around the op costs);
* ``gin``: PyG's ``GIN`` with four ``GINConv`` layers of the same width, batch norm, sum pooling
  and a linear head (the baseline of the examples).

Data: the bundled MUTAG (188 molecules, batches of 64) and 1,000 random 8-node DAGs (a
regression target, batches of 128). Times are the median over ``--epochs`` epochs after one
warm-up epoch; models are timed in turns, epoch by epoch, so that a slower or faster phase of a
shared machine hits all of them alike. ``--profile`` prints a breakdown of one training step by
region (``torch.profiler``).

    python benchmarks/bench_training.py                  # both data sets, 1 thread
    python benchmarks/bench_training.py --threads 2 --profile
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import plstm_graph  # noqa: E402
from plstm_graph import DAGDataLoader, DAGPlan, PLSTMNet, PrepareDAG  # noqa: E402
from torch_geometric.data import Data  # noqa: E402
from torch_geometric.loader import DataLoader  # noqa: E402
from torch_geometric.nn import GIN, global_add_pool  # noqa: E402


def random_dags(num_graphs: int, num_nodes: int = 8, seed: int = 0) -> List[Data]:
    """Random 8-node DAGs (each possible forward pair an edge with probability 0.3, node ids
    shuffled), 5 one-hot node types, a regression target that needs the graph: the number of
    nodes with an ancestor of type 0, normalised."""
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for _ in range(num_graphs):
        upper = torch.triu(torch.rand(num_nodes, num_nodes, generator=gen) < 0.3, diagonal=1)
        src, dst = upper.nonzero().t()
        perm = torch.randperm(num_nodes, generator=gen)
        edge_index = torch.stack([perm[src], perm[dst]])
        kind = torch.randint(0, 5, (num_nodes,), generator=gen)
        reach = torch.zeros(num_nodes, dtype=torch.bool)
        reach[kind == 0] = True
        order = torch.argsort(perm)  # nodes in topological order (by position before shuffle)
        adj = torch.zeros(num_nodes, num_nodes, dtype=torch.bool)
        adj[edge_index[0], edge_index[1]] = True
        for w in order.tolist():
            reach[w] |= bool((adj[:, w] & reach).any())
        graphs.append(Data(x=F.one_hot(kind, 5).float(), edge_index=edge_index,
                           y=reach.float().mean().view(1, 1)))
    return graphs


class GINModel(torch.nn.Module):
    def __init__(self, in_channels, hidden, out_channels):
        super().__init__()
        self.gnn = GIN(in_channels, hidden, num_layers=4, norm="batch_norm")
        self.head = torch.nn.Linear(hidden, out_channels)

    def forward(self, batch):
        return self.head(global_add_pool(self.gnn(batch.x, batch.edge_index), batch.batch))


class PLSTMPlain(torch.nn.Module):
    def __init__(self, in_channels, hidden, out_channels, edge_dim, **kwargs):
        super().__init__()
        self.edge_dim = edge_dim
        self.net = PLSTMNet(in_channels, hidden, out_channels, num_layers=1, edge_dim=edge_dim,
                            **kwargs)

    def forward(self, batch):
        return self.net(batch.x, batch.edge_index, batch.get("edge_attr"), batch.batch)


class PLSTMPrepared(PLSTMPlain):
    def forward(self, batch):
        plan = DAGPlan.from_data(batch)
        return self.net(batch.x, batch.dag_edge_index, batch.get("dag_edge_attr"),
                        batch.batch, plan=plan)


@contextmanager
def linear_op():
    """Replace the pLSTM op inside PLSTMConv by ``value @ W`` (no graph work at all)."""
    import plstm_graph.nn.conv as conv

    original = conv.plstm_dag

    def fake(query, key, value, *args, **kwargs):
        return value * 0.5 + query[..., :value.size(-1)]

    conv.plstm_dag = fake
    try:
        yield
    finally:
        conv.plstm_dag = original


@contextmanager
def no_mlp():
    """Skip the MLP blocks (their cost is the difference to the full model)."""
    from plstm_graph.nn.blocks import MLPBlock

    original = MLPBlock.forward
    MLPBlock.forward = lambda self, x: x
    try:
        yield
    finally:
        MLPBlock.forward = original


@contextmanager
def no_degree_encoding():
    """Replace the sin/cos degree features by a constant (no graph work, same shapes)."""
    import plstm_graph.models as models

    original = models.degree_encoding

    def const(edge_index, num_nodes, dim=8):
        return torch.zeros(num_nodes, 2 * dim)

    models.degree_encoding = const
    try:
        yield
    finally:
        models.degree_encoding = original


def make_epoch(model, loader, task: str) -> Callable[[], float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def epoch() -> float:
        model.train()
        start = time.perf_counter()
        for batch in loader:
            opt.zero_grad()
            out = model(batch)
            loss = (F.cross_entropy(out, batch.y) if task == "class"
                    else F.mse_loss(out, batch.y))
            loss.backward()
            opt.step()
        return time.perf_counter() - start

    return epoch


def datasets():
    from plstm_graph.datasets import load_mutag

    mutag = list(load_mutag())
    mutag_prepared = [PrepareDAG()(g) for g in mutag]
    dags = random_dags(1000)
    prep = PrepareDAG(orient="none")
    dags_prepared = [prep(g) for g in dags]
    return {
        "MUTAG (batch 64)": dict(raw=mutag, prepared=mutag_prepared, batch=64, task="class",
                                 in_channels=7, out=2, edge_dim=4),
        "8-node DAGs (batch 128)": dict(raw=dags, prepared=dags_prepared, batch=128,
                                        task="regress", in_channels=5, out=1, edge_dim=None),
    }


def time_models(spec, epochs: int, hidden: int, breakdown: bool = False,
                **kwargs) -> Dict[str, float]:
    torch.manual_seed(0)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    raw = DataLoader(spec["raw"], batch_size=spec["batch"], shuffle=True, generator=gen())
    prepared = DAGDataLoader(spec["prepared"], batch_size=spec["batch"], shuffle=True,
                             generator=gen())
    args = (spec["in_channels"], hidden, spec["out"], spec["edge_dim"])
    runs = {
        "gin": (make_epoch(GINModel(*args[:3]), raw, spec["task"]), None),
        "plstm plain": (make_epoch(PLSTMPlain(*args, **kwargs), raw, spec["task"]), None),
        "plstm prepared": (make_epoch(PLSTMPrepared(*args, **kwargs), prepared, spec["task"]),
                           None),
        "plstm linear-op": (make_epoch(PLSTMPrepared(*args, **kwargs), prepared,
                                       spec["task"]), linear_op),
    }
    if breakdown:
        for name, ctx in (("plstm prepared, no MLP", no_mlp),
                          ("plstm prepared, no degree encoding", no_degree_encoding)):
            runs[name] = (make_epoch(PLSTMPrepared(*args, **kwargs), prepared, spec["task"]),
                          ctx)
    times: Dict[str, List[float]] = {name: [] for name in runs}
    for round_ in range(epochs + 1):
        for name, (epoch, ctx) in runs.items():
            if ctx is None:
                t = epoch()
            else:
                with ctx():
                    t = epoch()
            if round_ > 0:  # the first round warms up allocators and caches
                times[name].append(t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def profile_step(spec, hidden: int) -> None:
    """Self CPU time of one training step of the plain model, by operator (top rows)."""
    from torch.profiler import ProfilerActivity, profile

    model = PLSTMPlain(spec["in_channels"], hidden, spec["out"], spec["edge_dim"])
    loader = DataLoader(spec["raw"], batch_size=spec["batch"], shuffle=True)
    step = make_epoch(model, loader, spec["task"])
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=5, help="timed epochs per model")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--breakdown", action="store_true",
                   help="also time the prepared model without its MLPs and without the degree "
                        "encoding, and print where an epoch's time goes")
    p.add_argument("--only", default=None, help="substring of the data set to run")
    p.add_argument("--mlp-ratio", type=int, default=None, help="PLSTMNet mlp_ratio (default: "
                   "the library's)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"{args.threads} thread(s), native={plstm_graph.WITH_NATIVE}, hidden {args.hidden}")
    for name, spec in datasets().items():
        if args.only and args.only not in name:
            continue
        kwargs = {} if args.mlp_ratio is None else dict(mlp_ratio=args.mlp_ratio)
        times = time_models(spec, args.epochs, args.hidden, breakdown=args.breakdown,
                            **kwargs)
        gin = times["gin"]
        print(f"\n{name}: epoch time (median of {args.epochs}), ratio to GIN")
        for model, t in times.items():
            print(f"  {model:<34} {t * 1e3:9.1f} ms   {t / gin:5.2f}x")
        if args.breakdown:
            full = times["plstm prepared"]
            parts = {
                "DAG preparation (plain - prepared)": times["plstm plain"] - full,
                "pLSTM op (prepared - linear-op)": full - times["plstm linear-op"],
                "MLP blocks": full - times["plstm prepared, no MLP"],
                "degree encoding": full - times["plstm prepared, no degree encoding"],
            }
            parts["rest (projections, gates, norms, head, optimizer, Python)"] = (
                full - sum(v for k, v in parts.items() if not k.startswith("DAG")))
            print(f"  where the prepared model's {full * 1e3:.1f} ms go:")
            for part, t in parts.items():
                print(f"    {part:<58} {t * 1e3:8.1f} ms  {t / full * 100:5.1f}%")
        if args.profile:
            profile_step(spec, args.hidden)


if __name__ == "__main__":
    main()
