// Schemas of the DAG preparation ops: integer bookkeeping on the CPU that plstm_graph.dag
// also implements in Python (the reference the tests compare against). They exist because a
// plain PyG batch is prepared on every training step, where a few dozen small torch calls per
// function cost more than the pLSTM kernels themselves.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(plstm_graph, m) {
  // Validates ids (range, and self-loops unless allowed); returns the node count
  // (max id + 1 when num_nodes is -1).
  m.def("check_edge_index(Tensor edge_index, int num_nodes, bool allow_self_loops) -> int");
  // Topological generation of every node (Kahn); ValueError naming a node on a cycle.
  m.def("topological_levels(Tensor edge_index, int num_nodes) -> Tensor");
  // Every arc a -> b with dst(a) == src(b), ordered by a, then by b.
  m.def("line_graph(Tensor edge_index, int num_nodes) -> Tensor");
  // Which arcs of line_index the D-mode multitree keeps (bool [L]).
  m.def("multitree_keep(Tensor edge_index, Tensor line_index, Tensor node_level) -> Tensor");
  // The index tensors of plstm_graph.dag.DagSchedule in field order, and its four sizes
  // (max component nodes, max component edges, component pairs, path work) as a long tensor.
  // Everything the kernels rely on in a DagSchedule (its tensors() and node count): what
  // DagSchedule.check() runs on a schedule that build_schedule did not make.
  m.def("check_dag_schedule(Tensor[] schedule, int num_nodes) -> ()");
  // Whether every value of every (floating) tensor is finite: the gate check of every
  // plstm_dag call, in one pass instead of a reduction and a host sync per gate.
  m.def("all_finite(Tensor[] tensors) -> bool");
  m.def(
      "build_schedule(Tensor edge_index, Tensor line_index, Tensor node_level, int num_nodes, "
      "bool validate) -> (Tensor[] index, Tensor sizes)");
}
