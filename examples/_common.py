"""Helpers shared by the examples (this module is meant for sharing; each example imports it
from the folder it lives in): the data-set cache folder keyed by the preparation code,
preparing and checking batches, stratified folds, one training epoch and one evaluation pass,
the protocol of the graph classification runs that ``paper_table.py`` reads, and small
command-line and reporting utilities.

Importing it also makes ``plstm_graph`` importable from a source checkout that was not
installed.
"""
from __future__ import annotations

import json
import os
import os.path as osp
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

try:
    import plstm_graph  # noqa: F401
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    import plstm_graph  # noqa: F401

from torch_geometric.utils import to_undirected  # noqa: E402

from plstm_graph import DAGData, DAGDataLoader  # noqa: E402

#: the models graph_classification.py compares, in the order of the table
MODELS = ("plstm", "gin", "gcn", "gat")
#: the paper's table; ``--dataset all`` runs these in this order
TU_SETS = ("mutag", "nci1", "proteins", "ptc_fm")


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
    import importlib
    import inspect
    import pkgutil

    from plstm_graph import dag, transforms
    from plstm_graph.datasets import default_root

    # every module of the dag package, not just its __init__ (which only re-exports)
    modules = [dag] + [importlib.import_module(f"{dag.__name__}.{info.name}")
                       for info in pkgutil.iter_modules(dag.__path__)] + [transforms]
    code = "".join(inspect.getsource(m) for m in modules)
    tag = hashlib.sha1(code.encode()).hexdigest()[:10]
    return osp.join(root or default_root(), f"prepared-{tag}")


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


def split_loaders(graphs, split, batch_size: int, seed: int, eval_batch_size: int):
    """``(train, val, test)`` loaders over the index lists of ``split``. The training part is
    shuffled by its own generator seeded with ``seed``, so that every model sees the same
    batches; its first batch is checked (drawing it advances that generator, so the order of
    these calls is part of the protocol). ``DAGDataLoader`` gives PyG's batches, faster."""
    train_idx, val_idx, test_idx = split
    gen = torch.Generator().manual_seed(seed)
    train_loader = DAGDataLoader([graphs[i] for i in train_idx], batch_size=batch_size,
                                 shuffle=True, generator=gen)
    val_loader = DAGDataLoader([graphs[i] for i in val_idx], batch_size=eval_batch_size)
    test_loader = DAGDataLoader([graphs[i] for i in test_idx], batch_size=eval_batch_size)
    check_batch(next(iter(train_loader)))
    return train_loader, val_loader, test_loader


def fixed_batches(loader) -> list:
    """The batches of an unshuffled ``loader``, collated once (evaluation sees the same
    batches every epoch). Collated directly rather than by iterating ``loader``: every pass
    over a ``DataLoader`` draws its worker seed from the global random stream."""
    data, size = loader.dataset, loader.batch_size
    return [loader.collate_fn([data[i] for i in range(start, min(start + size, len(data)))])
            for start in range(0, len(data), size)]


def skip_loader_passes(count: int) -> None:
    """Draw what ``count`` passes over an unshuffled ``DataLoader`` would draw from the global
    random stream (one worker seed each), so that evaluating on :func:`fixed_batches` leaves
    the training's dropout masks what they were with per-epoch loader passes (and the
    recorded runs reproducible)."""
    for _ in range(count):
        torch.empty((), dtype=torch.int64).random_()


