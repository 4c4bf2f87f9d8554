#!/usr/bin/env python
"""Your own DAGs as a PyG dataset for ``PLSTMNet``: a long-range "carry the colour" task.

How to bring your own directed acyclic graphs:

1. Build each graph as a ``networkx.DiGraph`` (node attributes hold the features) or as a
   plain edge list plus a feature matrix, and turn it into a ``torch_geometric.data.Data``
   (:func:`from_networkx_dag` / :func:`from_edge_list` below).
2. Put the graphs into an ``InMemoryDataset`` with ``pre_transform=PrepareDAG(orient="none")``
   (:class:`LongRangeDAGDataset`). ``PrepareDAG`` runs once per graph when the dataset is
   processed and stores the DAG schedule (levels, line graphs, D-mode multitrees of both
   directions) on disk next to the data. ``orient="none"`` keeps *your* edge directions: the
   default ``"auto"`` would orient graphs that store both directions of every edge by node id.
3. Batch with :class:`~plstm_graph.DAGDataLoader` (PyG's ``DataLoader`` gives the same
   batches, built about 2x slower); the batches are ``DAGData`` batches, and
   ``DAGPlan.from_data(batch)`` gives the model the precomputed schedule.

The toy task needs long-range propagation along directed paths. Every graph has a *spine*, a
directed path of ``--min-hops`` .. ``--max-hops`` edges from a start node to a sink, with
forward shortcut edges, dead-end side branches and decoy sources whose own colours flow into
the spine. Every node has a random colour; the start node is flagged. The label, read out at
the sink, is the colour of the start node, which has to travel dozens of hops past the decoys.
Node ids are shuffled, so they carry no hint of the order. A GIN with a few layers (one hop
each) cannot see that far and stays near chance, ``1 / --colors``.

Run ``python examples/custom_dag_dataset.py`` (a minute or two on two CPU cores) or ``--help``.
Ends with a one-line ``SUMMARY``.
"""
from __future__ import annotations

import argparse
import os.path as osp
import random
import sys
import tempfile
import time
from typing import List, Optional, Sequence, Tuple

import networkx as nx
import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))  # the shared helpers next to this file
from _common import (  # noqa: E402
    SymmetrizeEdges, add_runtime_arguments, apply_runtime_arguments, check_batch, evaluate,
    finish, parse_models, train_epoch)

import plstm_graph  # noqa: E402  (importable after _common set up the path)
from torch_geometric.data import Data, InMemoryDataset  # noqa: E402
from torch_geometric.nn import GIN  # noqa: E402
from torch_geometric.transforms import Compose  # noqa: E402
from torch_geometric.utils import from_networkx  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from plstm_graph import DAGDataLoader, DAGPlan, PLSTMNet, PrepareDAG  # noqa: E402

MODELS = ("plstm", "gin")


# ---------------------------------------------------------------------------------------------
# 1. from your graphs to Data objects
# ---------------------------------------------------------------------------------------------
def from_networkx_dag(graph: nx.DiGraph, y: Optional[torch.Tensor] = None, **extra) -> Data:
    """A ``networkx.DiGraph`` whose nodes carry a feature list ``"x"`` -> ``Data``.

    ``from_networkx`` relabels nodes ``0..N-1`` in ``graph.nodes`` order and keeps the edge
    directions; ``edge_index[0]`` is the tail, ``edge_index[1]`` the head of every edge.
    Edge features would go the same way (``group_edge_attrs=[...]``).
    """
    if not nx.is_directed_acyclic_graph(graph):
        raise ValueError("graph must be a directed acyclic graph")
    data = from_networkx(graph, group_node_attrs=["x"])
    data.x = data.x.float()
    if y is not None:
        data.y = y
    for key, value in extra.items():
        data[key] = value
    return data


def from_edge_list(edges: Sequence[Tuple[int, int]], x: torch.Tensor, **extra) -> Data:
    """An edge list ``[(tail, head), ...]`` over nodes ``0..N-1`` plus features -> ``Data``."""
    edge_index = torch.tensor(list(edges), dtype=torch.long).view(-1, 2).t().contiguous()
    return Data(x=x, edge_index=edge_index, num_nodes=x.size(0), **extra)


