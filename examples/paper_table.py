#!/usr/bin/env python
"""The paper's table from ``graph_classification.py`` results: a markdown table on stdout and,
with ``--plot``, a figure of the accuracy per data set and model with its spread over folds.

    python examples/paper_table.py docs/paper_results.json --plot docs/paper_results.png

Several JSON files (``--output`` of single-data-set runs or of ``--dataset all``) may be given;
their folds are merged per data set and model (a later file wins for the same fold), which
refuses to mix runs of different protocols. ``--output`` writes the merged results (without
learning curves) in the format of ``--dataset all``, so ``graph_classification.py --resume``
can complete it.

``--ablations`` reads single-data-set runs of one model instead, the first being the
baseline, and prints one row per run: the options by which it departs from the baseline (for
the baseline itself, those by which it departs from the example's defaults), its mean ± std
and its difference to the baseline over the same folds.

    python examples/paper_table.py --ablations base.json depth2.json bfs.json

``--select`` chooses between settings per fold on validation, as a tuned comparison must:
the inputs are runs of the same folds with different settings (e.g. ``--lr 1e-3`` and
``--lr 3e-4``, for every model); for each data set, model and fold it keeps the setting with
the best validation accuracy (ties: the lower validation loss, then the earlier file) and
reports the test accuracy of that setting, with how often each setting was chosen. The test
folds never take part in the choice.

    python examples/paper_table.py --select docs/paper_results.json lr3e-4.json
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import sys
from typing import Dict, List, Optional

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import (MODELS, PROTOCOL_ARGS, TU_SETS, mean_std, protocol_of,  # noqa: E402
                     runs_of, write_json)

#: column order of the table: the TU sets first, in the paper's order, then anything else
ORDER = [name.upper() for name in TU_SETS]
LABELS = {"plstm": "pLSTM (PLSTMNet)", "gin": "GIN", "gcn": "GCN", "gat": "GAT"}


def _in_order(names) -> List[str]:
    """Data set names in the table's column order (:data:`ORDER`, then the rest by name)."""
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def _runs(path: str) -> List[dict]:
    """The per-data-set runs of one result file."""
    with open(path) as fh:
        return runs_of(json.load(fh))


def merge(paths: List[str]) -> dict:
    """``{"datasets": {name: run}}`` with the folds of all inputs, curves dropped."""
    merged: Dict[str, dict] = {}
    folds: Dict[str, Dict[str, Dict[int, dict]]] = {}
    params: Dict[str, Dict[str, int]] = {}
    for path in paths:
        for run in _runs(path):
            name = run["dataset"]
            if name in merged:
                old, new = protocol_of(merged[name]["args"]), protocol_of(run["args"])
                diff = [k for k in PROTOCOL_ARGS if old[k] != new[k]]
                if diff:
                    raise SystemExit(f"{path}: {name} was run with other settings than an "
                                     f"earlier file ({', '.join(diff)}); not merging them")
            # the machines the folds ran on (files before 2026-12-04 do not say)
            machines = merged.get(name, {}).get("machines", [])
            for m in run.get("machines", []) + ([run["machine"]] if "machine" in run else []):
                if m not in machines:
                    machines.append(m)
            merged[name] = dict(dataset=name, args=dict(run["args"]), info=run["info"],
                                native=run.get("native"), machines=machines)
            for model, r in run["models"].items():
                params.setdefault(name, {})[model] = r["params"]
                slot = folds.setdefault(name, {}).setdefault(model, {})
                for f in r["folds"]:
                    slot[f["fold"]] = {k: v for k, v in f.items() if k != "curves"}
    for name, run in merged.items():
        models = {}
        for model in sorted(folds[name], key=lambda m: MODELS.index(m) if m in MODELS else 99):
            fs = [folds[name][model][i] for i in sorted(folds[name][model])]
            mean, std = mean_std(f["test_acc"] for f in fs)
            models[model] = dict(mean=mean, std=std, params=params[name][model], folds=fs,
                                 seconds=sum(f["seconds"] for f in fs))
        run["models"] = models
        run["args"]["models"] = list(models)
    names = _in_order(merged)
    return dict(datasets={n: merged[n] for n in names})


def cell(r: Optional[dict], k: int) -> str:
    if r is None:
        return "–"
    n = len(r["folds"])
    # a single fold has no spread: leave the ± out rather than print a misleading 0.000
    text = f"{r['mean']:.3f}" if n == 1 else f"{r['mean']:.3f} ± {r['std']:.3f}"
    return text if n == k else f"{text} ({n}/{k} folds)"


def _grid(runs: dict, cell_of) -> List[str]:
    """A markdown table with a row per model and a column per data set, each cell
    ``cell_of(data set, model)``."""
    names = list(runs)
    models = [m for m in MODELS if any(m in runs[n]["models"] for n in names)]
    lines = ["| model | " + " | ".join(names) + " |",
             "| --- | " + " | ".join("---:" for _ in names) + " |"]
    for m in models:
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cell_of(n, m) for n in names) +
                     " |")
    return lines


