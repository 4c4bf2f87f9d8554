#!/usr/bin/env python
"""Graph classification with ``PLSTMNet`` next to GIN, GCN and GAT (MUTAG and GIN by default).

Data sets: the pLSTM paper's four TU benchmarks, MUTAG, NCI1, PROTEINS and PTC_FM (bundled with
the package, ``--dataset all`` runs them one after the other), and a directed Python-AST task.

Protocol (the pLSTM paper's): stratified 10-fold cross-validation. For fold ``i`` the test set
is fold ``i``, the validation set is fold ``i + 1`` (mod k), carved from the training part and
stratified like every fold, and the other ``k - 2`` folds are trained on: 80/10/10 for
``k = 10``. Every model is trained for 100 epochs with AdamW (lr 1e-3, weight decay 1e-2),
gradients clipped to norm 1, and a learning rate that rises linearly over the first
``--warmup-epochs`` and then follows a cosine to zero (updated every step). After every epoch
the model is evaluated on validation and test, and the fold's score is the test accuracy at
the epoch with the best validation accuracy. Ties are broken by the lower validation loss, then
by the earlier epoch. All models get the same folds, batches (same shuffling seed), hidden
size, epochs and optimiser.

Models: ``PLSTMNet`` with its library defaults (one layer = four pLSTM blocks: P and D mode on
the DAG and on its reverse, each with an MLP; bond types as edge features where the set has
them; mean pooling) and PyG's own ``GIN``, ``GCN`` and ``GAT`` from
``torch_geometric.nn.models`` with as many message-passing layers as PLSTMNet has pLSTM blocks
(four), the same width, batch norm, sum pooling and a linear head; the baselines see node
features only (GINConv and GCNConv take no edge features; GAT is kept alike). Undirected TU
graphs are oriented from lower to higher node id for ``PLSTMNet``; the baselines get the graph
as stored (both directions).
The reported "±" is the standard deviation over folds (population, ``ddof=0``).

Every graph goes through :class:`~plstm_graph.PrepareDAG` exactly once, as the dataset's
``pre_transform`` (cached on disk), so batches are ``DAGData`` batches whose line-graph indices
are offset by edge counts, and each training step only builds the batch's ``DAGPlan``.

Run ``python examples/graph_classification.py`` (a few minutes on two CPU cores) or
``--help`` for the options. Ends with a one-line ``SUMMARY`` per data set. ``--workers 2``
trains two folds at a time, each in its own process (the same numbers as one process: every
fold seeds itself). ``make paper`` runs the whole table (``--dataset all --models
plstm,gin,gcn,gat --workers 2 --threads 1``, hours on a CPU) and
``examples/paper_table.py`` turns its JSON into the README table and a figure.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import os.path as osp
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Dict, List, Optional, Sequence

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))  # the shared helpers next to this file
from _common import (  # noqa: E402
    MODELS, PROTOCOL_ARGS, TU_SETS, SymmetrizeEdges, apply_runtime_arguments, default_threads,
    evaluate, finish, fixed_batches, improves, machine_info, mean_std, parse_models,
    prepare_list, prepared_root, print_accuracy_table, protocol_of, runs_of, skip_loader_passes,
    split_loaders, stratified_folds, train_epoch, write_json)

import plstm_graph  # noqa: E402  (importable after _common set up the path)
from torch_geometric.nn import global_add_pool  # noqa: E402
from torch_geometric.nn.models import GAT, GCN, GIN  # noqa: E402
from torch_geometric.transforms import Compose  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from plstm_graph import DAGPlan, PLSTMNet, PrepareDAG  # noqa: E402

DATASETS = TU_SETS + ("python-ast",)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def subset_indices(n: int, size: int, seed: int) -> List[int]:
    """A seeded random subset of ``size`` of ``range(n)`` (sorted), for quick trial runs."""
    gen = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=gen)[:size].tolist())


def load_graphs(name: str, root: Optional[str], max_graphs: Optional[int], seed: int = 0,
                orient: str = "id"):
    """``(graphs, info)`` with every graph prepared once by :class:`PrepareDAG`.

    ``max_graphs``: the Python-AST set is built with that many graphs (1000 if None); a TU set
    is cut to a seeded random subset of that size, prepared in memory (None or 0: all of
    it). ``orient``: how the undirected TU graphs become DAGs, ``"id"`` (lower to higher node
    id) or ``"bfs"`` (away from the root of a breadth-first search); the ASTs keep their
    direction."""
    if name in TU_SETS:
        from plstm_graph.datasets import default_root, load_tu

        pre = PrepareDAG(orient="auto" if orient == "id" else orient)
        if not max_graphs:
            # each orientation has its own cache (PyG does not reprocess a cached set)
            cache = prepared_root(root) if orient == "id" else osp.join(prepared_root(root),
                                                                        orient)
            dataset = load_tu(name, root=cache, pre_transform=pre)
            graphs = prepare_list(dataset, pre)
        else:  # a small subset: not worth preparing (and caching) the whole set for it
            dataset = load_tu(name, root=osp.join(root or default_root(), "plain"))
            keep = subset_indices(len(dataset), max_graphs, seed)
            graphs = [pre(dataset[i]) for i in keep]
        num_classes, display = dataset.num_classes, dataset.name
        edge_dim = dataset.num_edge_features or None
    elif name == "python-ast":
        from plstm_graph.datasets import PythonASTDataset

        # genuinely directed ASTs: keep the direction; the baselines get both directions
        pre = Compose([PrepareDAG(orient="none"), SymmetrizeEdges()])
        dataset = PythonASTDataset(root=prepared_root(root), task="graph",
                                   max_graphs=1000 if max_graphs is None else max_graphs,
                                   pre_transform=pre)
        num_classes, edge_dim, display = dataset.num_classes, dataset[0].edge_attr.size(1), \
            "PythonAST-graph"
        graphs = prepare_list(dataset, pre)
    else:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
    info = dict(name=display, num_graphs=len(graphs), num_features=graphs[0].x.size(1),
                num_classes=num_classes, edge_dim=edge_dim)
    return graphs, info


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


BASELINES = {"gin": GIN, "gcn": GCN, "gat": GAT}


class BaselineGraphClassifier(torch.nn.Module):
    """One of PyG's ``GIN`` (Xu et al., 2019), ``GCN`` (Kipf & Welling, 2017) or ``GAT``
    (Velickovic et al., 2018) on the stored (undirected) graph, batch norm between layers,
    sum pooling, a linear head."""

    def __init__(self, kind, in_channels, hidden, out_channels, num_layers, dropout, heads=4):
        super().__init__()
        extra = dict(heads=heads) if kind == "gat" else {}  # GAT: hidden // heads per head
        self.gnn = BASELINES[kind](in_channels, hidden, num_layers, dropout=dropout,
                                   norm="batch_norm", **extra)
        self.head = torch.nn.Linear(hidden, out_channels)

    def forward(self, batch):
        h = self.gnn(batch.x, batch.edge_index)
        return self.head(global_add_pool(h, batch.batch))


def build_model(name: str, info: dict, args) -> torch.nn.Module:
    if name == "plstm":
        return PLSTMGraphClassifier(
            info["num_features"], args.hidden, info["num_classes"], args.layers,
            info["edge_dim"] if args.edge_attr else None, args.dropout, pool=args.pool,
            heads=args.heads, backend=None if args.backend == "auto" else args.backend,
            transition_form=args.transition_form,
            **{k: v for k, v in (("mlp_ratio", args.mlp_ratio), ("degree_dim", args.degree_dim),
                                 ("transition_bias", args.transition_bias),
                                 ("gate_bias", args.gate_bias), ("norm_eps", args.norm_eps))
               if v is not None})
    if name in BASELINES:
        # as many message-passing layers as PLSTMNet has pLSTM blocks (four per layer)
        return BaselineGraphClassifier(name, info["num_features"], args.hidden,
                                       info["num_classes"], 4 * args.layers, args.dropout,
                                       heads=args.heads)
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def warmup_cosine(total_steps: int, warmup_steps: int):
    """Learning-rate factor per optimiser step: linear from ``1/warmup_steps`` to 1 over the
    warm-up, then a cosine from 1 to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def run_fold(name, info, args, graphs, split, fold, device, position=0) -> dict:
    train_idx, val_idx, test_idx = split
    seed = args.seed * 1000 + fold
    torch.manual_seed(seed)
    model = build_model(name, info, args).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr,
                                  weight_decay=args.weight_decay)
    train_loader, val_loader, test_loader = split_loaders(graphs, split, args.batch_size, seed,
                                                          eval_batch_size=256)
    steps = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(args.epochs * steps,
                                 min(args.warmup_epochs, args.epochs - 1) * steps))

    val_batches, test_batches = fixed_batches(val_loader), fixed_batches(test_loader)
    curves = {k: [] for k in ("train_loss", "val_acc", "val_loss", "test_acc", "test_loss")}
    best = None
    start = time.perf_counter()
    bar = tqdm(range(1, args.epochs + 1), desc=f"{name:>5} fold {fold + 1}/{args.folds}",
               leave=False, position=position, disable=args.quiet, dynamic_ncols=True)
    for epoch in bar:
        train_loss = train_epoch(model, train_loader, optimizer, device, clip=args.clip,
                                 scheduler=scheduler)
        val_acc, val_loss = evaluate(model, val_batches, device)
        skip_loader_passes(2)  # the val and test loader passes of earlier versions
        new_best = improves(best, val_acc, val_loss)
        # without curves only the selected epoch's (and the last) test score is ever read
        if args.curves or new_best or epoch == args.epochs:
            test_acc, test_loss = evaluate(model, test_batches, device)
        if args.curves:
            for key, value in zip(curves, (train_loss, val_acc, val_loss, test_acc, test_loss)):
                curves[key].append(value)
        if new_best:
            best = dict(epoch=epoch, val_acc=val_acc, val_loss=val_loss, test_acc=test_acc)
        bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{val_acc:.3f}",
                        best_test=f"{best['test_acc']:.3f}")
    bar.close()
    best.update(fold=fold, seconds=time.perf_counter() - start,
                final_test_acc=test_acc,
                sizes=[len(train_idx), len(val_idx), len(test_idx)])
    if args.curves:
        best["curves"] = curves
    return best


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
        if all("curves" in f for f in folds):  # (absent after --no-curves)
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
def transition_bias_arg(text: str) -> dict:
    """``--transition-bias P,D`` as the layer's ``{"P": ..., "D": ...}``."""
    try:
        p_mode, d_mode = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers 'P,D' (e.g. 6,2), got {text!r}")
    return {"P": p_mode, "D": d_mode}


