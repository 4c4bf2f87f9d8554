#!/usr/bin/env python
"""Node classification on one DAG too large for a full-graph pass, by sampled ancestor cones.

The graph is generated on the fly (seeded): ``--layers`` layers of ``--width`` nodes (one
million nodes and about 2.7 million edges by default), node ids shuffled. A node of layer 0 is
a *source*; so is a node of a later layer with probability ``--source-prob``. Every other node
gets 1 to 5 in-edges from the previous three layers. Each source has a random colour (one-hot
in its features); the others have none. The label of a node is the colour that reaches it with
the most weight when every node passes ``--decay`` times its colour mass on, split evenly over
its out-edges (a source starts with mass 1 of its colour): nearby sources dominate, and the
task can only be solved by looking at ancestors.

Training samples, for each batch of target nodes, the ancestor cone the pLSTM recurrence
reads (:class:`~plstm_graph.loader.DAGNeighborLoader`, ``--num-neighbors`` in-edges per node
and hop, as many hops as entries) and scores the targets only. The model is a stack of
``PLSTMConv`` layers with the library's defaults in pre-norm residual blocks.

Reported: throughput (target nodes per second, training and inference), the peak resident
memory of the process (``getrusage`` maxrss) and the largest batch. ``--small`` runs a graph
small enough for a full-graph pass and compares full-graph predictions with mini-batch ones
(with the training sampler and with a full-depth, all-in-edges sampler, which is exact).

Run ``python examples/large_dag.py`` (a few minutes on two CPU cores) or ``--small``.
Under ``torchrun`` (``torchrun --standalone --nproc_per_node=2 examples/large_dag.py``, or
the multi-machine form in ``distributed_training.py``) every process generates the same graph,
samples the cones of its own share of the targets and trains one copy of the model with
``DistributedDataParallel`` (gloo, CPU). Ends with a one-line ``SUMMARY``.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import resource
import sys
import time
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

try:
    import plstm_graph
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    import plstm_graph

from torch_geometric.data import Data
from tqdm.auto import tqdm

from plstm_graph import PLSTMConv
from plstm_graph.loader import DAGNeighborLoader


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def make_dag(layers: int, width: int, source_prob: float, colors: int, decay: float,
             seed: int, max_in_degree: int = 5, span: int = 3) -> Data:
    """The layered random DAG of the module docstring, as a PyG ``Data`` with ``x``, ``y``,
    ``layer`` and train/val/test masks (80/10/10)."""
    g = torch.Generator().manual_seed(seed)
    n = layers * width
    layer = torch.arange(n) // width  # in the hidden topological order
    is_source = torch.rand(n, generator=g) < source_prob
    is_source[:width] = True
    sinks = (~is_source).nonzero().view(-1)  # nodes that get in-edges
    indeg = torch.randint(1, max_in_degree + 1, (sinks.numel(),), generator=g)
    dst = torch.repeat_interleave(sinks, indeg)
    # parent layer: one to `span` layers back (nearer ones likelier), clipped at layer 0
    back = torch.multinomial(torch.tensor([0.6, 0.25, 0.15][:span]), dst.numel(),
                             replacement=True, generator=g) + 1
    src_layer = (layer[dst] - back).clamp(min=0)
    src = src_layer * width + torch.randint(0, width, (dst.numel(),), generator=g)
    key = torch.unique(src * n + dst)  # drop repeated edges
    src, dst = key // n, key % n

    # colour mass, layer by layer in topological order
    color = torch.randint(0, colors, (n,), generator=g)
    outdeg = torch.bincount(src, minlength=n).clamp(min=1).to(torch.float64)
    mass = torch.zeros(n, colors, dtype=torch.float64)
    mass[is_source, color[is_source]] = 1.0
    by_layer = torch.argsort(layer[dst], stable=True)
    src_s, dst_s = src[by_layer], dst[by_layer]
    bounds = torch.searchsorted(layer[dst_s], torch.arange(layers + 1))
    for ell in range(1, layers):
        lo, hi = int(bounds[ell]), int(bounds[ell + 1])
        s, d = src_s[lo:hi], dst_s[lo:hi]
        mass.index_add_(0, d, decay * mass[s] / outdeg[s, None])
    y = mass.argmax(-1)

    x = torch.zeros(n, colors + 1)
    x[is_source, color[is_source]] = 1.0
    x[:, colors] = is_source.float()

    # shuffle the ids, so that nothing can rely on them being topological
    perm = torch.randperm(n, generator=g)  # old id -> new id
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    split = torch.rand(n, generator=g)
    data = Data(x=x[inv], y=y[inv], edge_index=torch.stack([perm[src], perm[dst]]),
                layer=layer[inv], num_nodes=n)
    data.train_mask = split[inv] < 0.8
    data.val_mask = (split[inv] >= 0.8) & (split[inv] < 0.9)
    data.test_mask = split[inv] >= 0.9
    data.num_classes = colors
    return data


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
class ConeNet(torch.nn.Module):
    """Encoder, ``num_layers`` pre-norm residual blocks ``h + PLSTMConv(LayerNorm(h))``
    (P-mode, the library's defaults otherwise), LayerNorm and a linear head."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, num_layers: int = 2):
        super().__init__()
        self.encoder = torch.nn.Linear(in_channels, hidden)
        self.norms = torch.nn.ModuleList(torch.nn.LayerNorm(hidden) for _ in range(num_layers))
        self.convs = torch.nn.ModuleList(PLSTMConv(hidden, hidden) for _ in range(num_layers))
        self.norm = torch.nn.LayerNorm(hidden)
        self.head = torch.nn.Linear(hidden, out_channels)

    def forward(self, x, edge_index):
        # P-mode without edge features: each layer runs on node-level transitions, O(E) work
        # and no line graph, and prepares the batch's DAG itself (levels and schedule)
        h = self.encoder(x)
        for norm, conv in zip(self.norms, self.convs):
            h = h + conv(norm(h), edge_index)
        return self.head(self.norm(h))


# ---------------------------------------------------------------------------------------------
# training and evaluation
# ---------------------------------------------------------------------------------------------
class Stats:
    """Throughput and the largest batch seen."""

    def __init__(self):
        self.targets = 0
        self.seconds = 0.0
        self.largest = dict(nodes=0, edges=0, stubs=0)

    def batch(self, batch, seconds):
        self.targets += batch.batch_size
        self.seconds += seconds
        size = dict(nodes=batch.num_nodes, edges=batch.edge_index.size(1),
                    stubs=batch.num_stub_nodes)
        if size["nodes"] > self.largest["nodes"]:
            self.largest = size

    @property
    def rate(self) -> float:
        return self.targets / max(self.seconds, 1e-9)


def peak_rss_mb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # KiB on Linux


def loader_for(data, mask_or_nodes, num_neighbors, batch_size, shuffle, seed, stubs=True,
               num_workers=0):
    # with worker processes each samples from its own (differently seeded) global generator
    sampling = torch.Generator().manual_seed(seed + 1) if num_workers == 0 else None
    return DAGNeighborLoader(data, num_neighbors, input_nodes=mask_or_nodes,
                             batch_size=batch_size, shuffle=shuffle, keep_out_degree=stubs,
                             generator=torch.Generator().manual_seed(seed),
                             sampling_generator=sampling, num_workers=num_workers,
                             check_acyclic=False)  # generated layer by layer: a DAG


def subset(mask: torch.Tensor, count: Optional[int], seed: int) -> torch.Tensor:
    """At most ``count`` random nodes of ``mask`` (all of them for ``None``)."""
    nodes = mask.nonzero().view(-1)
    if count is None or count >= nodes.numel():
        return nodes
    g = torch.Generator().manual_seed(seed)
    return nodes[torch.randperm(nodes.numel(), generator=g)[:count]]


def train_epoch(model, loader, optimizer, stats: Stats, desc: str, quiet: bool):
    """``(loss sum, targets)`` of one epoch over this process's targets."""
    model.train()
    total, count = 0.0, 0
    bar = tqdm(loader, desc=desc, disable=quiet, dynamic_ncols=True, leave=False)
    start = time.perf_counter()
    for batch in bar:  # the clock runs while the loader samples, too
        optimizer.zero_grad()
        out = model(batch.x, batch.edge_index)[:batch.batch_size]  # targets only
        loss = F.cross_entropy(out, batch.y[:batch.batch_size])
        loss.backward()
        optimizer.step()
        now = time.perf_counter()
        stats.batch(batch, now - start)
        total += float(loss.detach()) * batch.batch_size
        count += batch.batch_size
        bar.set_postfix(loss=f"{total / count:.3f}", targets_per_s=f"{stats.rate:.0f}")
        start = time.perf_counter()
    return total, count


@torch.no_grad()
def predict(model, loader, stats: Optional[Stats] = None, desc: str = "eval",
            quiet: bool = True):
    """``(node ids, logits)`` of every target the loader yields."""
    model.eval()
    ids, logits = [], []
    start = time.perf_counter()
    for batch in tqdm(loader, desc=desc, disable=quiet, dynamic_ncols=True, leave=False):
        out = model(batch.x, batch.edge_index)[:batch.batch_size]
        if stats is not None:
            stats.batch(batch, time.perf_counter() - start)
        ids.append(batch.n_id[:batch.batch_size])
        logits.append(out)
        start = time.perf_counter()
    if not ids:
        return torch.empty(0, dtype=torch.long), torch.empty(0, model.head.out_features)
    return torch.cat(ids), torch.cat(logits)


def accuracy(data, ids, logits) -> float:
    return float((logits.argmax(-1) == data.y[ids]).float().mean()) if ids.numel() else 0.0


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--small", action="store_true",
                   help="a small DAG (30 x 150 nodes) and the full-graph comparison")
    p.add_argument("--layers", type=int, default=None,
                   help="DAG layers (default 100, --small 30)")
    p.add_argument("--width", type=int, default=None,
                   help="nodes per layer (default 10000, --small 150)")
    p.add_argument("--source-prob", type=float, default=0.1,
                   help="probability that a node after layer 0 is a source")
    p.add_argument("--colors", type=int, default=4, help="number of colours (classes)")
    p.add_argument("--decay", type=float, default=0.5,
                   help="share of its colour mass a node passes on")
    p.add_argument("--num-neighbors", default="4,3,3,2",
                   help="in-edges sampled per node and hop, comma-separated (-1: all)")
    p.add_argument("--no-stubs", dest="stubs", action="store_false",
                   help="sample without the out-degree stub edges (faster; P-mode transitions "
                        "of a cone node are then normalised over its out-edges in the cone "
                        "only, unlike in a full-graph pass)")
    p.add_argument("--batch-size", type=int, default=256, help="target nodes per batch")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default 3, --small 10)")
    p.add_argument("--train-targets", type=int, default=None,
                   help="training targets drawn per epoch (default 20000, --small all)")
    p.add_argument("--eval-targets", type=int, default=None,
                   help="test targets scored (default 10000, --small all)")
    p.add_argument("--hidden", type=int, default=32, help="hidden width")
    p.add_argument("--num-layers", type=int, default=2, help="PLSTMConv layers")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op CPU threads")
    p.add_argument("--num-workers", type=int, default=0,
                   help="processes that sample training batches while the model trains")
    p.add_argument("--seed", type=int, default=0, help="seed of graph, init and sampling")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    small = args.small
    defaults = dict(layers=(30, 100), width=(150, 10000), epochs=(10, 3),
                    train_targets=(None, 20000), eval_targets=(None, 10000))
    for key, (if_small, if_large) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, if_small if small else if_large)
    try:
        args.num_neighbors = [int(k) for k in args.num_neighbors.split(",") if k.strip()]
    except ValueError:
        p.error(f"--num-neighbors must be comma-separated ints, got {args.num_neighbors!r}")
    if not args.num_neighbors:
        p.error("--num-neighbors needs at least one hop")
    if args.layers < 1 or args.width < 1 or args.epochs < 1 or args.batch_size < 1:
        p.error("--layers, --width, --epochs and --batch-size must be positive")
    return args