# ---------------------------------------------------------------------------------------------
# the toy task
# ---------------------------------------------------------------------------------------------
def long_range_dag(rng: random.Random, colors: int, min_hops: int, max_hops: int,
                   decoys: int = 3, side: int = 4, shortcut_p: float = 0.05,
                   noise: bool = False) -> nx.DiGraph:
    """One graph of the task as a ``networkx.DiGraph``; see the module docstring."""
    hops = rng.randint(min_hops, max_hops)
    g = nx.DiGraph()
    spine = list(range(hops + 1))  # 0 = start, hops = sink
    g.add_edges_from(zip(spine[:-1], spine[1:]))
    for i in range(hops - 1):  # forward shortcuts skip one spine node
        if rng.random() < shortcut_p:
            g.add_edge(i, i + 2)
    nxt = hops + 1
    for _ in range(decoys):  # decoy sources: a colour that joins the spine somewhere
        g.add_edge(nxt, rng.randrange(1, hops + 1))
        nxt += 1
    for _ in range(side):  # dead-end branches off the spine
        g.add_edge(rng.randrange(0, hops), nxt)
        nxt += 1
    start_color = rng.randrange(colors)
    decoy_ids = range(hops + 1, hops + 1 + decoys)
    for node in g.nodes:
        feat = [0.0] * (colors + 2)
        if node == 0:
            feat[start_color] = 1.0
        elif node in decoy_ids or noise:
            feat[rng.randrange(colors)] = 1.0
        feat[colors] = float(node == 0)  # the start flag
        feat[colors + 1] = float(node == hops)  # the sink flag (where the answer is read)
        g.nodes[node]["x"] = feat
        g.nodes[node]["target"] = node == hops
    g.graph["y"] = start_color
    # shuffle node ids so that they carry no hint of the topological order
    order = list(g.nodes)
    rng.shuffle(order)
    shuffled = nx.DiGraph(**g.graph)
    shuffled.add_nodes_from((node, g.nodes[node]) for node in order)
    shuffled.add_edges_from(g.edges)
    return shuffled


# ---------------------------------------------------------------------------------------------
# 2. the dataset
# ---------------------------------------------------------------------------------------------
class LongRangeDAGDataset(InMemoryDataset):
    """Synthetic long-range DAGs, prepared once by ``PrepareDAG`` and cached under ``root``.

    Replace :meth:`make_graphs` with code that reads your DAGs; everything else stays."""

    def __init__(self, root: str, num_graphs: int = 800, colors: int = 4, min_hops: int = 20,
                 max_hops: int = 40, decoys: int = 3, branches: int = 4,
                 shortcut_p: float = 0.05, noise: bool = False, seed: int = 0, transform=None,
                 force_reload=False):
        self.config = dict(num_graphs=num_graphs, colors=colors, min_hops=min_hops,
                           max_hops=max_hops, decoys=decoys, branches=branches,
                           shortcut_p=shortcut_p, noise=noise, seed=seed)
        # the DAG is given: never re-orient. GIN also gets both directions of every edge.
        pre_transform = Compose([PrepareDAG(orient="none"), SymmetrizeEdges()])
        super().__init__(root, transform, pre_transform, force_reload=force_reload)
        self.load(self.processed_paths[0])

    @property
    def raw_file_names(self) -> List[str]:
        return []  # generated, nothing to download

    @property
    def processed_file_names(self) -> List[str]:
        c = self.config
        return ["long_range_" + "_".join(str(c[k]) for k in sorted(c)) + ".pt"]

    def make_graphs(self) -> List[Data]:
        rng = random.Random(self.config["seed"])
        out = []
        for i in range(self.config["num_graphs"]):
            g = long_range_dag(rng, self.config["colors"], self.config["min_hops"],
                               self.config["max_hops"], decoys=self.config["decoys"],
                               side=self.config["branches"],
                               shortcut_p=self.config["shortcut_p"],
                               noise=self.config["noise"])
            # node attribute "target" -> a boolean mask of the nodes that are scored
            target = torch.tensor([g.nodes[n]["target"] for n in g.nodes], dtype=torch.bool)
            if i % 2:  # the networkx way ...
                data = from_networkx_dag(g, y=torch.tensor([g.graph["y"]]))
                data.target_mask = target
                del data.target  # from_networkx copied the attribute; we keep the mask
            else:  # ... or the edge-list way (relabel nodes 0..N-1 first)
                ids = {n: k for k, n in enumerate(g.nodes)}
                x = torch.tensor([g.nodes[n]["x"] for n in g.nodes])
                data = from_edge_list([(ids[u], ids[w]) for u, w in g.edges], x,
                                      y=torch.tensor([g.graph["y"]]), target_mask=target)
            out.append(data)
        return out

    def process(self) -> None:
        graphs = [self.pre_transform(g) for g in self.make_graphs()]
        self.save(graphs, self.processed_paths[0])