def fold_ids_arg(text: str) -> List[int]:
    try:
        ids = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fold numbers like 5,6,7, got {text!r}")
    if len(set(ids)) != len(ids) or min(ids) < 0:
        raise argparse.ArgumentTypeError(f"fold numbers must be distinct and >= 0, got {text!r}")
    return sorted(ids)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS + ("all",), default="mutag",
                   help=f"data set; all = the paper's table: {', '.join(TU_SETS)}")
    p.add_argument("--models", default="plstm,gin",
                   help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--epochs", type=int, default=100, help="training epochs")
    p.add_argument("--folds", type=int, default=10, help="k of the stratified k-fold CV")
    p.add_argument("--run-folds", type=int, default=None,
                   help="run only the first N folds (None: all)")
    p.add_argument("--batch-size", type=int, default=32, help="graphs per training batch")
    p.add_argument("--hidden", type=int, default=64, help="hidden width of every model")
    p.add_argument("--layers", type=int, default=1,
                   help="PLSTMNet layers (four pLSTM blocks each); the baselines get 4x as "
                        "many message-passing layers")
    p.add_argument("--heads", type=int, default=4, help="pLSTM heads, GAT attention heads")
    p.add_argument("--pool", choices=("mean", "sum"), default="mean", help="PLSTMNet pooling")
    p.add_argument("--mlp-ratio", type=int, default=None,
                   help="PLSTMNet MLP width as a multiple of --hidden (None: the model's "
                        "default; an ablation)")
    p.add_argument("--degree-dim", type=int, default=None,
                   help="PLSTMNet degree-encoding width, 0 disables it (None: the model's "
                        "default; an ablation)")
    p.add_argument("--orient", choices=("id", "bfs"), default="id",
                   help="how PLSTMNet's DAG is made from an undirected TU graph: lower to "
                        "higher node id (the paper's), or away from the root of a "
                        "breadth-first search per component (an ablation)")
    p.add_argument("--transition-bias", type=transition_bias_arg, default=None,
                   help="initial transition logits 'P,D' (None: the layer's default, 6,2; "
                        "an ablation)")
    p.add_argument("--gate-bias", type=float, default=None,
                   help="initial source/mark/direct gate logit (None: the layer's default, "
                        "0; an ablation)")
    p.add_argument("--norm-eps", type=float, default=None,
                   help="epsilon of the per-head RMSNorm (None: the layer's default, 1e-2; "
                        "an ablation)")
    p.add_argument("--dropout", type=float, default=0.1,
                   help="dropout of every model (PLSTMNet's own default is 0: the paper's "
                        "protocol regularises its small training sets, and all the numbers "
                        "of the README's tables ran with 0.1)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay")
    p.add_argument("--warmup-epochs", type=int, default=5,
                   help="linear learning-rate warm-up before the cosine decay (at most "
                        "epochs - 1, so that short trial runs still decay)")
    p.add_argument("--clip", type=float, default=1.0,
                   help="gradient norm clipping (0: none)")
    p.add_argument("--no-edge-attr", dest="edge_attr", action="store_false",
                   help="do not give the edge (bond) features to PLSTMNet")
    p.add_argument("--transition-form", choices=("arc", "factorised"), default="arc",
                   help="PLSTMNet's P-mode transitions with edge features: one logit per "
                        "line-graph arc, or a node factor times an outgoing-edge factor")
    p.add_argument("--max-graphs", type=int, default=None,
                   help="python-ast: data set size (None: 1000); TU sets: a seeded random "
                        "subset of this size for trial runs (None: the whole set)")
    p.add_argument("--root", default=None, help="dataset cache (default: plstm_graph's)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... or auto")
    p.add_argument("--backend", choices=("auto", "torch", "native"), default="auto",
                   help="pLSTM scan: native C++/CUDA kernels when built (auto) or pure torch")
    p.add_argument("--threads", type=int, default=default_threads(),
                   help="torch intra-op CPU threads")
    p.add_argument("--seed", type=int, default=0, help="seed of splits, init and shuffling")
    p.add_argument("--output", default=None,
                   help="write per-fold results as JSON here (rewritten after every fold)")
    p.add_argument("--resume", action="store_true",
                   help="keep the folds already in --output that were run with the same "
                        "protocol and run only the missing ones")
    p.add_argument("--no-curves", dest="curves", action="store_false",
                   help="leave the per-epoch learning curves out of the JSON")
    p.add_argument("--plot", default=None,
                   help="save a PNG of per-fold accuracy and learning curves (needs "
                        "matplotlib; one data set only)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--fold-ids", type=fold_ids_arg, default=None,
                   help="run only these folds, 0-based as 'fold' in the JSON (e.g. 5,6,7), "
                        "instead of the first --run-folds; for paired ablations against "
                        "folds of a baseline that ran elsewhere")
    p.add_argument("--workers", type=int, default=1,
                   help="folds trained at the same time, each in its own process with "
                        "--threads threads (e.g. --workers 2 --threads 1 on two cores); the "
                        "numbers are those of --workers 1")
    args = p.parse_args(argv)
    args.models = parse_models(p, args.models, MODELS)
    if len(set(args.models)) != len(args.models):
        p.error("--models: a model is listed twice")
    if args.folds < 3:
        p.error("--folds must be at least 3")
    if args.epochs < 1:
        p.error("--epochs must be positive")
    if args.warmup_epochs < 0:
        p.error("--warmup-epochs must not be negative")
    if args.max_graphs is not None and args.max_graphs < 2 * args.folds:
        p.error(f"--max-graphs must be at least 2 x --folds ({2 * args.folds})")
    if args.resume and not args.output:
        p.error("--resume needs --output")
    if args.fold_ids is not None and max(args.fold_ids) >= args.folds:
        p.error(f"--fold-ids: folds are numbered 0 to {args.folds - 1}")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.orient != "id" and args.dataset == "python-ast":
        p.error("--orient applies to the undirected TU sets; the ASTs keep their direction")
    if args.norm_eps is not None and args.norm_eps <= 0:
        p.error("--norm-eps must be positive")
    if args.plot and args.dataset == "all":
        p.error("--plot draws one data set; for the table use examples/paper_table.py")
    return args


def previous_folds(path: str, args) -> Dict[str, Dict[str, List[dict]]]:
    """``{data set: {model: folds}}`` from an earlier ``--output`` run of the same protocol."""
    if not osp.isfile(path):
        return {}
    with open(path) as fh:
        saved = json.load(fh)
    out: Dict[str, Dict[str, List[dict]]] = {}
    for run in runs_of(saved):
        saved_args = run["args"]
        old = protocol_of(saved_args)
        diff = [k for k in PROTOCOL_ARGS if old[k] != getattr(args, k)]
        if diff:
            raise SystemExit(f"--resume: {path} holds {run['dataset']} run with other "
                             f"settings ({', '.join(f'{k}={saved_args.get(k)!r}' for k in diff)}); "
                             f"use another --output or drop --resume")
        out[run["dataset"]] = {m: r["folds"] for m, r in run["models"].items()}
    return out


def summarize(results: dict, run_folds: int, args) -> None:
    for r in results["models"].values():
        if r["folds"]:
            r["mean"], r["std"] = mean_std(f["test_acc"] for f in r["folds"])
    def text(name, r):
        if not r["folds"]:
            return f"{name} pending"
        n = len(r["folds"])
        count = "" if n == run_folds else f"{n} folds, "
        return f"{name} {r['mean']:.3f} ± {r['std']:.3f} ({count}{r['seconds']:.0f}s)"

    summary = " | ".join(text(name, r) for name, r in results["models"].items())
    results["summary"] = (f"SUMMARY {results['dataset']} {run_folds}/{args.folds} folds, "
                          f"test accuracy: {summary} | total {results['seconds']:.0f}s")


# ``--workers``: folds in separate processes. Every fold seeds itself and builds its own model,
# loaders and optimiser, so a fold gives the same numbers in any process and order.
_WORKER: dict = {}


def fold_inputs(dataset: str, args):
    """``(graphs, info, splits)``: the prepared graphs and the folds every run of ``dataset``
    trains on."""
    graphs, info = load_graphs(dataset, args.root, args.max_graphs, args.seed, args.orient)
    return graphs, info, list(cv_splits([int(g.y) for g in graphs], args.folds, args.seed))


def _start_worker(dataset: str, args) -> None:
    device = apply_runtime_arguments(args)
    graphs, info, splits = fold_inputs(dataset, args)
    _WORKER.update(args=args, device=device, graphs=graphs, info=info, splits=splits)


def _worker_fold(name: str, fold: int) -> dict:
    w = _WORKER
    return run_fold(name, w["info"], w["args"], w["graphs"], w["splits"][fold], fold,
                    w["device"])


def run_dataset(dataset: str, args, device, done: Dict[str, List[dict]], save) -> dict:
    """All requested models on one data set; ``save(results)`` is called after every fold."""
    t0 = time.perf_counter()
    graphs, info, splits = fold_inputs(dataset, args)
    print(f"{info['name']}: {info['num_graphs']} graphs, {info['num_features']} node features, "
          f"{info['edge_dim'] or 0} edge features, {info['num_classes']} classes | device "
          f"{device}, {args.threads} thread(s), native kernels: {plstm_graph.WITH_NATIVE} | "
          f"data ready in {time.perf_counter() - t0:.1f}s", flush=True)
    run_folds = args.folds if args.run_folds is None else max(1, min(args.run_folds, args.folds))
    fold_ids = range(run_folds) if args.fold_ids is None else args.fold_ids
    if args.fold_ids is not None:
        run_folds = len(fold_ids)

    stored = {k: v for k, v in vars(args).items() if k not in ("models",)}
    results = dict(dataset=info["name"], args=dict(stored, dataset=dataset, models=args.models),
                   info=info, native=plstm_graph.WITH_NATIVE,
                   machine=machine_info(), models={})
    # Every fold already in the file (also of models not requested now, or beyond --run-folds)
    # is part of every save: an interrupted --resume run must never lose folds it was given.
    for name in list(done) + [m for m in args.models if m not in done]:
        folds = sorted(done.get(name, []), key=lambda f: f["fold"])
        if not folds and name not in args.models:
            continue
        params = (sum(p.numel() for p in build_model(name, info, args).parameters())
                  if name in MODELS else 0)
        results["models"][name] = dict(mean=0.0, std=0.0, params=params, folds=folds,
                                       seconds=sum(f["seconds"] for f in folds))
    def record(name: str, f: dict) -> None:
        entry = results["models"][name]
        entry["folds"] = sorted(entry["folds"] + [f], key=lambda g: g["fold"])
        entry["seconds"] += f["seconds"]
        results["seconds"] = time.perf_counter() - t0
        summarize(results, run_folds, args)
        save(results)

    have = {name: {f["fold"] for f in results["models"][name]["folds"]} for name in args.models}
    todo = [(name, fold) for name in args.models for fold in fold_ids
            if fold not in have[name]]
    if args.workers > 1 and len(todo) > 1:
        quiet = argparse.Namespace(**dict(vars(args), quiet=True))
        bar = tqdm(total=len(todo), desc=f"{info['name']} folds ({args.workers} processes)",
                   disable=args.quiet, dynamic_ncols=True)
        with ProcessPoolExecutor(max_workers=min(args.workers, len(todo)),
                                 mp_context=get_context("spawn"), initializer=_start_worker,
                                 initargs=(dataset, quiet)) as pool:
            jobs = {pool.submit(_worker_fold, name, fold): name for name, fold in todo}
            for job in as_completed(jobs):
                record(jobs[job], job.result())
                bar.update()
        bar.close()
    else:
        for name, fold in tqdm(todo, desc=f"{info['name']} folds", disable=args.quiet,
                               dynamic_ncols=True):
            record(name, run_fold(name, info, args, graphs, splits[fold], fold, device,
                                  position=1))
    results["seconds"] = time.perf_counter() - t0
    summarize(results, run_folds, args)
    save(results)

    print()
    print(f"{info['name']}, {run_folds} of {args.folds} folds, {args.epochs} epochs, "
          f"hidden {args.hidden}: test accuracy at the best validation epoch")
    print_accuracy_table(results["models"])
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = apply_runtime_arguments(args)
    t0 = time.perf_counter()
    done = previous_folds(args.output, args) if args.resume else {}
    names = TU_SETS if args.dataset == "all" else (args.dataset,)
    table = dict(datasets={}, native=plstm_graph.WITH_NATIVE)

    def save(results):
        if not args.output:
            return
        if args.dataset == "all":
            table["datasets"][results["dataset"]] = results
            write_json(table, args.output)
        else:
            write_json(results, args.output)

    runs = []
    for name in names:
        display = "PythonAST-graph" if name == "python-ast" else name.upper()
        runs.append(run_dataset(name, args, device, done.get(display, {}), save))
    if args.dataset != "all":
        (results,) = runs
        if args.plot:
            plot_results(results, args.plot)
        print(results["summary"])
        return results
    table["seconds"] = time.perf_counter() - t0
    print()
    return finish(table, "\n".join(r["summary"] for r in runs), args.output)


if __name__ == "__main__":
    main()
