#!/usr/bin/env python
"""Node classification on Python ASTs with ``PLSTMNet(pool=None)`` next to GCN and GAT.

Task (``PythonASTDataset(task="node")``): masked node-type prediction. Every function of the
Python standard library becomes a DAG of its AST (parent -> child and sibling -> next sibling
edges, five edge types); about 15% of the nodes of each graph have their type replaced by a
MASK token, and the model must recover it from the surrounding tree. Only masked nodes are
scored.

Protocol: per seed, a train/val/test split by source file (80/10/10, all functions of one file
in the same part; the split seed is the run seed), AdamW (lr 1e-3) with a cosine schedule,
test accuracy at the epoch with the best validation accuracy (ties: lower validation loss, then
the earlier epoch), mean ± std over the seeds. ``PLSTMNet`` sees the DAG in both directions
(its blocks run forward and on the reversed DAG) and the edge types; GCN and GAT get the
symmetrised graph (both directions of every edge) so they can also look both ways, with
batch norm between layers.

Run ``python examples/node_classification.py`` (a few minutes on two CPU cores) or ``--help``.
Ends with a one-line ``SUMMARY``.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))  # the shared helpers next to this file
from _common import (  # noqa: E402
    SymmetrizeEdges, add_runtime_arguments, apply_runtime_arguments, evaluate, finish, improves,
    machine_info, masked_targets, mean_std, parse_models, prepare_list, prepared_root,
    print_accuracy_table, split_loaders, train_epoch)

import plstm_graph  # noqa: E402  (importable after _common set up the path)
from torch_geometric.nn import GAT, GCN  # noqa: E402
from torch_geometric.transforms import Compose  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from plstm_graph import DAGPlan, PLSTMNet, PrepareDAG  # noqa: E402

MODELS = ("plstm", "gcn", "gat")


class PLSTMNodeClassifier(torch.nn.Module):
    def __init__(self, in_channels, hidden, out_channels, num_layers, edge_dim, dropout,
                 heads=4, **kwargs):
        super().__init__()
        self.net = PLSTMNet(in_channels, hidden, out_channels, num_layers=num_layers,
                            heads=heads, edge_dim=edge_dim, pool=None, dropout=dropout,
                            **kwargs)

    def forward(self, batch):
        edge_attr = batch.get("dag_edge_attr") if self.net.edge_dim is not None else None
        return self.net(batch.x, batch.dag_edge_index, edge_attr, batch.batch,
                        plan=DAGPlan.from_data(batch))


class BaselineNodeClassifier(torch.nn.Module):
    """A PyG basic GNN (``GCN`` or ``GAT``) on the symmetrised graph."""

    def __init__(self, kind, in_channels, hidden, out_channels, num_layers, dropout, heads=4):
        super().__init__()
        if kind == "gcn":
            self.gnn = GCN(in_channels, hidden, num_layers, out_channels, dropout=dropout,
                           norm="batch_norm")
        else:
            self.gnn = GAT(in_channels, hidden, num_layers, out_channels, dropout=dropout,
                           heads=heads, norm="batch_norm")

    def forward(self, batch):
        return self.gnn(batch.x, batch.edge_index)


def _overrides(args):
    """PLSTMNet / PLSTMConv arguments the user set on the command line (the rest keep the
    library's defaults)."""
    given = dict(gate_bias=args.gate_bias, mlp_ratio=args.mlp_ratio,
                 transition_form=args.transition_form)
    return {k: v for k, v in given.items() if v is not None}


def build_model(name, info, args):
    if name == "plstm":
        return PLSTMNodeClassifier(info["num_features"], args.hidden, info["num_classes"],
                                   args.layers, info["edge_dim"] if args.edge_attr else None,
                                   args.dropout, heads=args.heads, **_overrides(args),
                                   backend=None if args.backend == "auto" else args.backend)
    if name in ("gcn", "gat"):
        # as many message-passing layers as PLSTMNet has pLSTM blocks (four per layer)
        return BaselineNodeClassifier(name, info["num_features"], args.hidden,
                                      info["num_classes"], 4 * args.layers, args.dropout,
                                      heads=args.heads)
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def run_seed(name, info, args, graphs, split, seed, device) -> dict:
    torch.manual_seed(seed)
    model = build_model(name, info, args).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr,
                                  weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    train_loader, val_loader, test_loader = split_loaders(graphs, split, args.batch_size, seed,
                                                          eval_batch_size=128)

    curves = {k: [] for k in ("train_loss", "val_acc", "val_loss", "test_acc")}
    best = None
    start = time.perf_counter()
    bar = tqdm(range(1, args.epochs + 1), desc=f"{name:>5} seed {seed}", leave=False,
               disable=args.quiet, dynamic_ncols=True)
    for epoch in bar:
        # only the masked nodes are scored
        train_loss = train_epoch(model, train_loader, optimizer, device, masked_targets)
        scheduler.step()
        val_acc, val_loss = evaluate(model, val_loader, device, masked_targets)
        test_acc, _ = evaluate(model, test_loader, device, masked_targets)
        for key, value in zip(curves, (train_loss, val_acc, val_loss, test_acc)):
            curves[key].append(value)
        if improves(best, val_acc, val_loss):
            best = dict(epoch=epoch, val_acc=val_acc, val_loss=val_loss, test_acc=test_acc)
        bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{val_acc:.3f}")
    bar.close()
    best.update(seed=seed, seconds=time.perf_counter() - start, curves=curves)
    return best


def majority_baseline(graphs, split) -> float:
    """Accuracy of always predicting the most frequent masked type of the training part."""
    train_idx, _, test_idx = split
    train_y = torch.cat([graphs[i].y[graphs[i].label_mask] for i in train_idx])
    test_y = torch.cat([graphs[i].y[graphs[i].label_mask] for i in test_idx])
    return float((test_y == torch.bincount(train_y).argmax()).float().mean())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default="plstm,gcn,gat",
                   help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--max-graphs", type=int, default=600,
                   help="number of functions (graphs) to use")
    p.add_argument("--max-nodes", type=int, default=128, help="skip larger functions")
    p.add_argument("--max-per-file", type=int, default=16,
                   help="at most this many functions from one source file")
    p.add_argument("--epochs", type=int, default=30, help="training epochs")
    p.add_argument("--seeds", type=int, default=2, help="number of runs (seeds 0..n-1 + --seed)")
    p.add_argument("--batch-size", type=int, default=32, help="graphs per training batch")
    p.add_argument("--hidden", type=int, default=64, help="hidden width of every model")
    p.add_argument("--layers", type=int, default=1,
                   help="PLSTMNet layers (four pLSTM blocks each); baselines get 4x as many")
    p.add_argument("--heads", type=int, default=4, help="pLSTM and GAT heads")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="AdamW learning rate (cosine schedule)")
    p.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay")
    p.add_argument("--gate-bias", type=float, default=None,
                   help="initial source/mark/direct gate bias of PLSTMConv (default: the "
                        "library's 0; the authors' -5 starts the graph path ~100x weaker than "
                        "a node's own term)")
    p.add_argument("--no-edge-attr", dest="edge_attr", action="store_false",
                   help="do not give the edge types to PLSTMNet")
    p.add_argument("--transition-form", choices=("arc", "factorised"), default=None,
                   help="PLSTMNet's P-mode transitions with edge features (None: the "
                        "library's 'arc'; an ablation)")
    p.add_argument("--mlp-ratio", type=int, default=None,
                   help="PLSTMNet MLP width as a multiple of --hidden (None: the library's "
                        "default; an ablation)")
    p.add_argument("--root", default=None, help="dataset cache (default: plstm_graph's)")
    add_runtime_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--output", default=None, help="write per-seed results as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    args.models = parse_models(p, args.models, MODELS)
    if args.seeds < 1 or args.epochs < 1:
        p.error("--seeds and --epochs must be positive")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = apply_runtime_arguments(args)
    t0 = time.perf_counter()
    from plstm_graph.datasets import PythonASTDataset

    pre = Compose([PrepareDAG(orient="none"), SymmetrizeEdges()])
    dataset = PythonASTDataset(root=prepared_root(args.root),
                               task="node", max_graphs=args.max_graphs,
                               max_nodes=args.max_nodes, max_per_file=args.max_per_file,
                               pre_transform=pre)
    graphs = prepare_list(dataset, pre)
    info = dict(name="PythonAST-node", num_graphs=len(graphs),
                num_features=graphs[0].x.size(1), num_classes=dataset.num_classes,
                edge_dim=graphs[0].dag_edge_attr.size(1),
                masked_nodes=int(sum(int(g.label_mask.sum()) for g in graphs)))
    print(f"{info['name']}: {info['num_graphs']} graphs, {info['masked_nodes']} masked nodes, "
          f"{info['num_classes']} node types | device {device}, {args.threads} thread(s), "
          f"native kernels: {plstm_graph.WITH_NATIVE} | data ready in "
          f"{time.perf_counter() - t0:.1f}s")
    seeds = [args.seed + i for i in range(args.seeds)]
    splits = {s: dataset.split_by_file((0.8, 0.1, 0.1), seed=s) for s in seeds}
    splits = {s: tuple(part.tolist() for part in split) for s, split in splits.items()}
    for s, split in splits.items():
        if not all(split):
            raise SystemExit(f"the split by source file (seed {s}) left a part empty: "
                             f"{[len(p) for p in split]} graphs; use more graphs "
                             f"(--max-graphs) or fewer per file (--max-per-file)")
    majority = mean_std(majority_baseline(graphs, splits[s]) for s in seeds)[0]

    results = dict(dataset=info["name"], args=vars(args).copy(), info=info,
                   native=plstm_graph.WITH_NATIVE, machine=machine_info(),
                   majority=majority, models={})
    for name in args.models:
        start = time.perf_counter()
        runs = [run_seed(name, info, args, graphs, splits[s], s, device) for s in seeds]
        mean, std = mean_std(r["test_acc"] for r in runs)
        params = sum(p.numel() for p in build_model(name, info, args).parameters())
        results["models"][name] = dict(mean=mean, std=std, params=params, runs=runs,
                                       seconds=time.perf_counter() - start)
        if not args.quiet:
            print(f"  {name}: {mean:.3f} ± {std:.3f}", file=sys.stderr)

    print()
    print(f"{info['name']}, {len(seeds)} seed(s), {args.epochs} epochs, hidden {args.hidden}: "
          f"masked-node test accuracy at the best validation epoch "
          f"(majority class: {majority:.3f})")
    print_accuracy_table(results["models"])
    results["seconds"] = time.perf_counter() - t0
    summary = " | ".join(f"{name} {r['mean']:.3f} ± {r['std']:.3f} ({r['seconds']:.0f}s)"
                         for name, r in results["models"].items())
    return finish(results, f"SUMMARY {info['name']} {len(seeds)} seed(s), masked-node test "
                           f"accuracy: {summary} | majority {majority:.3f} | total "
                           f"{results['seconds']:.0f}s", args.output)


if __name__ == "__main__":
    main()