def markdown(table: dict) -> str:
    runs = table["datasets"]

    def accuracy(n, m):
        return cell(runs[n]["models"].get(m), runs[n]["args"]["folds"])

    def cost(n, m):
        r = runs[n]["models"].get(m)
        return "–" if r is None else (f"{r['seconds'] / len(r['folds']):.0f} s, "
                                      f"{r['params'] / 1e3:.0f}k")

    return "\n".join(_grid(runs, accuracy) +
                     ["", "Training time per fold (mean over the folds run, seconds) and "
                      "parameters:", ""] + _grid(runs, cost))


def plot(table: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = table["datasets"]
    names = list(runs)
    models = [m for m in MODELS if any(m in runs[n]["models"] for n in names)]
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(2.2 + 2.0 * len(names), 4.2))
    for j, m in enumerate(models):
        offset = (j - (len(models) - 1) / 2) * width
        xs, means, stds = [], [], []
        for i, n in enumerate(names):
            r = runs[n]["models"].get(m)
            if r is None:
                continue
            xs.append(i + offset)
            means.append(r["mean"])
            stds.append(r["std"])
        ax.bar(xs, means, width=width * 0.9, yerr=stds, capsize=3, alpha=0.75,
                      label=LABELS.get(m, m))
        for i, n in enumerate(names):  # every fold as a dot: the spread behind the error bar
            r = runs[n]["models"].get(m)
            if r is None:
                continue
            accs = [f["test_acc"] for f in r["folds"]]
            jitter = [(t / max(len(accs) - 1, 1) - 0.5) * width * 0.6 for t in range(len(accs))]
            ax.scatter([i + offset + d for d in jitter], accs, s=8, color="black", zorder=3,
                       alpha=0.6, edgecolors="none")
    labels = []
    for n in names:
        k = runs[n]["args"]["folds"]
        counts = {len(r["folds"]) for r in runs[n]["models"].values()}
        labels.append(n if counts == {k} else f"{n}\n({'/'.join(map(str, sorted(counts)))}"
                                              f" of {k} folds)")
    ax.set_xticks(range(len(names)), labels)
    accs = [f["test_acc"] for n in names for r in runs[n]["models"].values() for f in r["folds"]]
    # the interesting range: chance-level sets sit near 0.5, so start below the lowest fold
    ax.set_ylim(max(0.0, min(accs + [0.5]) - 0.1) if accs else 0.0, 1.02)
    ax.set_ylabel("test accuracy at best validation epoch")
    ax.set_title("stratified 10-fold CV: mean ± std over folds, dots = folds")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(models), fontsize=8)
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _flag(key: str, value) -> str:
    """A protocol argument as the command-line option that sets it."""
    if key == "edge_attr":
        return "" if value else "--no-edge-attr"
    if key == "transition_bias" and isinstance(value, dict):
        value = f"{value['P']:g},{value['D']:g}"
    return f"--{key.replace('_', '-')} {value}"


def _example_defaults() -> dict:
    """The protocol arguments of ``graph_classification.py`` run without options."""
    import graph_classification  # (its torch/PyG imports only where ablations are tabled)
    return protocol_of(vars(graph_classification.parse_args([])))


def ablation_markdown(paths: List[str], model: str = "plstm") -> str:
    """One row per run of ``model``: what it changes against the first run (the first run:
    against ``graph_classification.py``'s defaults), its accuracy, and the change of the mean
    over the folds both ran."""
    runs = []
    for path in paths:
        (run,) = _runs(path)
        if model not in run["models"]:
            raise SystemExit(f"{path} has no {model!r} results")
        runs.append((path, run, protocol_of(run["args"])))
    base_path, base, base_args = runs[0]
    defaults = _example_defaults()
    base_acc = {f["fold"]: f["test_acc"] for f in base["models"][model]["folds"]}
    lines = [f"| {base['dataset']}: {model} | folds | test accuracy | change | per fold | s/fold |",
             "| --- | ---: | ---: | ---: | --- | ---: |"]
    for path, run, args in runs:
        if run["dataset"] != base["dataset"]:
            raise SystemExit(f"{path} is {run['dataset']}, the baseline {base['dataset']}")
        if path == base_path:  # what the baseline itself departs from (e.g. --lr 3e-4)
            label = _departures(args, defaults)
            label = f"baseline: {label}" if label else "baseline (library defaults)"
        else:
            label = _departures(args, base_args) or "the baseline's settings"
        folds = run["models"][model]["folds"]
        acc = {f["fold"]: f["test_acc"] for f in folds}
        shared = sorted(set(acc) & set(base_acc))
        mean, std = mean_std(acc.values())
        delta = (sum(acc[i] - base_acc[i] for i in shared) / len(shared)) if shared else None
        change = "–" if path == base_path or delta is None else f"{delta:+.3f}"
        per_fold = " ".join(f"{acc[i]:.3f}" for i in sorted(acc))
        seconds = sum(f["seconds"] for f in folds) / len(folds)
        lines.append(f"| `{label}` | {len(folds)} | {mean:.3f} ± {std:.3f} | {change} | "
                     f"{per_fold} | {seconds:.0f} |")
    return "\n".join(lines)


