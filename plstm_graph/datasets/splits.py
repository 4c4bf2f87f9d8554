"""Deterministic train/val/test split helpers.

All helpers return a tuple ``(train_idx, val_idx, test_idx)`` of sorted
``torch.long`` index tensors that partition ``range(n)``.  They depend only on
their arguments (and ``seed``), never on global RNG state.
"""

from __future__ import annotations

import random
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

Split = Tuple[Tensor, Tensor, Tensor]


def _check_fractions(fractions: Sequence[float]) -> Tuple[float, float, float]:
    if len(fractions) != 3:
        raise ValueError("fractions must be (train, val, test)")
    fr = tuple(float(f) for f in fractions)
    if any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {fr}")
    return fr  # type: ignore[return-value]


def _counts(n: int, fractions: Sequence[float]) -> Tuple[int, int, int]:
    f_train, f_val, _ = _check_fractions(fractions)
    n_train = int(round(f_train * n))
    n_val = int(round(f_val * n))
    n_val = min(n_val, n - n_train)
    return n_train, n_val, n - n_train - n_val


def _as_split(parts: Sequence[List[int]]) -> Split:
    return tuple(torch.tensor(sorted(p), dtype=torch.long) for p in parts)  # type: ignore[return-value]


def random_split(n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                 seed: int = 0) -> Split:
    """Seeded uniform random split of ``range(n)``."""
    idx = list(range(int(n)))
    random.Random(seed).shuffle(idx)
    n_train, n_val, _ = _counts(len(idx), fractions)
    return _as_split([idx[:n_train], idx[n_train:n_train + n_val],
                      idx[n_train + n_val:]])


def stratified_split(labels, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                     seed: int = 0) -> Split:
    """Seeded split that keeps the class proportions of ``labels`` in each
    part (e.g. for MUTAG: ``stratified_split(dataset.y)``)."""
    if isinstance(labels, Tensor):
        labels = labels.view(-1).tolist()
    by_class: Dict[object, List[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    rng = random.Random(seed)
    parts: List[List[int]] = [[], [], []]
    for lab in sorted(by_class, key=repr):
        idx = by_class[lab]
        rng.shuffle(idx)
        n_train, n_val, _ = _counts(len(idx), fractions)
        parts[0] += idx[:n_train]
        parts[1] += idx[n_train:n_train + n_val]
        parts[2] += idx[n_train + n_val:]
    return _as_split(parts)


def group_split(groups: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1),
                seed: int = 0) -> Split:
    """Seeded split in which all items sharing a group key land in the same
    part (e.g. all functions of one source file).

    Groups are shuffled (after sorting, so the result does not depend on item
    order) and assigned greedily until each part reaches its share of items.
    """
    f_train, f_val, _ = _check_fractions(fractions)
    members: Dict[str, List[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(str(g), []).append(i)
    keys = sorted(members)
    random.Random(seed).shuffle(keys)
    n = len(groups)
    bounds = (f_train * n, (f_train + f_val) * n)
    parts: List[List[int]] = [[], [], []]
    seen = 0
    for key in keys:
        size = len(members[key])
        # Assign by the position of the group's midpoint in the cumulative
        # ordering; keeps every part close to its target size.
        mid = seen + size / 2.0
        part = 0 if mid < bounds[0] else (1 if mid < bounds[1] else 2)
        parts[part] += members[key]
        seen += size
    return _as_split(parts)
