"""Timing helpers shared by the benchmarks (this module is meant for sharing; the benchmarks
import it from the folder they live in)."""
from __future__ import annotations

import time
from typing import Callable, Union

import torch


def median_seconds(fn: Callable, device: Union[str, torch.device], repeat: int,
                   budget: float = 20.0) -> float:
    """Median seconds of ``fn`` over up to ``repeat`` runs after one warm-up run.

    Stops early once ``budget`` seconds have passed, so that one slow case cannot hold up a
    whole table. On CUDA every run is synchronised: kernels are launched asynchronously and
    would otherwise be timed as free."""
    cuda = torch.device(device).type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    fn()
    sync()
    times = []
    start = time.perf_counter()
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget:
            break
    times.sort()
    return times[len(times) // 2]
