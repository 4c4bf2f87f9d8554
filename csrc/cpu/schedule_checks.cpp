// all_finite (schema in ops/prepare.cpp): the finiteness check of plstm_dag's gates.
//
// check_dag_schedule (schema in ops/prepare.cpp): the complete structural check of a
// DagSchedule, for a schedule that did not come from build_schedule (which builds consistent
// ones from a checked graph). The kernels check only what keeps their memory accesses in
// bounds (checks.h); this checks everything they rely on for a correct result: that every CSR
// lists each member once under the right owner, that the level order is a permutation in
// which every arc climbs a level, and that the components partition nodes and edges.
#include "index_checks.h"

#include "../checks.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <ATen/Dispatch.h>

#include <type_traits>
#include <vector>

namespace plstm_graph {
namespace cpu {
namespace {

const int64_t* iptr(const at::Tensor& t) { return t.data_ptr<int64_t>(); }

void check_dag_schedule(at::TensorList schedule, int64_t num_nodes) {
  const char* op = "check_dag_schedule";
  TORCH_CHECK_VALUE(schedule.size() == DagField::count, op, ": the schedule must be the ",
                    DagField::count, " index tensors of DagSchedule.tensors(), got ",
                    schedule.size());
  Dims d;
  d.N = num_nodes;
  d.E = schedule[DagField::edge_src].numel();
  d.L = schedule[DagField::arc_src].numel();
  const DagSchedule s = unpack_dag_schedule(op, schedule, d, c10::Device(c10::kCPU));
  const int64_t *es = iptr(s.edge_src), *ed = iptr(s.edge_dst), *as = iptr(s.arc_src),
                *ad = iptr(s.arc_dst), *eo = iptr(s.edge_order), *lp = iptr(s.level_ptr);
  // level of every edge; edge_order must be a permutation
  std::vector<int64_t> level(static_cast<size_t>(d.E), -1);
  for (int64_t l = 0; l < s.levels; ++l) {
    for (int64_t j = lp[l]; j < lp[l + 1]; ++j) {
      TORCH_CHECK_VALUE(level[eo[j]] < 0, "edge_order lists edge ", eo[j], " twice");
      level[eo[j]] = l;
    }
  }
  for (int64_t e = 0; e < d.E; ++e) {
    TORCH_CHECK_VALUE(es[e] != ed[e], "edge ", e, " is a self-loop at node ", es[e]);
  }
  check_csr("in_ptr", "in_arc", iptr(s.in_ptr), iptr(s.in_arc), d.E, d.L,
            [&](int64_t e, int64_t a) {
              TORCH_CHECK_VALUE(ad[a] == e, "in_arc lists arc ", a, " under edge ", e,
                                " but the arc feeds edge ", ad[a]);
              TORCH_CHECK_VALUE(ed[as[a]] == es[e], "arc ", a, " (edge ", as[a], " -> edge ",
                                e, ") joins edges that do not meet");
              TORCH_CHECK_VALUE(level[as[a]] < level[e], "arc ", a, " (edge ", as[a],
                                " -> edge ", e, ") does not climb a level (", level[as[a]],
                                " -> ", level[e], "): the graph is not a DAG or the schedule "
                                "is inconsistent");
            });
  check_csr("out_ptr", "out_arc", iptr(s.out_ptr), iptr(s.out_arc), d.E, d.L,
            [&](int64_t e, int64_t a) {
              TORCH_CHECK_VALUE(as[a] == e, "out_arc lists arc ", a, " under edge ", e,
                                " but the arc leaves edge ", as[a]);
            });
  const auto owned = [](const int64_t* owner, const char* member, const char* what) {
    return [=](int64_t n, int64_t e) {
      TORCH_CHECK_VALUE(owner[e] == n, member, " lists edge ", e, " under node ", n,
                        " but the edge ", what, " node ", owner[e]);
    };
  };
  check_csr("node_ptr", "node_edge", iptr(s.node_ptr), iptr(s.node_edge), d.N, d.E,
            owned(ed, "node_edge", "ends at"));
  check_csr("src_ptr", "src_edge", iptr(s.src_ptr), iptr(s.src_edge), d.N, d.E,
            owned(es, "src_edge", "starts at"));
  // components: a partition of the nodes and of the edges, every edge inside its component
  std::vector<int64_t> node_comp(static_cast<size_t>(d.N), -1);
  check_csr("comp_node_ptr", "comp_node", iptr(s.comp_node_ptr), iptr(s.comp_node), s.C, d.N,
            [&](int64_t c, int64_t n) { node_comp[n] = c; });
  check_csr("comp_edge_ptr", "comp_edge", iptr(s.comp_edge_ptr), iptr(s.comp_edge), s.C, d.E,
            [&](int64_t c, int64_t e) {
              TORCH_CHECK_VALUE(node_comp[es[e]] == c && node_comp[ed[e]] == c, "edge ", e,
                                " is not inside its component ", c);
            });
  // the closed form's layout: positions inside the component lists, nodes in topological
  // order and edges in level order within each component
  const int64_t *np = iptr(s.node_pos), *epos = iptr(s.edge_pos);
  const auto positions = [&](const char* list, const char* pos_name, const int64_t* ptr,
                             const int64_t* member, const int64_t* pos) {
    for (int64_t c = 0; c < s.C; ++c) {
      for (int64_t j = ptr[c]; j < ptr[c + 1]; ++j) {
        TORCH_CHECK_VALUE(pos[member[j]] == j - ptr[c], pos_name, "[", member[j], "] = ",
                          pos[member[j]], " but ", list, " has it at position ", j - ptr[c],
                          " of component ", c);
      }
    }
  };
  positions("comp_node", "node_pos", iptr(s.comp_node_ptr), iptr(s.comp_node), np);
  positions("comp_edge", "edge_pos", iptr(s.comp_edge_ptr), iptr(s.comp_edge), epos);
  for (int64_t e = 0; e < d.E; ++e) {
    TORCH_CHECK_VALUE(np[es[e]] < np[ed[e]], "edge ", e, " (", es[e], " -> ", ed[e],
                      ") goes against its component's node order: comp_node must list each "
                      "component in topological order");
  }
  for (int64_t a = 0; a < d.L; ++a) {
    TORCH_CHECK_VALUE(epos[as[a]] < epos[ad[a]], "arc ", a, " (edge ", as[a], " -> edge ",
                      ad[a], ") does not go forward in comp_edge: it must list each "
                      "component's edges in level order");
  }
}

// x - x is 0 for every finite x and NaN (which compares unequal to everything) for NaN and
// the infinities; the loop has no branch and an integer reduction, so it vectorises
template <typename scalar_t>
bool finite_values(const scalar_t* x, int64_t n) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const acc_t v = static_cast<acc_t>(x[i]);
    bad |= static_cast<int>((v - v) != acc_t(0));
  }
  return bad == 0;
}

bool all_finite(at::TensorList tensors) {
  for (const at::Tensor& t : tensors) {
    TORCH_CHECK_VALUE(t.defined() && t.device().is_cpu(), "all_finite: CPU tensors only");
    TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()),
                     "all_finite: floating tensors only, got ", t.scalar_type());
    const at::Tensor c = t.contiguous();
    bool ok = true;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "all_finite",
                                    [&] { ok = finite_values(c.data_ptr<scalar_t>(), c.numel()); });
    if (!ok) return false;
  }
  return true;
}

}  // namespace
}  // namespace cpu
}  // namespace plstm_graph

TORCH_LIBRARY_IMPL(plstm_graph, CPU, m) {
  m.impl("check_dag_schedule", &plstm_graph::cpu::check_dag_schedule);
  m.impl("all_finite", &plstm_graph::cpu::all_finite);
}