def full_graph_comparison(model, data, args, sampled: Dict[str, object]) -> Dict[str, float]:
    """Full-graph predictions next to mini-batch ones on the test nodes."""
    test = data.test_mask.nonzero().view(-1)
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        full = model(data.x, data.edge_index)
        full_seconds = time.perf_counter() - start
    full_test = full[test]
    exact_loader = loader_for(data, test, [-1] * args.layers, args.batch_size, False, args.seed)
    ids, exact = predict(model, exact_loader)
    order = torch.argsort(ids)
    exact = exact[order]
    ids_s, logits_s = sampled["ids"], sampled["logits"]
    sampled_test = logits_s[torch.argsort(ids_s)]
    assert torch.equal(ids[order], test) and torch.equal(ids_s[torch.argsort(ids_s)], test)
    return dict(
        full_acc=accuracy(data, test, full_test),
        sampled_acc=accuracy(data, test, sampled_test),
        exact_acc=accuracy(data, test, exact),
        sampled_agree=float((sampled_test.argmax(-1) == full_test.argmax(-1)).float().mean()),
        exact_agree=float((exact.argmax(-1) == full_test.argmax(-1)).float().mean()),
        exact_max_diff=float((exact - full_test).abs().max()),
        full_seconds=full_seconds)


class Ranks:
    """This process's place among the data-parallel processes (one process: rank 0 of 1).

    Under ``torchrun`` every process builds the same graph (same seed) and model, trains on
    its own share of each epoch's targets, and DDP averages the gradients; counts are summed
    and times maxed over processes. CPU only (gloo)."""

    def __init__(self):
        self.rank, self.world = 0, 1
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
            from distributed_training import init_distributed

            self.rank, self.world, _, _ = init_distributed("gloo")

    def share(self, nodes: torch.Tensor) -> torch.Tensor:
        """This rank's part of ``nodes``; all parts equally long, so that every rank runs
        as many backward passes as the others (DDP would wait forever for a missing one)."""
        usable = nodes.numel() - nodes.numel() % self.world
        return nodes[:usable][self.rank::self.world]

    def part(self, nodes: torch.Tensor) -> torch.Tensor:
        """This rank's part of ``nodes`` for evaluation (every node exactly once)."""
        return nodes[self.rank::self.world]

    def sum(self, *values: float) -> List[float]:
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def max(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t)

    def rate(self, stats: Stats) -> float:
        """Targets per second of all ranks together."""
        (targets,) = self.sum(stats.targets)
        return targets / max(self.max(stats.seconds), 1e-9)

    def accuracy(self, data, ids, logits) -> float:
        correct = float((logits.argmax(-1) == data.y[ids]).sum()) if ids.numel() else 0.0
        correct, count = self.sum(correct, ids.numel())
        return correct / max(count, 1)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    ranks = Ranks()
    try:
        return run(args, ranks)
    finally:
        if ranks.world > 1:
            dist.destroy_process_group()


