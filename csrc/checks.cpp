// The argument checks of checks.h.
#include "checks.h"

#include <ATen/ops/aminmax.h>
#include <ATen/ops/stack.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>

#include <utility>
#include <vector>

namespace plstm_graph {

std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(t.size(i));
  }
  return s + "]";
}

namespace {

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// A [N, H, width] tensor whose [H, width] block per node is contiguous, nodes any (positive)
// stride apart, as it is; anything else as a contiguous copy.
at::Tensor rows_contiguous(const at::Tensor& t) {
  const bool rows_ok = t.stride(2) == 1 && (t.size(1) <= 1 || t.stride(1) == t.size(2)) &&
                       t.stride(0) >= t.size(1) * t.size(2) && t.size(0) > 0;
  return rows_ok ? t : t.contiguous();
}

void check_gate(const char* op, const at::Tensor& t, const char* name, int64_t rows,
                const char* rows_name, int64_t H) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == rows && t.size(1) == H, op, ": ", name,
                    " must have shape [", rows_name, "=", rows, ", H=", H, "], got ",
                    shape_str(t));
}

// Extents of a schedule's fields (the `x` of the field lists).
struct Extents {
  int64_t N, E, L, C;
};

// One field: dtype, device, shape, contiguity; its value range is checked by the caller.
at::Tensor index_field(const char* op, const at::Tensor& t, const char* name, Place place,
                       int64_t length, const c10::Device& device) {
  TORCH_CHECK_VALUE(t.defined(), op, ": schedule field ", name, " is an undefined tensor");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, op, ": schedule field ", name,
                   " must have dtype torch.int64, got ", t.scalar_type());
  if (place == Place::kHost) {
    TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": schedule field ", name,
                      " must be a CPU tensor (the host loops over levels), got one on ",
                      t.device());
  } else {
    TORCH_CHECK_VALUE(t.device() == device, op, ": schedule field ", name, " is on ",
                      t.device(), " but query is on ", device);
  }
  const bool length_ok = length == kAnyLength ? t.numel() >= 1 : t.numel() == length;
  TORCH_CHECK_VALUE(t.dim() == 1 && length_ok, op, ": schedule field ", name,
                    " must have shape [",
                    length == kAnyLength ? std::string("levels + 1") : std::to_string(length),
                    "], got ", shape_str(t));
  return t.contiguous();
}

// A host CSR pointer over levels: from 0 to `total`, non-decreasing (the host loop reads it).
int64_t check_level_ptr(const char* op, const at::Tensor& t, const char* name, int64_t total) {
  const int64_t* lp = t.data_ptr<int64_t>();
  const int64_t levels = t.numel() - 1;
  TORCH_CHECK_VALUE(lp[0] == 0, op, ": ", name, " must start at 0, got ", lp[0]);
  for (int64_t l = 0; l < levels; ++l) {
    TORCH_CHECK_VALUE(lp[l] <= lp[l + 1], op, ": ", name, " must be non-decreasing (", lp[l],
                      " > ", lp[l + 1], " at level ", l, ")");
  }
  TORCH_CHECK_VALUE(lp[levels] == total, op, ": ", name, " must end at ", total, ", got ",
                    lp[levels]);
  return levels;
}

// The value range of every listed (device) field: a plain loop on the CPU, ATen reductions
// and one host synchronisation elsewhere.
struct Range {
  const at::Tensor* t;
  const char* name;
  int64_t hi;  // values must lie in [0, hi]
};

void check_ranges(const char* op, const std::vector<Range>& ranges, const c10::Device& device) {
  if (device.is_cpu()) {
    for (const Range& r : ranges) {
      const int64_t* p = r.t->data_ptr<int64_t>();
      const int64_t n = r.t->numel();
      // one unsigned comparison per value (a negative one wraps past any bound), no branch:
      // every call pays for this pass; the range for the message only when it fails
      uint64_t out = r.hi < 0 && n > 0;  // (no value is in range then)
      const uint64_t bound = static_cast<uint64_t>(std::max<int64_t>(r.hi, 0));
      for (int64_t i = 0; i < n; ++i) out |= static_cast<uint64_t>(p[i]) > bound;
      if (out == 0) continue;
      int64_t lo = p[0], hi = p[0];
      for (int64_t i = 1; i < n; ++i) {
        lo = std::min(lo, p[i]);
        hi = std::max(hi, p[i]);
      }
      TORCH_CHECK_VALUE(false, op, ": schedule field ", r.name, " has values in [", lo, ", ",
                        hi, "], out of range [0, ", r.hi, "]");
    }
    return;
  }
  std::vector<at::Tensor> stats;
  std::vector<const Range*> checked;
  for (const Range& r : ranges) {
    if (r.t->numel() == 0) continue;
    auto mm = at::aminmax(*r.t);
    stats.push_back(std::get<0>(mm));
    stats.push_back(std::get<1>(mm));
    checked.push_back(&r);
  }
  if (stats.empty()) return;
  const at::Tensor host = at::stack(stats).cpu();  // the one synchronisation
  const int64_t* mm = host.data_ptr<int64_t>();
  for (size_t i = 0; i < checked.size(); ++i) {
    const int64_t lo = mm[2 * i], hi = mm[2 * i + 1];
    TORCH_CHECK_VALUE(lo >= 0 && hi <= checked[i]->hi, op, ": schedule field ",
                      checked[i]->name, " has values in [", lo, ", ", hi,
                      "], out of range [0, ", checked[i]->hi, "]");
  }
}