def _departures(args: dict, ref: dict) -> str:
    """The options that set ``args`` where they differ from ``ref`` ("" when none)."""
    return " ".join(f for f in (_flag(k, v) for k, v in args.items() if v != ref[k]) if f)


def _setting_label(args: dict, base: dict) -> str:
    return _departures(args, base) or "first"


def select(paths: List[str]) -> dict:
    """Per data set, model and fold, the run whose setting had the best validation accuracy
    (see the module docstring): ``{"datasets": {name: {"folds": k, "settings": [labels],
    "models": {model: {"mean", "std", "folds", "chosen": {label: count}}}}}}`` (``chosen``
    has a key for every setting the model ran)."""
    # data set -> setting key -> (protocol args, {model: {fold: record}})
    runs: Dict[str, Dict[str, tuple]] = {}
    for path in paths:
        for run in _runs(path):
            args = protocol_of(run["args"])
            key = json.dumps(args, sort_keys=True, default=str)
            slot = runs.setdefault(run["dataset"], {}).setdefault(key, (args, {}))[1]
            for model, r in run["models"].items():
                for f in r["folds"]:
                    slot.setdefault(model, {})[f["fold"]] = f
    out = {}
    for name in _in_order(runs):
        settings = list(runs[name].values())
        base = settings[0][0]
        labels = [_setting_label(args, base) for args, _ in settings]
        models = {}
        for model in MODELS:
            have = [(label, folds[model]) for label, (_, folds) in zip(labels, settings)
                    if model in folds]
            if not have:
                continue
            # only folds that every setting of this model ran can be chosen between
            shared = sorted(set.intersection(*(set(folds) for _, folds in have)))
            if not shared:
                continue
            chosen: Dict[str, int] = {label: 0 for label, _ in have}
            picked = []
            for i in shared:
                # max validation accuracy, then min validation loss; max() keeps the first
                label, rec = max(((label, folds[i]) for label, folds in have),
                                 key=lambda pair: (pair[1]["val_acc"],
                                                   -pair[1].get("val_loss", 0.0)))
                chosen[label] += 1
                picked.append(dict(rec, setting=label))
            mean, std = mean_std(f["test_acc"] for f in picked)
            models[model] = dict(mean=mean, std=std, folds=picked, chosen=chosen)
        out[name] = dict(folds=base["folds"], settings=labels, models=models)
    return dict(datasets=out)


def select_markdown(table: dict) -> str:
    runs = table["datasets"]

    def chosen(n, m):
        r = runs[n]["models"].get(m)
        if r is None:
            return "–"
        text = cell(r, runs[n]["folds"])
        # how often each setting other than the first file's won the validation vote
        votes = [f"{label} {count}/{len(r['folds'])}" for label, count in r["chosen"].items()
                 if label != runs[n]["settings"][0]]
        missing = [s for s in runs[n]["settings"] if s not in r["chosen"]]
        return text + "".join(f"; {v}" for v in votes) + \
            "".join(f"; no `{s}` run" for s in missing)

    return "\n".join(_grid(runs, chosen))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="JSON written by graph_classification.py")
    p.add_argument("--output", default=None, help="write the merged results here")
    p.add_argument("--plot", default=None, help="save the figure here (needs matplotlib)")
    p.add_argument("--ablations", action="store_true",
                   help="one row per input run against the first (see above)")
    p.add_argument("--select", action="store_true",
                   help="per fold, the setting with the best validation accuracy (see above)")
    args = p.parse_args(argv)
    if args.select:
        if args.ablations or args.output or args.plot:
            p.error("--select prints a table only (no --ablations, --output or --plot)")
        table = select(args.inputs)
        text = select_markdown(table)
        print(text)
        table["markdown"] = text
        return table
    if args.ablations:
        if args.output or args.plot:
            p.error("--ablations prints a table only (no --output, no --plot)")
        text = ablation_markdown(args.inputs)
        print(text)
        return dict(markdown=text)
    table = merge(args.inputs)
    if args.output:
        write_json(table, args.output)
    if args.plot:
        plot(table, args.plot)
    text = markdown(table)
    print(text)
    table["markdown"] = text
    return table


if __name__ == "__main__":
    main()