def run(args, ranks: Ranks) -> dict:
    def log(*parts):
        if ranks.rank == 0:
            print(*parts, flush=True)

    quiet = args.quiet or ranks.rank != 0
    torch.manual_seed(args.seed)  # the same initial model on every rank
    t0 = time.perf_counter()
    data = make_dag(args.layers, args.width, args.source_prob, args.colors, args.decay,
                    args.seed)
    gen_seconds = time.perf_counter() - t0
    counts = torch.bincount(data.y, minlength=args.colors)
    majority = float(counts.max()) / data.num_nodes
    log(f"DAG: {data.num_nodes:,} nodes, {data.edge_index.size(1):,} edges, "
        f"{args.layers} layers, {int(data.x[:, -1].sum()):,} sources, {args.colors} colours "
        f"(majority {majority:.3f}) | generated in {gen_seconds:.1f}s | "
        f"native kernels: {plstm_graph.WITH_NATIVE}")
    log(f"sampling {args.num_neighbors} in-edges per hop, batches of {args.batch_size} "
        f"targets, out-degree stubs: {args.stubs}"
        + (f" | {ranks.world} processes (DDP, gloo)" if ranks.world > 1 else ""))

    model = ConeNet(data.x.size(1), args.hidden, args.colors, args.num_layers)
    # every parameter is used in every step, so DDP needs no find_unused_parameters
    trained = DistributedDataParallel(model) if ranks.world > 1 else model
    optimizer = torch.optim.AdamW(trained.parameters(), lr=args.lr, weight_decay=1e-2)
    train_stats, eval_stats = Stats(), Stats()
    val_nodes = ranks.part(subset(data.val_mask, args.eval_targets, args.seed + 2))
    history: List[dict] = []
    for epoch in range(1, args.epochs + 1):
        targets = ranks.share(subset(data.train_mask, args.train_targets,
                                     args.seed * 1000 + epoch))
        # a different sampling stream per rank and epoch
        loader = loader_for(data, targets, args.num_neighbors, args.batch_size, True,
                            (args.seed * 1000 + epoch) * 1009 + ranks.rank, args.stubs,
                            args.num_workers)
        loss_sum, count = train_epoch(trained, loader, optimizer, train_stats,
                                      f"epoch {epoch}/{args.epochs}", quiet)
        loss_sum, count = ranks.sum(loss_sum, count)
        ids, logits = predict(model, loader_for(data, val_nodes, args.num_neighbors,
                                                args.batch_size, False, args.seed,
                                                args.stubs))
        history.append(dict(epoch=epoch, loss=loss_sum / max(count, 1),
                            val_acc=ranks.accuracy(data, ids, logits)))
        log(f"epoch {epoch:3d} | train loss {history[-1]['loss']:.4f} | val acc "
            f"{history[-1]['val_acc']:.3f} | {ranks.rate(train_stats):,.0f} train targets/s")

    test_nodes = subset(data.test_mask, args.eval_targets, args.seed + 3)
    ids, logits = predict(model, loader_for(data, ranks.part(test_nodes), args.num_neighbors,
                                            args.batch_size, False, args.seed, args.stubs),
                          eval_stats, "test", quiet)
    test_acc = ranks.accuracy(data, ids, logits)
    (num_scored,) = ranks.sum(ids.numel())
    train_rate, eval_rate = ranks.rate(train_stats), ranks.rate(eval_stats)
    largest = max((train_stats.largest, eval_stats.largest), key=lambda s: s["nodes"])
    rss = peak_rss_mb()
    checksum = None
    if ranks.world > 1:
        from distributed_training import agreed_checksum

        checksum = agreed_checksum(model, ranks.world)
    result = dict(num_nodes=data.num_nodes, num_edges=data.edge_index.size(1),
                  majority=majority, history=history, test_acc=test_acc,
                  train_targets_per_s=train_rate, eval_targets_per_s=eval_rate,
                  peak_rss_mb=rss, largest_batch=largest, world_size=ranks.world,
                  checksum=checksum, args=vars(args))
    log(f"test acc {test_acc:.3f} on {int(num_scored):,} targets (majority {majority:.3f}) | "
        f"throughput: train {train_rate:,.0f}, inference {eval_rate:,.0f} targets/s "
        f"(sampling included)")
    log(f"largest batch: {largest['nodes']:,} nodes ({largest['stubs']:,} stubs), "
        f"{largest['edges']:,} edges | peak RSS "
        f"{rss:,.0f} MB" + (" per process" if ranks.world > 1 else "") + (
            f" (largest sampling worker {peak_rss_mb(resource.RUSAGE_CHILDREN):,.0f} MB)"
            if args.num_workers else ""))
    summary = (f"SUMMARY large DAG {data.num_nodes:,} nodes / {data.edge_index.size(1):,} edges: "
               f"test acc {test_acc:.3f} (majority {majority:.3f}), "
               f"{train_rate:,.0f} train / {eval_rate:,.0f} inference targets/s, "
               f"peak RSS {rss:,.0f} MB, largest batch {largest['nodes']:,} "
               f"nodes / {largest['edges']:,} edges")
    if ranks.world > 1:
        summary += f" | world size {ranks.world}, parameter checksum {checksum}"
    if args.small and ranks.rank == 0:
        if ranks.world > 1:  # the others scored their own parts of the test nodes
            ids, logits = predict(model, loader_for(data, test_nodes, args.num_neighbors,
                                                    args.batch_size, False, args.seed,
                                                    args.stubs))
        cmp = full_graph_comparison(model, data, args, dict(ids=ids, logits=logits))
        result["comparison"] = cmp
        log(f"full graph vs mini-batch on {int(data.test_mask.sum()):,} test nodes: "
            f"accuracy full {cmp['full_acc']:.3f}, sampled cones {cmp['sampled_acc']:.3f} "
            f"(same prediction {cmp['sampled_agree']:.3f}), full-depth cones "
            f"{cmp['exact_acc']:.3f} (same prediction {cmp['exact_agree']:.3f}, max |logit "
            f"diff| {cmp['exact_max_diff']:.1e}) | full-graph pass {cmp['full_seconds']:.2f}s")
        summary += (f" | full graph {cmp['full_acc']:.3f} vs mini-batch "
                    f"{cmp['sampled_acc']:.3f} (agree {cmp['sampled_agree']:.3f}), "
                    f"full-depth cones max diff {cmp['exact_max_diff']:.1e}")
    result["summary"] = summary + f" | {time.perf_counter() - t0:.0f}s"
    log(result["summary"])
    return result


if __name__ == "__main__":
    main()