def all_targets(batch, logits) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every row of ``logits`` is scored against ``batch.y`` (one label per graph, or per
    node)."""
    return logits, batch.y


def masked_targets(batch, logits) -> Tuple[torch.Tensor, torch.Tensor]:
    """Only the rows of ``batch.label_mask`` are scored."""
    mask = batch.label_mask
    return logits[mask], batch.y[mask]


Targets = Callable[[object, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


def train_epoch(model, loader, optimizer, device, targets: Targets = all_targets,
                clip: float = 0.0, scheduler=None) -> float:
    """One pass over ``loader``; the mean cross-entropy per scored target. ``clip > 0`` clips
    the gradient norm; ``scheduler`` (if given) is stepped after every optimiser step."""
    model.train()
    total, count = 0.0, 0
    for batch in loader:
        batch = batch.to(device)
        optimizer.zero_grad()
        logits, y = targets(batch, model(batch))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += float(loss.detach()) * y.numel()
        count += y.numel()
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model, loader, device, targets: Targets = all_targets):
    """``(accuracy, mean cross-entropy)`` over the scored targets."""
    model.eval()
    correct, loss, count = 0, 0.0, 0
    for batch in loader:
        batch = batch.to(device)
        logits, y = targets(batch, model(batch))
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
        count += y.numel()
    return correct / max(count, 1), loss / max(count, 1)


def improves(best: Optional[dict], val_acc: float, val_loss: float) -> bool:
    """The model selection of the examples: higher validation accuracy, ties broken by the
    lower validation loss, then by the earlier epoch (a later equal epoch does not win)."""
    return best is None or (val_acc, -val_loss) > (best["val_acc"], -best["val_loss"])


def mean_std(values: Sequence[float]):
    t = torch.tensor(list(values), dtype=torch.float64)
    std = float(t.std(unbiased=False)) if t.numel() > 1 else 0.0
    return float(t.mean()), std


def default_threads() -> int:
    # The graphs are small: intra-op threads buy little and oversubscribe a shared machine.
    return max(1, min(4, (os.cpu_count() or 2) // 2))


#: arguments that change the numbers; --resume only reuses folds run with the same values
PROTOCOL_ARGS = ("epochs", "folds", "batch_size", "hidden", "layers", "heads", "pool",
                 "dropout", "lr", "weight_decay", "warmup_epochs", "clip", "edge_attr",
                 "max_graphs", "seed", "transition_form", "mlp_ratio", "degree_dim",
                 "orient", "transition_bias", "gate_bias", "norm_eps")
#: protocol arguments added later, with the value that files written before them ran with
LATER_ARGS = {"transition_form": "arc", "mlp_ratio": None, "degree_dim": None,
              "orient": "id", "transition_bias": None, "gate_bias": None, "norm_eps": None}


def runs_of(saved: dict) -> List[dict]:
    """The per-data-set runs in a ``graph_classification.py --output`` file (one run, or the
    ``"datasets"`` of ``--dataset all``)."""
    return list(saved["datasets"].values()) if "datasets" in saved else [saved]


def protocol_of(saved_args: dict) -> dict:
    """A saved run's :data:`PROTOCOL_ARGS`, the ones added later at the values runs made
    before them used (:data:`LATER_ARGS`)."""
    return {k: saved_args.get(k, LATER_ARGS.get(k)) for k in PROTOCOL_ARGS}


def parse_models(parser, text: str, choices: Sequence[str]) -> List[str]:
    """``--models``: a comma-separated, non-empty subset of ``choices``."""
    models = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in models if m not in choices]
    if bad or not models:
        parser.error(f"--models: unknown {bad}; choose from {','.join(choices)}")
    return models


def print_accuracy_table(models: Dict[str, dict]) -> None:
    """One row per model: parameters, mean ± std accuracy, seconds."""
    print(f"{'model':<8} {'params':>8} {'accuracy':>17} {'time':>9}")
    for name, r in models.items():
        print(f"{name:<8} {r['params']:>8} {r['mean']:>9.3f} ± {r['std']:.3f} "
              f"{r['seconds']:>8.1f}s")


def finish(results: dict, summary: str, output: Optional[str]) -> dict:
    """Ends a run: the one-line ``SUMMARY`` goes into the results, which are written to
    ``output`` (if given) before the summary is printed as the last line."""
    results["summary"] = summary
    if output:
        write_json(results, output)
    print(summary)
    return results


def add_runtime_arguments(parser) -> None:
    """``--backend``, ``--device`` and ``--threads``: where and how the models run (the
    numbers do not depend on them beyond floating-point rounding)."""
    parser.add_argument("--backend", choices=("auto", "torch", "native"), default="auto",
                        help="pLSTM scan: native kernels when built (auto) or pure torch")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... or auto")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="torch intra-op CPU threads")


def apply_runtime_arguments(args) -> torch.device:
    """Sets torch's intra-op threads to ``args.threads``; the device ``args.device`` names."""
    torch.set_num_threads(args.threads)
    return resolve_device(args.device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def machine_info() -> dict:
    """Where a run ran. Other CPUs (and other torch/MKL builds) round differently, and with one
    seed per fold that moves single folds by a few per cent, so every result file says where
    its numbers come from; runs compare fold by fold only on the same machine."""
    import platform

    info = dict(arch=platform.machine(), cpus=os.cpu_count(), torch=torch.__version__)
    fields: Dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if not line.strip():
                    break  # the first processor describes them all
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    info["cpu"] = fields.get("model name") or platform.processor() or None
    if fields:
        info["cpu_id"] = "/".join(fields.get(k, "?") for k in ("vendor_id", "cpu family",
                                                                "model", "stepping"))
        flags = set(fields.get("flags", "").split())
        info["isa"] = [f for f in ("avx2", "fma", "avx512f") if f in flags]
    return info


def write_json(obj: dict, path: str) -> None:
    # Rewritten after every fold of runs that take hours: never leave a truncated file.
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)
