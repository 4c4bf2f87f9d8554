"""``plstm_dag``: the input checks, a lookup of the implementation, and the choice of one.

Every implementation (:data:`IMPLEMENTATIONS`: torch and native, level scan and closed form,
per-arc and node-level transitions) takes the same arguments,
``(query, key, value, source, transition, mark, direct, schedule, *, recompute, carry)``, and
returns the whole output, direct term included, in the dtype of ``query`` (computing half
types in float32). Which one runs when the caller does not say is the policy in
:mod:`.policy` (re-exported here: ``CLOSED_FORM_MAX_NODES`` and the time models).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..dag import DagSchedule, NodeSchedule, build_node_schedule, build_schedule
from . import native
from .closed_form_torch import closed_form_torch, node_closed_form_torch
from .node_scan_torch import node_scan_torch
from .policy import (CLOSED_FORM_MAX_NODES, choose_algorithm, closed_form_cost,  # noqa: F401
                     scan_cost, torch_closed_form_cost, torch_scan_cost)
from .scan_torch import scan_torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BACKENDS = ("torch", "native")
ALGORITHMS = ("scan", "closed_form")

# (transitions, backend, algorithm) -> implementation; "arc": per line-graph arc with a
# DagSchedule, "node": per shared node with a NodeSchedule (there is no native node-level
# closed form)
IMPLEMENTATIONS = {
    ("arc", "torch", "scan"): scan_torch,
    ("arc", "torch", "closed_form"): closed_form_torch,
    ("arc", "native", "scan"): native.scan_native,
    ("arc", "native", "closed_form"): native.closed_form_native,
    ("node", "torch", "scan"): node_scan_torch,
    ("node", "torch", "closed_form"): node_closed_form_torch,
    ("node", "native", "scan"): native.node_scan_native,
}


def _check_inputs(tensors: dict, edge_index: Tensor, line_index: Optional[Tensor]) -> None:
    """``line_index=None``: node-level transitions, ``transition`` is ``[N, H]``."""
    if not _well_formed(tensors, edge_index, line_index):
        _report_malformed(tensors, edge_index, line_index)
    _check_finite_gates(tensors)


def _well_formed(tensors: dict, edge_index: Tensor, line_index: Optional[Tensor]) -> bool:
    """Whether every type, dtype, device and shape is right (a few comparisons, since every
    call pays for them); :func:`_report_malformed` finds what is wrong otherwise."""
    q, k, v, s, t, m, d = tensors.values()
    if not (type(q) is Tensor and type(k) is Tensor and type(v) is Tensor and
            type(s) is Tensor and type(t) is Tensor and type(m) is Tensor and
            type(d) is Tensor and type(edge_index) is Tensor and
            (line_index is None or type(line_index) is Tensor)):
        return False
    dtype, device = q.dtype, q.device
    if dtype not in _FLOAT_DTYPES or any(x.dtype != dtype or x.device != device
                                         for x in (k, v, s, t, m, d)):
        return False
    if edge_index.device != device or (line_index is not None and
                                       (line_index.device != device or line_index.dim() != 2)):
        return False
    if q.dim() != 3 or v.dim() != 3 or k.shape != q.shape or edge_index.dim() != 2:
        return False
    num_nodes, heads = q.shape[:2]
    num_edges = edge_index.size(1)
    rows = num_nodes if line_index is None else line_index.size(1)
    return (v.shape[:2] == q.shape[:2] and s.shape == (num_edges, heads) and
            m.shape == (num_edges, heads) and t.shape == (rows, heads) and
            d.shape == (num_nodes, heads))


def _report_malformed(tensors: dict, edge_index: Tensor, line_index: Optional[Tensor]) -> None:
    """Raise the error that names what :func:`_well_formed` found wrong (or return, where the
    DAG checks report the exact problem of an index tensor)."""
    node_level_t = line_index is None
    index_args = [("edge_index", edge_index)] + ([] if node_level_t else
                                                 [("line_index", line_index)])
    for name, t in list(tensors.items()) + index_args:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    dtypes = {name: t.dtype for name, t in tensors.items()}
    for name, dtype in dtypes.items():
        if dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be a floating tensor (float16, bfloat16, float32 or "
                            f"float64), got {dtype}")
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{n}={d}" for n, d in dtypes.items())
        raise TypeError(f"query, key, value and the gates must share one dtype, got {listing}")
    devices = {name: t.device for name, t in tensors.items()}
    devices.update(edge_index=edge_index.device)
    if not node_level_t:
        devices.update(line_index=line_index.device)
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n}={d}" for n, d in devices.items())
        raise ValueError(f"all inputs must be on one device, got {listing}")

    q, k, v = tensors["query"], tensors["key"], tensors["value"]
    for name in ("query", "key", "value"):
        if tensors[name].dim() != 3:
            raise ValueError(f"{name} must have shape [N, H, width], got "
                             f"{list(tensors[name].shape)}")
    if q.shape != k.shape:
        raise ValueError(f"query and key must have the same shape [N, H, K], got "
                         f"{list(q.shape)} and {list(k.shape)}")
    if v.shape[:2] != q.shape[:2]:
        raise ValueError(f"value must have shape [N={q.size(0)}, H={q.size(1)}, V], got "
                         f"{list(v.shape)}")
    num_nodes, heads = q.shape[:2]
    if edge_index.dim() != 2 or (not node_level_t and line_index.dim() != 2):
        return  # the DAG checks report the exact shape problem
    expected = {"source": edge_index.size(1), "mark": edge_index.size(1),
                "transition": num_nodes if node_level_t else line_index.size(1),
                "direct": num_nodes}
    what = {"source": "E (edges)", "mark": "E (edges)", "transition": "L (line-graph arcs)",
            "direct": "N (nodes)"}
    if node_level_t:
        what["transition"] = "N (nodes)"
    for name, rows in expected.items():
        shape = list(tensors[name].shape)
        if shape != [rows, heads]:
            hint = ""
            if (name == "transition" and not node_level_t and shape == [num_nodes, heads]):
                hint = "; for node-level transitions [N, H] pass line_index=None"
            elif name == "transition" and node_level_t:
                hint = ("; line_index=None means one transition per shared node, for "
                        "per-arc transitions [L, H] pass line_index")
            raise ValueError(f"{name} must have shape [{what[name]}={rows}, H={heads}], got "
                             f"{shape}{hint}")


_GATES = ("source", "transition", "mark", "direct")


def _check_finite_gates(tensors: dict) -> None:
    gates = [tensors[name] for name in _GATES]
    if (native.WITH_NATIVE and gates[0].device.type == "cpu" and
            not torch.compiler.is_compiling()):  # one pass, no torch call per gate
        if torch.ops.plstm_graph.all_finite(gates):
            return
    else:
        # one reduction per gate and one host sync for the common case: a NaN or inf in any
        # gate makes the total non-finite (so does an overflow of the sum, and then the
        # exact check below finds nothing to report and passes); half types sum in float32,
        # where gate values of order one cannot overflow
        acc = torch.float32 if gates[0].element_size() < 4 else None
        total = sum(gate.detach().sum(dtype=acc) for gate in gates)
        if bool(total.isfinite()):
            return
    for name in _GATES:
        if tensors[name].numel() and not bool(torch.isfinite(tensors[name]).all()):
            raise ValueError(f"{name} contains NaN or infinite gate values")


def resolve_backend(backend: Optional[str], device: torch.device) -> str:
    if backend is None:
        return "native" if native.available(device) else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS} or None")
    if backend == "native" and not native.available(device):
        raise RuntimeError(f"backend='native' was requested but {native.unavailable_reason(device)}")
    return backend


def resolve_algorithm(algorithm: Optional[str], backend: str, device: torch.device,
                      schedule: DagSchedule, kdim: int, vdim: int) -> str:
    """The algorithm asked for, checked against what ``backend`` can run, or, for ``None``,
    the one :func:`.policy.choose_algorithm` predicts to be faster."""
    closed_form_ok = backend != "native" or native.closed_form_available(device)
    if algorithm is None:
        return choose_algorithm(backend, closed_form_ok, schedule, kdim, vdim)
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {ALGORITHMS} or None")
    if algorithm == "closed_form":
        if not closed_form_ok:
            raise RuntimeError(f"the native closed form has CPU kernels only (device={device}); "
                               f"use backend='torch' or algorithm='scan'")
        if schedule.max_component_nodes > CLOSED_FORM_MAX_NODES:
            raise ValueError(f"algorithm='closed_form' needs O(n^2) memory per component; the "
                             f"largest component has {schedule.max_component_nodes} nodes "
                             f"(limit {CLOSED_FORM_MAX_NODES}); use algorithm='scan'")
    return algorithm


def plstm_dag(query: Tensor, key: Tensor, value: Tensor, source: Tensor, transition: Tensor,
              mark: Tensor, direct: Tensor, edge_index: Tensor, line_index: Optional[Tensor], *,
              node_level: Optional[Tensor] = None, schedule: Optional[DagSchedule] = None,
              backend: Optional[str] = None, algorithm: Optional[str] = None,
              recompute: bool = False, validate: Optional[bool] = None,
              carry: Optional[Tensor] = None) -> Tensor:
    r"""pLSTM on a directed acyclic graph (a whole PyG batch at once).

    Per head, with one :math:`K \times V` state per edge,

    .. math::
        C_b = S_b\, k_{src(b)} v_{src(b)}^\top + \sum_{a \to b} T_{a \to b}\, C_a, \qquad
        y_n = \sum_{e:\, dst(e) = n} M_e\, C_e^\top q_n + D_n\, (q_n \cdot k_n)\, v_n .

    Two algorithms compute it. The level scan runs level by level (levels of the tail nodes),
    every edge of a level at once, over the whole batch. The closed form evaluates, per weakly
    connected component, the masked linear attention
    :math:`y_n = \sum_m \mathrm{Gate}_{nm} (q_n \cdot k_m) v_m + D_n (q_n \cdot k_n) v_n`
    (natively: over the pairs of a node and its ancestors; in torch: as batched dense algebra
    over components padded to the largest); on batches of small graphs (molecules) it does a
    fraction of the scan's work and keeps nothing but the inputs for backward.

    Args:
        query, key: ``[N, H, K]``.
        value: ``[N, H, V]``.
        source, mark: ``[E, H]`` gates per edge.
        transition: ``[L, H]`` gate per line-graph arc, or ``[N, H]`` per shared node with
            ``line_index=None`` (node-level transitions, below).
        direct: ``[N, H]`` gate per node.
        edge_index: ``[2, E]`` long, a DAG (ids need not be a topological order).
        line_index: ``[2, L]`` long arcs of the line graph (:func:`~plstm_graph.line_graph` or
            its :func:`~plstm_graph.multitree` pruning), or ``None`` for node-level
            transitions.
        node_level: optional ``[N]`` topological levels (from the transform); computed when
            absent (natively on the CPU, by the torch reference elsewhere:
            :func:`~plstm_graph.topological_levels` with ``method="auto"``).
        schedule: optional prebuilt :class:`~plstm_graph.dag.DagSchedule`; skips all index
            work and index checks.
        backend: ``"torch"``, ``"native"`` or ``None`` (native when it was built for the
            inputs' device, torch otherwise).
        algorithm: ``"scan"``, ``"closed_form"`` (components of at most
            :data:`CLOSED_FORM_MAX_NODES` nodes; natively on the CPU only) or ``None``: the
            closed form where the time models (:func:`closed_form_cost` against
            :func:`scan_cost` natively, :func:`torch_closed_form_cost` against
            :func:`torch_scan_cost` in torch) say it is faster, the scan otherwise. Both give
            the same values up to rounding.
        recompute: per-arc scan only: keep only the inputs for backward and recompute the
            states then (saves ``E*H*K*V`` elements of memory for one more forward scan). The
            closed form always keeps only the inputs.
        validate: check indices, shapes and gate values (a few reductions and host syncs).
            Default: on in eager mode, off while ``torch.compile`` traces (the checks are
            data-dependent; trace a model after running it once eagerly on the same graphs).
        carry: node-level transitions only: an optional ``[E, H]`` factor ``g_b`` of the
            state carried into each edge, ``C_b = S_b k_u v_u^T + g_b T_u H_u`` (differentiable;
            what an edge mask does to the transitions into its edge, which per-arc transitions
            take as ``transition * g[line_index[1]]`` instead).

    Node-level transitions (docs/contract.md, "Node-level transitions"): with ``line_index=None`` and ``transition[N, H]``
    every arc ``a -> b`` carries ``T_n`` of the node ``n = dst a = src b``, which is exactly
    the full line graph with ``transition[n]`` gathered per arc, computed with the node state
    ``H_n = sum_{e into n} C_e`` as

    .. math::
        H_w = \sum_{b = (u \to w)} (S_b k_u v_u^\top + T_u H_u), \quad
        y_w = \sum_{b = (u \to w)} M_b (S_b (q_w \cdot k_u) v_u + T_u H_u^\top q_w)
              + D_w (q_w \cdot k_w) v_w

    in ``O(E K V)`` work and ``O(N K V)`` state: no line graph is built or read. Levels are
    node levels (``node_level`` / ``schedule`` as a :class:`~plstm_graph.dag.NodeSchedule`
    from :func:`~plstm_graph.dag.build_node_schedule`). Backends: ``"native"`` runs the
    native kernels (``torch.ops.plstm_graph.node_scan_forward``: multi-threaded on the CPU,
    and on CUDA in a CUDA build), ``"torch"`` the pure-PyTorch node scan, which is what
    ``backend=None`` takes where no native kernel runs. ``algorithm``: ``None`` or
    ``"scan"`` is the node scan; ``"closed_form"`` is a pure-PyTorch closed form over
    node-to-node path sums (``backend="torch"`` only; padded components, for small graphs
    and as a check).
    ``recompute`` has no effect there: the kept state is ``N*H*K*V``.

    float16/bfloat16 inputs are computed with float32 states and returned in their own dtype;
    float64 stays float64.

    Returns:
        ``[N, H, V]`` in the dtype of ``query``.
    """
    tensors = dict(query=query, key=key, value=value, source=source, transition=transition,
                   mark=mark, direct=direct)
    if validate is None:
        validate = not torch.compiler.is_compiling()
    if validate:
        _check_inputs(tensors, edge_index, line_index)
    if line_index is None:
        if validate and carry is not None:
            _check_carry(carry, query, edge_index)
        return _plstm_dag_node_level(tensors, edge_index, node_level, schedule, backend,
                                     algorithm, validate, carry)
    if carry is not None:
        raise ValueError("carry is for node-level transitions (line_index=None); with per-arc "
                         "transitions scale them instead: transition * carry[line_index[1]]")
    if isinstance(schedule, NodeSchedule):
        raise ValueError("schedule is a NodeSchedule (node-level transitions), which needs "
                         "line_index=None; pass a DagSchedule with a line_index")
    if schedule is None:
        schedule = build_schedule(edge_index, line_index, num_nodes=query.size(0),
                                  node_level=node_level, validate=validate)
    elif validate and (schedule.num_nodes != query.size(0) or
                       schedule.num_edges != edge_index.size(1) or
                       schedule.num_arcs != line_index.size(1)):
        raise ValueError("schedule was built for a different graph than edge_index / "
                         "line_index / query")
    chosen = resolve_backend(backend, query.device)
    method = resolve_algorithm(algorithm, chosen, query.device, schedule, query.size(-1),
                               value.size(-1))

    return IMPLEMENTATIONS["arc", chosen, method](*tensors.values(), schedule,
                                                  recompute=recompute)


def resolve_node_backend(backend: Optional[str], device: torch.device) -> str:
    """The backend of the node-level op: ``None`` takes the native kernels where they run
    (the CPU, and CUDA in a CUDA build) and the pure-PyTorch scan elsewhere."""
    if backend is None:
        return "native" if native.node_scan_available(device) else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS} or None")
    if backend == "native" and not native.node_scan_available(device):
        raise RuntimeError(f"backend='native' was requested but "
                           f"{native.unavailable_reason(device)}; use backend='torch' or "
                           f"backend=None")
    return backend


def _check_carry(carry: Tensor, query: Tensor, edge_index: Tensor) -> None:
    if not isinstance(carry, Tensor):
        raise TypeError(f"carry must be a torch.Tensor, got {type(carry).__name__}")
    if carry.dtype != query.dtype:
        raise TypeError(f"carry has dtype {carry.dtype} but query has {query.dtype}")
    if carry.device != query.device:
        raise ValueError(f"carry is on {carry.device} but query is on {query.device}")
    shape = [edge_index.size(1) if edge_index.dim() == 2 else -1, query.size(1)]
    if list(carry.shape) != shape:
        raise ValueError(f"carry must have shape [E={shape[0]}, H={shape[1]}], got "
                         f"{list(carry.shape)}")
    if carry.numel() and not bool(torch.isfinite(carry).all()):
        raise ValueError("carry contains NaN or infinite values")


def _plstm_dag_node_level(tensors: dict, edge_index: Tensor, node_level: Optional[Tensor],
                          schedule, backend: Optional[str], algorithm: Optional[str],
                          validate: bool, carry: Optional[Tensor] = None) -> Tensor:
    """``plstm_dag`` with ``transition[N, H]`` and ``line_index=None`` (docs/contract.md, "Node-level transitions")."""
    query = tensors["query"]
    if schedule is None:
        schedule = build_node_schedule(edge_index, num_nodes=query.size(0),
                                       node_level=node_level, validate=validate)
    elif not isinstance(schedule, NodeSchedule):
        raise ValueError("with line_index=None (node-level transitions) schedule must be a "
                         "NodeSchedule (plstm_graph.dag.build_node_schedule), got "
                         f"{type(schedule).__name__}")
    elif validate and (schedule.num_nodes != query.size(0) or
                       schedule.num_edges != edge_index.size(1)):
        raise ValueError("schedule was built for a different graph than edge_index / query")
    if algorithm == "closed_form" and backend is None:
        backend = "torch"  # (the node-level closed form exists in pure PyTorch only)
    chosen = resolve_node_backend(backend, query.device)
    if algorithm not in (None,) + ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {ALGORITHMS} or None")
    if algorithm == "closed_form" and chosen == "native":
        raise RuntimeError("there is no native closed form for node-level transitions "
                           "(line_index=None); use backend='torch' or algorithm='scan'")
    return IMPLEMENTATIONS["node", chosen, algorithm or "scan"](*tensors.values(), schedule,
                                                                carry=carry)