#define PLSTM_UNPACK(name, place, length, bound)                                   \
  s.name = index_field(op, list[i++], #name, place, length, device);               \
  if (place == Place::kHost) {                                                     \
    check_level_ptr(op, s.name, #name, bound);                   \
  } else if (check_values) {                                                       \
    ranges.push_back({&s.name, #name, bound});                                     \
  }

void check_count(const char* op, const at::TensorList& list, size_t count, const char* what) {
  TORCH_CHECK_VALUE(list.size() == count, op, ": the schedule must be the ", count,
                    " index tensors of ", what, ".tensors(), got ", list.size());
}

}  // namespace

Floats check_floats(const char* op, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v, const at::Tensor& source, const at::Tensor& transition,
                    const at::Tensor& mark, const at::Tensor& direct, bool node_level_transition,
                    bool keep_node_stride) {
  const std::pair<const at::Tensor*, const char*> floats[] = {
      {&q, "query"}, {&k, "key"},   {&v, "value"},  {&source, "source"},
      {&transition, "transition"}, {&mark, "mark"}, {&direct, "direct"}};
  for (const auto& [t, name] : floats) {
    TORCH_CHECK_VALUE(t->defined(), op, ": ", name, " is an undefined tensor");
    TORCH_CHECK_TYPE(is_supported_float(t->scalar_type()), op, ": ", name,
                     " must be float32, float64, bfloat16 or float16, got ", t->scalar_type());
    TORCH_CHECK_TYPE(t->scalar_type() == q.scalar_type(), op, ": ", name, " has dtype ",
                     t->scalar_type(), " but query has ", q.scalar_type(),
                     "; all float inputs must share one dtype");
    TORCH_CHECK_VALUE(t->device() == q.device(), op, ": ", name, " is on ", t->device(),
                      " but query is on ", q.device());
  }
  TORCH_CHECK_VALUE(q.dim() == 3, op, ": query must have shape [N, H, K], got ", shape_str(q));
  TORCH_CHECK_VALUE(k.sizes() == q.sizes(), op, ": key must have the shape of query ",
                    shape_str(q), ", got ", shape_str(k));
  TORCH_CHECK_VALUE(v.dim() == 3 && v.size(0) == q.size(0) && v.size(1) == q.size(1), op,
                    ": value must have shape [N=", q.size(0), ", H=", q.size(1), ", V], got ",
                    shape_str(v));
  Floats f;
  Dims& d = f.d;
  d.N = q.size(0);
  d.H = q.size(1);
  d.K = q.size(2);
  d.V = v.size(2);
  TORCH_CHECK_VALUE(source.dim() == 2 && source.size(1) == d.H, op,
                    ": source must have shape [E, H=", d.H, "], got ", shape_str(source));
  d.E = source.size(0);
  check_gate(op, mark, "mark", d.E, "E", d.H);
  check_gate(op, direct, "direct", d.N, "N", d.H);
  if (node_level_transition) {
    check_gate(op, transition, "transition (one per node)", d.N, "N", d.H);
  } else {
    TORCH_CHECK_VALUE(transition.dim() == 2 && transition.size(1) == d.H, op,
                      ": transition must have shape [L, H=", d.H, "], got ",
                      shape_str(transition));
    d.L = transition.size(0);
  }
  f.q = keep_node_stride ? rows_contiguous(q) : q.contiguous();
  f.k = keep_node_stride ? rows_contiguous(k) : k.contiguous();
  f.v = keep_node_stride ? rows_contiguous(v) : v.contiguous();
  f.source = source.contiguous();
  f.transition = transition.contiguous();
  f.mark = mark.contiguous();
  f.direct = direct.contiguous();
  return f;
}

at::Tensor check_grad_out(const char* op, const Floats& f, const at::Tensor& grad_out) {
  const at::Tensor& q = f.q;
  TORCH_CHECK_VALUE(grad_out.defined(), op, ": grad_out is an undefined tensor");
  TORCH_CHECK_TYPE(grad_out.scalar_type() == q.scalar_type(), op, ": grad_out has dtype ",
                   grad_out.scalar_type(), " but query has ", q.scalar_type());
  TORCH_CHECK_VALUE(grad_out.device() == q.device(), op, ": grad_out is on ",
                    grad_out.device(), " but query is on ", q.device());
  TORCH_CHECK_VALUE(grad_out.dim() == 3 && grad_out.size(0) == f.d.N &&
                        grad_out.size(1) == f.d.H && grad_out.size(2) == f.d.V,
                    op, ": grad_out must have shape [", f.d.N, ", ", f.d.H, ", ", f.d.V,
                    "], got ", shape_str(grad_out));
  return grad_out.contiguous();
}

at::Tensor check_states(const char* op, const Floats& f, const c10::optional<at::Tensor>& states,
                        int64_t rows, bool required) {
  if (!states.has_value() || !states->defined()) {
    TORCH_CHECK_VALUE(!required, op, ": states are required");
    return at::Tensor();
  }
  const at::Tensor& t = *states;
  const auto acc = acc_dtype(f.q.scalar_type());
  TORCH_CHECK_TYPE(t.scalar_type() == acc, op, ": states must have dtype ", acc, ", got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == f.q.device(), op, ": states is on ", t.device(),
                    " but query is on ", f.q.device());
  const Dims& d = f.d;
  TORCH_CHECK_VALUE(t.dim() == 4 && t.size(0) == rows && t.size(1) == d.H && t.size(2) == d.K &&
                        t.size(3) == d.V,
                    op, ": states must have shape [", rows, ", H=", d.H, ", K=", d.K,
                    ", V=", d.V, "]", required ? "" : " (or be None to recompute them)",
                    ", got ", shape_str(t));
  return t.contiguous();
}

at::Tensor check_carry(const char* op, const Floats& f, const c10::optional<at::Tensor>& carry) {
  if (!carry.has_value() || !carry->defined()) return at::Tensor();
  const at::Tensor& g = *carry;
  TORCH_CHECK_TYPE(g.scalar_type() == f.q.scalar_type(), op, ": carry has dtype ",
                   g.scalar_type(), " but query has ", f.q.scalar_type());
  TORCH_CHECK_VALUE(g.device() == f.q.device(), op, ": carry is on ", g.device(),
                    " but query is on ", f.q.device());
  check_gate(op, g, "carry", f.d.E, "E", f.d.H);
  return g.contiguous();
}

DagSchedule unpack_dag_schedule(const char* op, const at::TensorList& list, const Dims& d,
                                const c10::Device& device, bool check_values) {
  check_count(op, list, DagField::count, "plstm_graph.dag.DagSchedule");
  DagSchedule s;
  // the component count comes from the length of comp_node_ptr
  const int64_t C = list[DagField::comp_node_ptr].numel() - 1;
  TORCH_CHECK_VALUE(C >= 0, op, ": schedule field comp_node_ptr must not be empty");
  const Extents x{d.N, d.E, d.L, C};
  std::vector<Range> ranges;
  size_t i = 0;
  PLSTM_DAG_SCHEDULE_FIELDS(PLSTM_UNPACK)
  s.levels = s.level_ptr.numel() - 1;
  s.C = C;
  TORCH_CHECK_VALUE(s.arc_level_ptr.numel() == s.level_ptr.numel(), op,
                    ": level_ptr and arc_level_ptr must have the same length");
  check_ranges(op, ranges, device);
  return s;
}

NodeSchedule unpack_node_schedule(const char* op, const at::TensorList& list, const Dims& d,
                                  const c10::Device& device, bool check_values) {
  check_count(op, list, NodeField::count, "plstm_graph.dag.NodeSchedule");
  NodeSchedule s;
  const Extents x{d.N, d.E, 0, 0};
  std::vector<Range> ranges;
  size_t i = 0;
  PLSTM_NODE_SCHEDULE_FIELDS(PLSTM_UNPACK)
  s.levels = s.node_level_ptr.numel() - 1;
  TORCH_CHECK_VALUE(s.level_ptr.numel() == s.node_level_ptr.numel(), op,
                    ": level_ptr and node_level_ptr must have the same length");
  check_ranges(op, ranges, device);
  return s;
}

NodeInputs check_node_inputs(const char* op, PLSTM_KERNEL_INPUTS,
                             const c10::optional<at::Tensor>& carry,
                             const at::TensorList& schedule, c10::DeviceType kernel,
                             const char* kernel_name) {
  NodeInputs in{check_floats(op, query, key, value, source, transition, mark, direct,
                             /*node_level_transition=*/true, /*keep_node_stride=*/false),
                {}, {}};
  TORCH_CHECK_VALUE(in.f.q.device().type() == kernel, op, " (", kernel_name,
                    " kernel): query is on ", in.f.q.device());
  const c10::DeviceGuard guard(in.f.q.device());
  in.carry = check_carry(op, in.f, carry);
  in.s = unpack_node_schedule(op, schedule, in.f.d, in.f.q.device());
  return in;
}

}  // namespace plstm_graph
