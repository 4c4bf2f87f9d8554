"""DAG preparation: index bookkeeping on integer tensors, in five modules.

* :mod:`~plstm_graph.dag.validation`: ``check_edge_index``, ``check_line_index``,
  ``check_node_level``.
* :mod:`~plstm_graph.dag.orientation`: ``to_dag``, ``bfs_rank``, ``orient`` (what a layer
  does to a plain PyG graph), ``reverse_dag``, ``weakly_connected_components``.
* :mod:`~plstm_graph.dag.levels`: ``topological_levels`` and its backends.
* :mod:`~plstm_graph.dag.line_graphs`: ``line_graph`` and the multitree pruning ``multitree``.
* :mod:`~plstm_graph.dag.schedule`: ``DagSchedule`` / ``build_schedule``, ``NodeSchedule`` /
  ``build_node_schedule``, ``component_positions``.

This package knows nothing about the pLSTM kernels: the op layer (:mod:`plstm_graph.ops`)
consumes a :class:`DagSchedule` or :class:`NodeSchedule` and never builds one except through
:func:`build_schedule` / :func:`build_node_schedule`. Where a compiled index op exists
(``csrc/ops/prepare.cpp``) it runs by default on CPU tensors (``"auto"`` everywhere: native
when the extension is loaded and the tensors are on the CPU, else torch); the Python code is
the reference and the path for other devices.

Conventions: ``edge_index[0]`` is the tail (source) and ``edge_index[1]`` the head (target) of
every edge; ``line_index[0]`` / ``line_index[1]`` are the incoming / outgoing edge of an arc of
the line graph, which meet at the shared node ``edge_index[1, a] == edge_index[0, b]``.
"""
from .levels import LEVEL_METHODS, topological_levels
from .line_graphs import _line_graph_torch, _multitree_checked, line_graph, multitree
from .orientation import bfs_rank, reverse_dag, to_dag, weakly_connected_components
from .schedule import (DagSchedule, NodeSchedule, build_node_schedule, build_schedule,
                       component_positions)
from .validation import check_edge_index, check_line_index, check_node_level

__all__ = [
    "check_edge_index",
    "check_line_index",
    "check_node_level",
    "line_graph",
    "multitree",
    "topological_levels",
    "to_dag",
    "bfs_rank",
    "reverse_dag",
    "weakly_connected_components",
    "component_positions",
    "DagSchedule",
    "build_schedule",
    "NodeSchedule",
    "build_node_schedule",
]
