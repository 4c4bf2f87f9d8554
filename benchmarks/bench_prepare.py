"""What a plain PyG batch costs before the kernels run: the DAG preparation of one batch
(orientation by id, levels of both directions, the line graph, both D-mode multitrees, the
four schedules), native against the Python reference; the collation of prepared graphs,
``collate_dags`` (``DAGDataLoader``) against PyG's ``Batch.from_data_list``; and
``plstm_dag`` forward+backward with and without a prebuilt schedule.

    python benchmarks/bench_prepare.py --threads 1
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import plstm_graph  # noqa: E402
from plstm_graph import collate_dags, dag  # noqa: E402
from plstm_graph.datasets import load_tu  # noqa: E402
from plstm_graph.dag.orientation import orient  # noqa: E402
from plstm_graph.transforms import DAGPlan, PrepareDAG  # noqa: E402
from torch_geometric.data import Batch  # noqa: E402
from torch_geometric.loader import DataLoader  # noqa: E402


@contextmanager
def reference_only():
    """Every preparation function on its Python/torch reference path."""
    original = dag._common.native_cpu
    dag._common.native_cpu = lambda *tensors: False
    try:
        yield
    finally:
        dag._common.native_cpu = original


def median_time(fn, repeat: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def prepare_plain(batch):
    """What PLSTMNet does with a plain batch: orient, plan, all four schedules."""
    dag_edges, _, _ = orient(batch.edge_index, batch.num_nodes, "id")
    return DAGPlan.from_graph(dag_edges, batch.num_nodes, orient="none").build()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=50)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# {platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"native={plstm_graph.WITH_NATIVE}, median of {args.repeat}")
    plain = load_tu("MUTAG", root=tempfile.mkdtemp())
    print("\n| batch | preparation, native | preparation, Python reference | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for size in (32, 64, 128):
        batch = next(iter(DataLoader(plain, batch_size=size)))
        fast = median_time(lambda: prepare_plain(batch), args.repeat)
        with reference_only():
            slow = median_time(lambda: prepare_plain(batch), max(5, args.repeat // 5))
        print(f"| {size} molecules ({batch.num_nodes} nodes) | {fast * 1e3:.2f} ms | "
              f"{slow * 1e3:.2f} ms | {slow / fast:.0f}x |")

    prepared = load_tu("MUTAG", root=tempfile.mkdtemp(), pre_transform=PrepareDAG())
    print("\n| batch of prepared graphs | collate_dags | Batch.from_data_list | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for size in (32, 64, 128):
        graphs = [prepared[i % len(prepared)] for i in range(size)]
        fast = median_time(lambda: collate_dags(graphs), args.repeat)
        slow = median_time(lambda: Batch.from_data_list(graphs), args.repeat)
        print(f"| {size} molecules | {fast * 1e3:.2f} ms | {slow * 1e3:.2f} ms | "
              f"{slow / fast:.1f}x |")

    batch = next(iter(DataLoader(prepared, batch_size=32)))
    edge_index, line_index = batch.dag_edge_index, batch.line_index_p
    n, e, arcs = batch.num_nodes, edge_index.size(1), line_index.size(1)
    heads, k, v = 4, 24, 24
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.rand(*shape, generator=gen).requires_grad_() for shape in
              ((n, heads, k), (n, heads, k), (n, heads, v), (e, heads), (arcs, heads),
               (e, heads), (n, heads))]
    schedule = dag.build_schedule(edge_index, line_index, n, node_level=batch.dag_level)

    def call(with_schedule):
        out = plstm_graph.plstm_dag(*inputs, edge_index, line_index,
                                    schedule=schedule if with_schedule else None)
        out.sum().backward()

    with_s = median_time(lambda: call(True), args.repeat * 4)
    without = median_time(lambda: call(False), args.repeat * 4)
    print(f"\nplstm_dag fwd+bwd, 32 molecules (N={n}, E={e}, L={arcs}, H={heads}, K=V={k}): "
          f"prebuilt schedule {with_s * 1e3:.3f} ms, built inside the call "
          f"{without * 1e3:.3f} ms ({without / with_s:.2f}x)")


if __name__ == "__main__":
    main()