# ---------------------------------------------------------------------------------------------
# 3. models and training
# ---------------------------------------------------------------------------------------------
class PLSTMSinkClassifier(torch.nn.Module):
    def __init__(self, in_channels, hidden, classes, layers, heads, **kwargs):
        super().__init__()
        self.net = PLSTMNet(in_channels, hidden, classes, num_layers=layers, heads=heads,
                            pool=None, **kwargs)

    def forward(self, batch):
        out = self.net(batch.x, batch.dag_edge_index, batch=batch.batch,
                       plan=DAGPlan.from_data(batch))
        return out[batch.target_mask]  # one row per graph: its sink


class GINSinkClassifier(torch.nn.Module):
    def __init__(self, in_channels, hidden, classes, layers):
        super().__init__()
        self.gnn = GIN(in_channels, hidden, layers, classes)

    def forward(self, batch):
        return self.gnn(batch.x, batch.edge_index)[batch.target_mask]


def _overrides(args):
    """PLSTMConv arguments the user set on the command line (the rest keep the library's
    defaults)."""
    given = dict(gate_bias=args.gate_bias, transition_bias=args.transition_bias)
    return {k: v for k, v in given.items() if v is not None}


def build_model(name, in_channels, args):
    if name == "plstm":
        return PLSTMSinkClassifier(in_channels, args.hidden, args.colors, args.layers,
                                   args.heads, **_overrides(args),
                                   backend=None if args.backend == "auto" else args.backend)
    if name == "gin":
        return GINSinkClassifier(in_channels, args.hidden, args.colors, 4 * args.layers)
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def train(name, dataset, args, device) -> dict:
    n = len(dataset)
    n_test = n_val = max(1, n // 10)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed)).tolist()
    test, val, train_set = (dataset[perm[:n_test]], dataset[perm[n_test:n_test + n_val]],
                            dataset[perm[n_test + n_val:]])
    torch.manual_seed(args.seed)
    model = build_model(name, dataset.num_features, args).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    loader = DAGDataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                           generator=torch.Generator().manual_seed(args.seed))
    check_batch(next(iter(loader)))
    val_loader = DAGDataLoader(val, batch_size=128)
    test_loader = DAGDataLoader(test, batch_size=128)
    history, best = [], dict(val_acc=-1.0)
    start = time.perf_counter()
    bar = tqdm(range(1, args.epochs + 1), desc=f"{name:>5}", disable=args.quiet,
               dynamic_ncols=True)
    for epoch in bar:
        loss = train_epoch(model, loader, optimizer, device)
        scheduler.step()
        val_acc, test_acc = (evaluate(model, val_loader, device)[0],
                             evaluate(model, test_loader, device)[0])
        history.append(dict(epoch=epoch, loss=loss, val_acc=val_acc, test_acc=test_acc))
        if val_acc > best["val_acc"]:  # ties: the earlier epoch
            best = dict(epoch=epoch, val_acc=val_acc, test_acc=test_acc)
        bar.set_postfix(loss=f"{loss:.3f}", val=f"{val_acc:.3f}")
    bar.close()
    params = sum(p.numel() for p in model.parameters())
    return dict(best, seconds=time.perf_counter() - start, params=params, history=history)


