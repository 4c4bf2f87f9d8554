#!/usr/bin/env python
"""Graph classification with ``PLSTMNet`` next to a GIN baseline (MUTAG by default).

Protocol (the pLSTM paper's for MUTAG): stratified 10-fold cross-validation. For fold ``i``
the test set is fold ``i``, the validation set is fold ``i + 1`` (mod k), carved from the
training part and stratified like every fold, and the other ``k - 2`` folds are trained on:
80/10/10 for ``k = 10``. Every model is trained with AdamW (lr 1e-3) and a cosine learning
rate schedule; after every epoch it is evaluated on validation and test, and the fold's score is
the test accuracy at the epoch with the best validation accuracy. Ties are broken by the lower
validation loss, then by the earlier epoch. Both models get the same folds, batches (same
shuffling seed), hidden size, epochs and optimiser.

Models: ``PLSTMNet`` (one layer = four pLSTM blocks: P and D mode on the DAG and on its
reverse, each with an MLP; bond types as edge features; mean pooling) and GIN (as many GINConv
layers as PLSTMNet has pLSTM blocks, batch norm, sum pooling, MLP head), same hidden size.
``PLSTMNet`` is built with ``gate_bias=0`` (``--gate-bias``, also ``PLSTMConv``'s default):
with the authors' -5 the source, mark and direct gates start at 0.007, the state (graph) path
is then ~1/140 of a node's own direct term, and on a data set this small it never catches up
within 100 epochs.
The reported "±" is the standard deviation over folds (population, ``ddof=0``).

Every graph goes through :class:`~plstm_graph.PrepareDAG` exactly once, as the dataset's
``pre_transform`` (cached on disk), so batches are ``DAGData`` batches whose line-graph indices
are offset by edge counts, and each training step only builds the batch's ``DAGPlan``.

Run ``python examples/graph_classification.py`` (a few minutes on two CPU cores) or
``--help`` for the options. Ends with a one-line ``SUMMARY``.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

try:
    import plstm_graph
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    import plstm_graph

from torch_geometric.loader import DataLoader
from torch_geometric.nn import GIN, MLP, global_add_pool
from torch_geometric.transforms import Compose
from torch_geometric.utils import to_undirected
from tqdm.auto import tqdm

from plstm_graph import DAGData, DAGPlan, PLSTMNet, PrepareDAG

MODELS = ("plstm", "gin")
DATASETS = ("mutag", "python-ast")


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
class SymmetrizeEdges:
    """Stores ``edge_index`` (and ``edge_attr``) with both directions of every edge, for the
    message-passing baselines on directed data. Run it after :class:`PrepareDAG`, which keeps
    the DAG itself in ``dag_edge_index``."""

    def __call__(self, data):
        if data.edge_index.numel():
            data.edge_index, data.edge_attr = to_undirected(
                data.edge_index, data.get("edge_attr"), num_nodes=data.num_nodes)
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}()"


def is_prepared(data) -> bool:
    return isinstance(data, DAGData) and "dag_edge_index" in data


def prepare_list(dataset, pre_transform) -> list:
    """The dataset as a list of prepared graphs. ``pre_transform`` already ran when the dataset
    was processed; if the on-disk cache was built without it (another tool processed the same
    directory), apply it here, once."""
    graphs = [dataset[i] for i in range(len(dataset))]
    if graphs and not is_prepared(graphs[0]):
        print("note: cached dataset was processed without PrepareDAG; preparing in memory",
              file=sys.stderr)
        graphs = [pre_transform(g) for g in graphs]
    return graphs


def prepared_root(root: Optional[str]) -> str:
    """Cache folder for data sets processed with ``PrepareDAG`` as ``pre_transform``.

    PyG reprocesses a cached data set only when it is missing, so the folder name carries a
    fingerprint of the code that prepares the DAGs: a changed ``PrepareDAG`` never serves
    stale schedules."""
    import hashlib
    import inspect

    from plstm_graph import dag, transforms
    from plstm_graph.datasets import default_root

    code = "".join(inspect.getsource(m) for m in (dag, transforms))
    tag = hashlib.sha1(code.encode()).hexdigest()[:10]
    return osp.join(root or default_root(), f"prepared-{tag}")


def load_graphs(name: str, root: Optional[str], max_graphs: int):
    """``(graphs, info)`` with every graph prepared once by :class:`PrepareDAG`."""
    root = prepared_root(root)
    if name == "mutag":
        from plstm_graph.datasets import load_mutag

        pre = PrepareDAG()  # MUTAG is undirected: oriented from lower to higher atom id
        dataset = load_mutag(root=root, pre_transform=pre)
        num_classes, edge_dim, display = 2, 4, "MUTAG"
    elif name == "python-ast":
        from plstm_graph.datasets import PythonASTDataset

        # genuinely directed ASTs: keep the direction; GIN gets both directions
        pre = Compose([PrepareDAG(orient="none"), SymmetrizeEdges()])
        dataset = PythonASTDataset(root=root, task="graph", max_graphs=max_graphs,
                                   pre_transform=pre)
        num_classes, edge_dim, display = dataset.num_classes, dataset[0].edge_attr.size(1), \
            "PythonAST-graph"
    else:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
    graphs = prepare_list(dataset, pre)
    info = dict(name=display, num_graphs=len(graphs), num_features=graphs[0].x.size(1),
                num_classes=num_classes, edge_dim=edge_dim)
    return graphs, info


def stratified_folds(labels: Sequence[int], k: int, seed: int) -> List[List[int]]:
    """``k`` folds with (almost) equal class proportions: each class is shuffled and dealt
    round-robin, continuing where the previous class stopped so that fold sizes stay even."""
    gen = torch.Generator().manual_seed(seed)
    by_class: Dict[int, List[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    folds: List[List[int]] = [[] for _ in range(k)]
    pos = 0
    for y in sorted(by_class):
        idx = by_class[y]
        for j in torch.randperm(len(idx), generator=gen).tolist():
            folds[pos % k].append(idx[j])
            pos += 1
    return [sorted(f) for f in folds]


def cv_splits(labels: Sequence[int], k: int, seed: int):
    """``(train, val, test)`` index lists per fold: test = fold i, val = fold i+1."""
    if k < 3:
        raise ValueError(f"--folds must be at least 3 (test, validation and training folds), "
                         f"got {k}")
    folds = stratified_folds(labels, k, seed)
    for i in range(k):
        val_fold = (i + 1) % k
        train = sorted(j for f, fold in enumerate(folds) if f not in (i, val_fold)
                       for j in fold)
        yield train, folds[val_fold], folds[i]


def check_batch(batch) -> None:
    """A batch must be a ``DAGData`` batch whose line-graph arcs join edges that meet (this
    fails if the line indices were offset by node counts instead of edge counts)."""
    if not is_prepared(batch):
        raise RuntimeError(f"expected a DAGData batch from PrepareDAG'd graphs, got "
                           f"{type(batch).__name__}")
    dag = batch.dag_edge_index
    lines = [batch.line_index_p, batch.line_index_d]
    if "line_index_d_rev" in batch:
        lines.append(batch.line_index_d_rev.flip(0))  # reversed DAG: arcs of the flipped edges
    for line in lines:
        if line.numel() and (int(line.min()) < 0 or int(line.max()) >= dag.size(1)):
            raise RuntimeError("line-graph indices out of range of the batch's DAG edges")
        if line.numel() and not bool((dag[1, line[0]] == dag[0, line[1]]).all()):
            raise RuntimeError("line-graph indices do not join meeting edges after batching")


# ---------------------------------------------------------------------------------------------
# models: one call signature, model(batch) -> logits
# ---------------------------------------------------------------------------------------------
class PLSTMGraphClassifier(torch.nn.Module):
    """``PLSTMNet`` fed from a prepared batch (its ``DAGPlan`` is built once per batch and
    shared by all blocks)."""

    def __init__(self, in_channels, hidden, out_channels, num_layers, edge_dim, dropout,
                 pool="mean", heads=4, **kwargs):
        super().__init__()
        self.net = PLSTMNet(in_channels, hidden, out_channels, num_layers=num_layers,
                            heads=heads, edge_dim=edge_dim, pool=pool, dropout=dropout,
                            **kwargs)

    def forward(self, batch):
        plan = DAGPlan.from_data(batch)
        edge_attr = batch.get("dag_edge_attr") if self.net.edge_dim is not None else None
        return self.net(batch.x, batch.dag_edge_index, edge_attr, batch.batch, plan=plan)


class GINGraphClassifier(torch.nn.Module):
    """GIN (Xu et al., 2019): GINConv layers with batch norm, sum pooling, MLP head."""

    def __init__(self, in_channels, hidden, out_channels, num_layers, dropout):
        super().__init__()
        self.gnn = GIN(in_channels, hidden, num_layers, norm="batch_norm")
        self.head = MLP([hidden, hidden, out_channels], dropout=dropout, norm=None)

    def forward(self, batch):
        h = self.gnn(batch.x, batch.edge_index)
        return self.head(global_add_pool(h, batch.batch))


def build_model(name: str, info: dict, args) -> torch.nn.Module:
    if name == "plstm":
        return PLSTMGraphClassifier(
            info["num_features"], args.hidden, info["num_classes"], args.layers,
            info["edge_dim"] if args.edge_attr else None, args.dropout, pool=args.pool,
            heads=args.heads, gate_bias=args.gate_bias,
            backend=None if args.backend == "auto" else args.backend)
    if name == "gin":
        # as many message-passing layers as PLSTMNet has pLSTM blocks (four per layer)
        return GINGraphClassifier(info["num_features"], args.hidden, info["num_classes"],
                                  4 * args.layers, args.dropout)
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def train_epoch(model, loader, optimizer, device) -> float:
    model.train()
    total, count = 0.0, 0
    for batch in loader:
        batch = batch.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(batch), batch.y)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * batch.num_graphs
        count += batch.num_graphs
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model, loader, device):
    """``(accuracy, mean cross-entropy)``."""
    model.eval()
    correct, loss, count = 0, 0.0, 0
    for batch in loader:
        batch = batch.to(device)
        logits = model(batch)
        loss += float(F.cross_entropy(logits, batch.y, reduction="sum"))
        correct += int((logits.argmax(-1) == batch.y).sum())
        count += batch.num_graphs
    return correct / max(count, 1), loss / max(count, 1)


def run_fold(name, info, args, graphs, split, fold, device, position=0) -> dict:
    train_idx, val_idx, test_idx = split
    seed = args.seed * 1000 + fold
    torch.manual_seed(seed)
    model = build_model(name, info, args).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr,
                                  weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    gen = torch.Generator().manual_seed(seed)  # same shuffling for every model
    train_loader = DataLoader([graphs[i] for i in train_idx], batch_size=args.batch_size,
                              shuffle=True, generator=gen)
    val_loader = DataLoader([graphs[i] for i in val_idx], batch_size=256)
    test_loader = DataLoader([graphs[i] for i in test_idx], batch_size=256)
    check_batch(next(iter(train_loader)))

    curves = {k: [] for k in ("train_loss", "val_acc", "val_loss", "test_acc", "test_loss")}
    best = None
    start = time.perf_counter()
    bar = tqdm(range(1, args.epochs + 1), desc=f"{name:>5} fold {fold + 1}/{args.folds}",
               leave=False, position=position, disable=args.quiet, dynamic_ncols=True)
    for epoch in bar:
        train_loss = train_epoch(model, train_loader, optimizer, device)
        scheduler.step()
        val_acc, val_loss = evaluate(model, val_loader, device)
        test_acc, test_loss = evaluate(model, test_loader, device)
        for key, value in zip(curves, (train_loss, val_acc, val_loss, test_acc, test_loss)):
            curves[key].append(value)
        # best validation accuracy; ties -> lower validation loss; then the earlier epoch
        if best is None or (val_acc, -val_loss) > (best["val_acc"], -best["val_loss"]):
            best = dict(epoch=epoch, val_acc=val_acc, val_loss=val_loss, test_acc=test_acc)
        bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{val_acc:.3f}",
                        best_test=f"{best['test_acc']:.3f}")
    bar.close()
    best.update(fold=fold, seconds=time.perf_counter() - start,
                final_test_acc=curves["test_acc"][-1], curves=curves,
                sizes=[len(train_idx), len(val_idx), len(test_idx)])
    return best


def mean_std(values: Sequence[float]):
    t = torch.tensor(list(values), dtype=torch.float64)
    std = float(t.std(unbiased=False)) if t.numel() > 1 else 0.0
    return float(t.mean()), std


def plot_results(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(models), 1)
    for j, name in enumerate(models):
        folds = results["models"][name]["folds"]
        xs = [f["fold"] + 1 + (j - (len(models) - 1) / 2) * width for f in folds]
        accs = [f["test_acc"] for f in folds]
        mean, std = results["models"][name]["mean"], results["models"][name]["std"]
        bars = ax1.bar(xs, accs, width=width, label=f"{name}: {mean:.3f} ± {std:.3f}")
        ax1.axhline(mean, color=bars.patches[0].get_facecolor(), ls="--", lw=1)
        val = torch.tensor([f["curves"]["val_acc"] for f in folds]).mean(0)
        test = torch.tensor([f["curves"]["test_acc"] for f in folds]).mean(0)
        epochs = range(1, val.numel() + 1)
        line, = ax2.plot(epochs, val, label=f"{name} val")
        ax2.plot(epochs, test, ls="--", color=line.get_color(), label=f"{name} test")
    ax1.set(xlabel="fold", ylabel="test accuracy at best validation epoch",
            title=f"{results['dataset']}: {len(results['models'][models[0]]['folds'])} folds",
            ylim=(0.0, 1.05))
    ax1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=len(models))
    ax2.set(xlabel="epoch", ylabel="accuracy (mean over folds)", title="learning curves",
            ylim=(0.0, 1.05))
    ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2 * len(models))
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def default_threads() -> int:
    # The graphs are small: intra-op threads buy little and oversubscribe a shared machine.
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="mutag", help="data set")
    p.add_argument("--models", default="plstm,gin",
                   help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--epochs", type=int, default=100, help="training epochs")
    p.add_argument("--folds", type=int, default=10, help="k of the stratified k-fold CV")
    p.add_argument("--run-folds", type=int, default=None,
                   help="run only the first N folds (None: all)")
    p.add_argument("--batch-size", type=int, default=32, help="graphs per training batch")
    p.add_argument("--hidden", type=int, default=64, help="hidden width of every model")
    p.add_argument("--layers", type=int, default=1,
                   help="PLSTMNet layers (four pLSTM blocks each); GIN gets 4x as many convs")
    p.add_argument("--heads", type=int, default=4, help="pLSTM heads")
    p.add_argument("--pool", choices=("mean", "sum"), default="mean", help="PLSTMNet pooling")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="AdamW learning rate (cosine schedule)")
    p.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay")
    p.add_argument("--gate-bias", type=float, default=0.0,
                   help="initial source/mark/direct gate bias of PLSTMConv (the authors' -5 "
                        "starts the graph path ~100x weaker than a node's own term)")
    p.add_argument("--no-edge-attr", dest="edge_attr", action="store_false",
                   help="do not give the edge (bond) features to PLSTMNet")
    p.add_argument("--max-graphs", type=int, default=1000, help="python-ast: dataset size")
    p.add_argument("--root", default=None, help="dataset cache (default: plstm_graph's)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... or auto")
    p.add_argument("--backend", choices=("auto", "torch", "native"), default="auto",
                   help="pLSTM scan: native C++/CUDA kernels when built (auto) or pure torch")
    p.add_argument("--threads", type=int, default=default_threads(),
                   help="torch intra-op CPU threads")
    p.add_argument("--seed", type=int, default=0, help="seed of splits, init and shuffling")
    p.add_argument("--output", default=None, help="write per-fold results as JSON here")
    p.add_argument("--plot", default=None,
                   help="save a PNG of per-fold accuracy and learning curves (needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.models if m not in MODELS]
    if bad or not args.models:
        p.error(f"--models: unknown {bad}; choose from {','.join(MODELS)}")
    if args.folds < 3:
        p.error("--folds must be at least 3")
    if args.epochs < 1:
        p.error("--epochs must be positive")
    return args


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    graphs, info = load_graphs(args.dataset, args.root, args.max_graphs)
    labels = [int(g.y) for g in graphs]
    print(f"{info['name']}: {info['num_graphs']} graphs, {info['num_features']} node features, "
          f"{info['num_classes']} classes | device {device}, {args.threads} thread(s), "
          f"native kernels: {plstm_graph.WITH_NATIVE} | data ready in "
          f"{time.perf_counter() - t0:.1f}s")
    splits = list(cv_splits(labels, args.folds, args.seed))
    run_folds = args.folds if args.run_folds is None else max(1, min(args.run_folds, args.folds))

    results = dict(dataset=info["name"], args=vars(args).copy(), info=info,
                   native=plstm_graph.WITH_NATIVE, models={})
    for name in args.models:
        folds = []
        start = time.perf_counter()
        outer = tqdm(range(run_folds), desc=f"{name} folds", disable=args.quiet,
                     dynamic_ncols=True)
        for fold in outer:
            folds.append(run_fold(name, info, args, graphs, splits[fold], fold, device,
                                  position=1))
            mean, _ = mean_std(f["test_acc"] for f in folds)
            outer.set_postfix(mean_test=f"{mean:.3f}")
        outer.close()
        mean, std = mean_std(f["test_acc"] for f in folds)
        params = sum(p.numel() for p in build_model(name, info, args).parameters())
        results["models"][name] = dict(mean=mean, std=std, seconds=time.perf_counter() - start,
                                       params=params, folds=folds)

    print()
    print(f"{info['name']}, {run_folds} of {args.folds} folds, {args.epochs} epochs, "
          f"hidden {args.hidden}: test accuracy at the best validation epoch")
    print(f"{'model':<8} {'params':>8} {'accuracy':>17} {'time':>9}")
    for name, r in results["models"].items():
        print(f"{name:<8} {r['params']:>8} {r['mean']:>9.3f} ± {r['std']:.3f} "
              f"{r['seconds']:>8.1f}s")
    results["seconds"] = time.perf_counter() - t0
    summary = " | ".join(f"{name} {r['mean']:.3f} ± {r['std']:.3f} ({r['seconds']:.0f}s)"
                         for name, r in results["models"].items())
    results["summary"] = (f"SUMMARY {info['name']} {run_folds}/{args.folds} folds, test accuracy: "
                          f"{summary} "
                          f"| total {results['seconds']:.0f}s")
    if args.output:
        os.makedirs(osp.dirname(osp.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as fh:
            json.dump(results, fh, indent=1)
    if args.plot:
        plot_results(results, args.plot)
    print(results["summary"])
    return results


if __name__ == "__main__":
    main()
