"""Which algorithm ``plstm_dag`` runs when it is not told: the time models and their limits.

Every constant here was measured, not derived; each says on what. The machine throughout is
the project's 2-core x86-64 VM (shared, one thread per run), so the models rank the algorithms
there and only roughly elsewhere. ``benchmarks/bench_algorithms.py`` reruns the measurements
(``--backend native`` / ``--backend torch``) and prints how often the choice was right.
"""
from __future__ import annotations

from typing import Optional

from ..dag import DagSchedule

__all__ = ["CLOSED_FORM_MAX_NODES", "closed_form_cost", "scan_cost", "torch_closed_form_cost",
           "torch_scan_cost", "choose_algorithm"]

# The closed form keeps an [edges, nodes] and a [nodes, nodes] buffer per component and head, so
# its memory grows with the square of a component; past this many nodes in one component the
# level scan runs (and a forced closed form is refused). 1024 is the largest graph size the fit
# below covered (bench_algorithms.py: 8 to 1024 nodes per graph); at that size the scan is
# already the faster one on dense DAGs.
CLOSED_FORM_MAX_NODES = 1024

# The native CPU time models, in about 0.1 ns per head: fitted (relative least squares) to
# bench_algorithms.py --backend native on the 2-core VM, one thread, over trees and dense DAGs
# of 8 to 1024 nodes per graph and K = V = 8, 24, 48. They pick the faster algorithm in 28 of
# those 30 cases; the two misses were near ties. Rechecked after the closed form began doing
# all heads of a component in one task (about a fifth faster on small components; an Intel
# VM, 2026-12-07, bench_algorithms.py --threads 1): right in 13 of 14 cases, the miss a near
# tie (trees of 512 nodes, 5.6 against 5.1 ms), so the constants stay.
_CF_PATH = 14      # per unit of DagSchedule.path_work (the path-weight scan per component)
_CF_PAIR = 23      # per (node, ancestor) pair and K + V (the attention over ancestors)
_CF_NODE = 180     # per node and K + V (the rows of q, k, v read and the outputs written)
_SCAN_STATE = 17   # per K x V state element of an edge (twice: forward, readout) or an arc
_SCAN_ROW = 250    # per edge and node and K + V (gathers and per-row sums)

# The pure-PyTorch time models, in their own units: set by hand against bench_algorithms.py
# --backend torch on the same VM (trees and dense DAGs of 8 to 256 nodes per graph), where they
# pick the faster algorithm in all 10 cases; the two cross over between 64 and 128 nodes per
# graph.
_TORCH_CF_PADDED = 2          # per element of the padded solve and products (x components)
_TORCH_SCAN_STATE = 30        # per K x V state element, as _SCAN_STATE
_TORCH_SCAN_LEVEL = 500_000   # per level: a dozen small torch ops, tens of microseconds


def closed_form_cost(schedule: DagSchedule, kdim: int, vdim: int,
                     ancestor_pairs: Optional[int] = None) -> int:
    """Estimated time of the native closed form: the path weights of every component, the
    (node, ancestor) pairs (``schedule.ancestor_pairs`` unless given) and the per-node rows."""
    if ancestor_pairs is None:
        ancestor_pairs = schedule.ancestor_pairs
    return (_CF_PATH * schedule.path_work + _CF_PAIR * ancestor_pairs * (kdim + vdim) +
            _CF_NODE * schedule.num_nodes * (kdim + vdim))


def scan_cost(schedule: DagSchedule, kdim: int, vdim: int) -> int:
    """Estimated time of the native level scan: a K x V state per edge and arc, plus per-row
    work."""
    return (_SCAN_STATE * (2 * schedule.num_edges + schedule.num_arcs) * kdim * vdim +
            _SCAN_ROW * (schedule.num_edges + schedule.num_nodes) * (kdim + vdim))


def torch_closed_form_cost(schedule: DagSchedule, kdim: int, vdim: int) -> int:
    """Estimated time of the pure-PyTorch closed form, which pads every component to the
    largest one: a triangular solve and three batched matrix products per component."""
    p, r = schedule.max_component_nodes, schedule.max_component_edges
    return _TORCH_CF_PADDED * schedule.num_components * (r * r * p + r * p * p +
                                                         p * p * (kdim + vdim))


def torch_scan_cost(schedule: DagSchedule, kdim: int, vdim: int) -> int:
    """Estimated time of the pure-PyTorch level scan: the state work and a fixed cost per
    level."""
    return (_TORCH_SCAN_STATE * (2 * schedule.num_edges + schedule.num_arcs) * kdim * vdim +
            _TORCH_SCAN_LEVEL * schedule.num_levels)


def _native_closed_form_is_cheaper(schedule: DagSchedule, kdim: int, vdim: int) -> bool:
    """The native models compared; the ancestor pairs (a pass per level to count) are counted
    only when the bounds 0 and ``component_pairs`` leave the answer open."""
    scan = scan_cost(schedule, kdim, vdim)
    if closed_form_cost(schedule, kdim, vdim, schedule.component_pairs) < scan:
        return True
    if closed_form_cost(schedule, kdim, vdim, 0) >= scan:
        return False
    return closed_form_cost(schedule, kdim, vdim) < scan


def choose_algorithm(backend: str, closed_form_available: bool, schedule: DagSchedule,
                     kdim: int, vdim: int) -> str:
    """``"scan"`` or ``"closed_form"``, whichever the models of ``backend`` predict to be
    faster (``closed_form_available``: the backend has a closed form for this device)."""
    if schedule.max_component_nodes > CLOSED_FORM_MAX_NODES or not closed_form_available:
        return "scan"
    if backend == "native":
        cheaper = _native_closed_form_is_cheaper(schedule, kdim, vdim)
    else:
        cheaper = torch_closed_form_cost(schedule, kdim, vdim) < torch_scan_cost(schedule, kdim,
                                                                                vdim)
    return "closed_form" if cheaper else "scan"