def _bias(text: str):
    """'default', one float for both modes, or 'P,D' (two floats)."""
    if text == "default":
        return None
    if "," in text:
        p_bias, d_bias = (float(t) for t in text.split(","))
        return {"P": p_bias, "D": d_bias}
    return float(text)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default="plstm,gin",
                   help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--num-graphs", type=int, default=600, help="graphs to generate")
    p.add_argument("--colors", type=int, default=4, help="number of colours (classes)")
    p.add_argument("--min-hops", type=int, default=20, help="shortest start-to-sink path")
    p.add_argument("--max-hops", type=int, default=40, help="longest start-to-sink path")
    p.add_argument("--decoys", type=int, default=3,
                   help="coloured decoy sources whose edges join the spine")
    p.add_argument("--branches", type=int, default=4, help="dead-end branches off the spine")
    p.add_argument("--shortcut-p", type=float, default=0.05,
                   help="probability of a shortcut edge over each spine node")
    p.add_argument("--noise", action="store_true",
                   help="give every node a random colour, not only the start and decoys")
    p.add_argument("--epochs", type=int, default=20, help="training epochs")
    p.add_argument("--batch-size", type=int, default=16, help="graphs per training batch")
    p.add_argument("--hidden", type=int, default=32, help="hidden width of every model")
    p.add_argument("--layers", type=int, default=1,
                   help="PLSTMNet layers (four pLSTM blocks each); GIN gets 4x as many convs")
    p.add_argument("--heads", type=int, default=4, help="pLSTM heads")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="AdamW learning rate (cosine schedule)")
    p.add_argument("--gate-bias", type=float, default=None,
                   help="initial source/mark/direct gate bias of PLSTMConv (default: the "
                        "library's 0; the authors' -5 starts the graph path ~100x weaker than "
                        "a node's own term)")
    p.add_argument("--transition-bias", type=_bias, default=None,
                   help="initial transition logit t0, one value or 'P,D' (default: the "
                        "library's, see PLSTMConv)")
    p.add_argument("--root", default=None,
                   help="where the prepared dataset is cached (default: a temporary folder)")
    add_runtime_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of splits, init and shuffling")
    p.add_argument("--output", default=None, help="write results as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    args.models = parse_models(p, args.models, MODELS)
    if not 1 <= args.min_hops <= args.max_hops:
        p.error("need 1 <= --min-hops <= --max-hops")
    if args.num_graphs < 10:
        p.error("--num-graphs must be at least 10")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = apply_runtime_arguments(args)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = LongRangeDAGDataset(args.root or tmp, num_graphs=args.num_graphs,
                                      colors=args.colors, min_hops=args.min_hops,
                                      max_hops=args.max_hops, decoys=args.decoys,
                                      branches=args.branches, shortcut_p=args.shortcut_p,
                                      noise=args.noise,
                                      seed=args.seed)
        g = dataset[0]
        print(f"{len(dataset)} DAGs, e.g. {g.num_nodes} nodes, {g.dag_edge_index.size(1)} "
              f"edges, {int(g.dag_level.max()) + 1} levels | spine {args.min_hops}-"
              f"{args.max_hops} hops, {args.colors} colours (chance {1 / args.colors:.2f}) | "
              f"native kernels: {plstm_graph.WITH_NATIVE} | data ready in "
              f"{time.perf_counter() - t0:.1f}s")
        results = dict(args=vars(args).copy(), models={})
        for name in args.models:
            results["models"][name] = train(name, dataset, args, device)
    print()
    print(f"{'model':<8} {'params':>8} {'best val':>9} {'test':>6} {'epoch':>6} {'time':>8}")
    for name, r in results["models"].items():
        print(f"{name:<8} {r['params']:>8} {r['val_acc']:>9.3f} {r['test_acc']:>6.3f} "
              f"{r['epoch']:>6} {r['seconds']:>7.1f}s")
    results["seconds"] = time.perf_counter() - t0
    summary = " | ".join(f"{name} {r['test_acc']:.3f}" for name, r in results["models"].items())
    return finish(results, f"SUMMARY long-range DAG ({args.min_hops}-{args.max_hops} hops, "
                           f"chance {1 / args.colors:.2f}) test accuracy at best val epoch: "
                           f"{summary} | total {results['seconds']:.0f}s", args.output)


if __name__ == "__main__":
    main()
