// Schemas of the plstm_graph ops, the argument checks shared by all backends, and the Python
// module stub that lets `import plstm_graph._C` load the library (which registers the ops).
#include <Python.h>

#include "plstm_dag.h"

#include <ATen/ops/aminmax.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/stack.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#ifdef WITH_CUDA
namespace plstm_graph {
int64_t cuda_runtime_version();  // defined in cuda/scan_kernel.cu
}
#endif

namespace plstm_graph {
namespace {

int64_t cuda_version() {
#ifdef WITH_CUDA
  return cuda_runtime_version();
#else
  return -1;
#endif
}

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(t.size(i));
  }
  return s + "]";
}

void check_defined(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", name, " is an undefined tensor");
}

// An index tensor: defined, int64, 1-D with `numel` elements, on `device`.
at::Tensor index_arg(const char* op, const at::Tensor& t, const char* name, int64_t numel,
                     const c10::Device& device) {
  check_defined(op, t, name);
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, op, ": ", name,
                   " must have dtype torch.int64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.numel() == numel, op, ": ", name,
                    " must have shape [", numel, "], got ", shape_str(t));
  TORCH_CHECK_VALUE(t.device() == device, op, ": ", name, " is on ", t.device(),
                    " but query is on ", device);
  return t.contiguous();
}

// Dtypes and devices of all float arguments (query first), and the shapes of q, k and v.
void check_qkv_and_gates(const char* op,
                         std::initializer_list<std::pair<const at::Tensor*, const char*>> floats) {
  const at::Tensor& q = *floats.begin()->first;
  for (const auto& [t, name] : floats) {
    check_defined(op, *t, name);
    TORCH_CHECK_TYPE(is_supported_float(t->scalar_type()), op, ": ", name,
                     " must be float32, float64, bfloat16 or float16, got ",
                     t->scalar_type());
    TORCH_CHECK_TYPE(t->scalar_type() == q.scalar_type(), op, ": ", name, " has dtype ",
                     t->scalar_type(), " but query has ", q.scalar_type(),
                     "; all float inputs must share one dtype");
    TORCH_CHECK_VALUE(t->device() == q.device(), op, ": ", name, " is on ", t->device(),
                      " but query is on ", q.device());
  }
  const at::Tensor& k = *(floats.begin() + 1)->first;
  const at::Tensor& v = *(floats.begin() + 2)->first;
  TORCH_CHECK_VALUE(q.dim() == 3, op, ": query must have shape [N, H, K], got ",
                    shape_str(q));
  TORCH_CHECK_VALUE(k.sizes() == q.sizes(), op, ": key must have the shape of query ",
                    shape_str(q), ", got ", shape_str(k));
  TORCH_CHECK_VALUE(v.dim() == 3 && v.size(0) == q.size(0) && v.size(1) == q.size(1), op,
                    ": value must have shape [N=", q.size(0), ", H=", q.size(1), ", V], got ",
                    shape_str(v));
}

// A [N, H, width] tensor whose [H, width] block per node is contiguous, nodes any (positive)
// stride apart, as it is; anything else as a contiguous copy. PLSTMConv hands over q, k and v
// as column slices of one fused projection: this saves copying them on every call.
at::Tensor rows_contiguous(const at::Tensor& t) {
  const bool rows_ok = t.stride(2) == 1 && (t.size(1) <= 1 || t.stride(1) == t.size(2)) &&
                       t.stride(0) >= t.size(1) * t.size(2) && t.size(0) > 0;
  return rows_ok ? t : t.contiguous();
}

// source and mark [E, H], transition [L, H]: sets d.E and d.L.
void check_gate_shapes(const char* op, const at::Tensor& source, const at::Tensor& transition,
                       const at::Tensor& mark, Dims& d) {
  TORCH_CHECK_VALUE(source.dim() == 2 && source.size(1) == d.H, op,
                    ": source must have shape [E, H=", d.H, "], got ", shape_str(source));
  d.E = source.size(0);
  TORCH_CHECK_VALUE(mark.dim() == 2 && mark.size(0) == d.E && mark.size(1) == d.H, op,
                    ": mark must have shape [E=", d.E, ", H=", d.H, "], got ",
                    shape_str(mark));
  TORCH_CHECK_VALUE(transition.dim() == 2 && transition.size(1) == d.H, op,
                    ": transition must have shape [L, H=", d.H, "], got ",
                    shape_str(transition));
  d.L = transition.size(0);
}

}  // namespace

Inputs check_inputs(const char* op, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v, const at::Tensor& source,
                    const at::Tensor& transition, const at::Tensor& mark,
                    const at::Tensor& edge_src, const at::Tensor& edge_dst,
                    const at::Tensor& arc_src, const at::Tensor& arc_dst,
                    const at::Tensor& edge_order, const at::Tensor& level_ptr,
                    const at::Tensor& in_ptr, const at::Tensor& in_arc,
                    const at::Tensor& out_ptr, const at::Tensor& out_arc,
                    const at::Tensor& node_ptr, const at::Tensor& node_edge) {
  check_qkv_and_gates(op, {{&q, "query"}, {&k, "key"}, {&v, "value"}, {&source, "source"},
                           {&transition, "transition"}, {&mark, "mark"}});
  Inputs in;
  Dims& d = in.d;
  d.N = q.size(0);
  d.H = q.size(1);
  d.K = q.size(2);
  d.V = v.size(2);
  check_gate_shapes(op, source, transition, mark, d);

  const c10::Device dev = q.device();
  Schedule& s = in.s;
  s.edge_src = index_arg(op, edge_src, "edge_src", d.E, dev);
  s.edge_dst = index_arg(op, edge_dst, "edge_dst", d.E, dev);
  s.arc_src = index_arg(op, arc_src, "arc_src", d.L, dev);
  s.arc_dst = index_arg(op, arc_dst, "arc_dst", d.L, dev);
  s.edge_order = index_arg(op, edge_order, "edge_order", d.E, dev);
  s.in_ptr = index_arg(op, in_ptr, "in_ptr", d.E + 1, dev);
  s.in_arc = index_arg(op, in_arc, "in_arc", d.L, dev);
  s.out_ptr = index_arg(op, out_ptr, "out_ptr", d.E + 1, dev);
  s.out_arc = index_arg(op, out_arc, "out_arc", d.L, dev);
  s.node_ptr = index_arg(op, node_ptr, "node_ptr", d.N + 1, dev);
  s.node_edge = index_arg(op, node_edge, "node_edge", d.E, dev);

  // level_ptr lives on the host, which loops over the levels; it is checked completely here.
  check_defined(op, level_ptr, "level_ptr");
  TORCH_CHECK_TYPE(level_ptr.scalar_type() == at::kLong, op,
                   ": level_ptr must have dtype torch.int64, got ", level_ptr.scalar_type());
  TORCH_CHECK_VALUE(level_ptr.device().is_cpu(), op,
                    ": level_ptr must be a CPU tensor (the host loops over levels), got one on ",
                    level_ptr.device());
  TORCH_CHECK_VALUE(level_ptr.dim() == 1 && (level_ptr.numel() >= 1 || d.E == 0), op,
                    ": level_ptr must have shape [num_levels + 1], got ", shape_str(level_ptr));
  s.level_ptr = level_ptr.contiguous();
  d.levels = s.level_ptr.numel() > 0 ? s.level_ptr.numel() - 1 : 0;
  const int64_t* lp = s.level_ptr.data_ptr<int64_t>();
  if (s.level_ptr.numel() > 0) {
    TORCH_CHECK_VALUE(lp[0] == 0, op, ": level_ptr must start at 0, got ", lp[0]);
    for (int64_t l = 0; l < d.levels; ++l) {
      TORCH_CHECK_VALUE(lp[l] <= lp[l + 1], op, ": level_ptr must be non-decreasing (",
                        lp[l], " > ", lp[l + 1], " at level ", l, ")");
    }
    TORCH_CHECK_VALUE(lp[d.levels] == d.E, op, ": level_ptr must end at E=", d.E, ", got ",
                      lp[d.levels]);
  }

  in.q = q.contiguous();
  in.k = k.contiguous();
  in.v = v.contiguous();
  in.source = source.contiguous();
  in.transition = transition.contiguous();
  in.mark = mark.contiguous();
  return in;
}

at::Tensor check_grad_out(const at::Tensor& q, int64_t V, const at::Tensor& grad_out) {
  TORCH_CHECK_VALUE(grad_out.defined(), "plstm_graph: grad_out is an undefined tensor");
  TORCH_CHECK_TYPE(grad_out.scalar_type() == q.scalar_type(), "plstm_graph: grad_out has dtype ",
                   grad_out.scalar_type(), " but query has ", q.scalar_type());
  TORCH_CHECK_VALUE(grad_out.device() == q.device(), "plstm_graph: grad_out is on ",
                    grad_out.device(), " but query is on ", q.device());
  TORCH_CHECK_VALUE(grad_out.dim() == 3 && grad_out.size(0) == q.size(0) &&
                        grad_out.size(1) == q.size(1) && grad_out.size(2) == V,
                    "plstm_graph: grad_out must have shape [", q.size(0), ", ", q.size(1), ", ",
                    V, "], got ", shape_str(grad_out));
  return grad_out.contiguous();
}

ClosedFormInputs check_closed_form_inputs(
    const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& source, const at::Tensor& transition, const at::Tensor& mark,
    const at::Tensor& direct, const at::Tensor& edge_src, const at::Tensor& edge_dst,
    const at::Tensor& arc_src, const at::Tensor& arc_dst, const at::Tensor& in_ptr,
    const at::Tensor& in_arc, const at::Tensor& comp_node_ptr, const at::Tensor& comp_node,
    const at::Tensor& comp_edge_ptr, const at::Tensor& comp_edge) {
  check_qkv_and_gates(op, {{&q, "query"}, {&k, "key"}, {&v, "value"}, {&source, "source"},
                           {&transition, "transition"}, {&mark, "mark"}, {&direct, "direct"}});
  ClosedFormInputs in;
  Dims& d = in.d;
  d.N = q.size(0);
  d.H = q.size(1);
  d.K = q.size(2);
  d.V = v.size(2);
  check_gate_shapes(op, source, transition, mark, d);
  TORCH_CHECK_VALUE(direct.dim() == 2 && direct.size(0) == d.N && direct.size(1) == d.H, op,
                    ": direct must have shape [N=", d.N, ", H=", d.H, "], got ",
                    shape_str(direct));
  check_defined(op, comp_node_ptr, "comp_node_ptr");
  TORCH_CHECK_VALUE(comp_node_ptr.dim() == 1 && comp_node_ptr.numel() >= 1, op,
                    ": comp_node_ptr must have shape [C + 1], got ", shape_str(comp_node_ptr));
  in.C = comp_node_ptr.numel() - 1;
  const c10::Device dev = q.device();
  in.edge_src = index_arg(op, edge_src, "edge_src", d.E, dev);
  in.edge_dst = index_arg(op, edge_dst, "edge_dst", d.E, dev);
  in.arc_src = index_arg(op, arc_src, "arc_src", d.L, dev);
  in.arc_dst = index_arg(op, arc_dst, "arc_dst", d.L, dev);
  in.in_ptr = index_arg(op, in_ptr, "in_ptr", d.E + 1, dev);
  in.in_arc = index_arg(op, in_arc, "in_arc", d.L, dev);
  in.comp_node_ptr = index_arg(op, comp_node_ptr, "comp_node_ptr", in.C + 1, dev);
  in.comp_node = index_arg(op, comp_node, "comp_node", d.N, dev);
  in.comp_edge_ptr = index_arg(op, comp_edge_ptr, "comp_edge_ptr", in.C + 1, dev);
  in.comp_edge = index_arg(op, comp_edge, "comp_edge", d.E, dev);
  in.q = rows_contiguous(q);
  in.k = rows_contiguous(k);
  in.v = rows_contiguous(v);
  in.source = source.contiguous();
  in.transition = transition.contiguous();
  in.mark = mark.contiguous();
  in.direct = direct.contiguous();
  return in;
}

at::Tensor check_states(const Inputs& in, const c10::optional<at::Tensor>& states) {
  if (!states.has_value() || !states->defined()) return at::Tensor();
  const at::Tensor& t = *states;
  const auto acc = acc_dtype(in.q.scalar_type());
  TORCH_CHECK_TYPE(t.scalar_type() == acc, "scan_backward: states must have dtype ", acc,
                   ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == in.q.device(), "scan_backward: states is on ", t.device(),
                    " but query is on ", in.q.device());
  const Dims& d = in.d;
  TORCH_CHECK_VALUE(t.dim() == 4 && t.size(0) == d.E && t.size(1) == d.H && t.size(2) == d.K &&
                        t.size(3) == d.V,
                    "scan_backward: states must have shape [E=", d.E, ", H=", d.H, ", K=", d.K,
                    ", V=", d.V, "] (or be None to recompute them), got ", shape_str(t));
  return t.contiguous();
}

void check_index_ranges(const Inputs& in, bool with_out_csr) {
  const Dims& d = in.d;
  const Schedule& s = in.s;
  struct Item {
    const at::Tensor* t;
    const char* name;
    int64_t hi;  // values must lie in [0, hi]
  };
  std::vector<Item> items = {
      {&s.edge_src, "edge_src", d.N - 1}, {&s.edge_dst, "edge_dst", d.N - 1},
      {&s.arc_src, "arc_src", d.E - 1},   {&s.arc_dst, "arc_dst", d.E - 1},
      {&s.edge_order, "edge_order", d.E - 1}, {&s.in_ptr, "in_ptr", d.L},
      {&s.in_arc, "in_arc", d.L - 1},     {&s.node_ptr, "node_ptr", d.E},
      {&s.node_edge, "node_edge", d.E - 1}};
  if (with_out_csr) {
    items.push_back({&s.out_ptr, "out_ptr", d.L});
    items.push_back({&s.out_arc, "out_arc", d.L - 1});
  }
  std::vector<at::Tensor> stats;
  std::vector<const Item*> checked;
  for (const Item& it : items) {
    if (it.t->numel() == 0) continue;
    auto mm = at::aminmax(*it.t);
    stats.push_back(std::get<0>(mm));
    stats.push_back(std::get<1>(mm));
    checked.push_back(&it);
  }
  if (stats.empty()) return;
  const at::Tensor host = at::stack(stats).cpu();  // the one synchronisation
  const int64_t* mm = host.data_ptr<int64_t>();
  for (size_t i = 0; i < checked.size(); ++i) {
    const int64_t lo = mm[2 * i], hi = mm[2 * i + 1];
    TORCH_CHECK_VALUE(lo >= 0 && hi <= checked[i]->hi, "plstm_graph: ", checked[i]->name,
                      " has values in [", lo, ", ", hi, "], out of range [0, ", checked[i]->hi,
                      "]");
  }
}

void edges_by_source(const Inputs& in, at::Tensor& src_ptr, at::Tensor& src_edge) {
  auto sorted = at::sort(in.s.edge_src, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  src_edge = std::get<1>(sorted).contiguous();
  auto bounds = at::arange(in.d.N + 1, in.s.edge_src.options());
  src_ptr = at::searchsorted(std::get<0>(sorted), bounds).contiguous();
}


// ---------------------------------------------------------------------------------------------
// autograd of both forward ops, wired once here for every backend (the Python side only adds
// the fake kernels). In C++ rather than through torch.library.register_autograd: on a batch of
// molecules the whole op takes a few hundred microseconds, and a Python autograd wrapper
// costs a sizeable part of that on every forward and backward.
// ---------------------------------------------------------------------------------------------
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class ClosedForm : public torch::autograd::Function<ClosedForm> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const at::Tensor& source,
                            const at::Tensor& transition, const at::Tensor& mark,
                            const at::Tensor& direct, const at::Tensor& edge_src,
                            const at::Tensor& edge_dst, const at::Tensor& arc_src,
                            const at::Tensor& arc_dst, const at::Tensor& in_ptr,
                            const at::Tensor& in_arc, const at::Tensor& comp_node_ptr,
                            const at::Tensor& comp_node, const at::Tensor& comp_edge_ptr,
                            const at::Tensor& comp_edge) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("plstm_graph::closed_form_forward", "")
                         .typed<at::Tensor(
                             const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&)>();
    at::Tensor out = op.call(q, k, v, source, transition, mark, direct, edge_src, edge_dst,
                             arc_src, arc_dst, in_ptr, in_arc, comp_node_ptr, comp_node,
                             comp_edge_ptr, comp_edge);
    // nothing but the inputs: the backward recomputes the path weights
    ctx->save_for_backward({q, k, v, source, transition, mark, direct, edge_src, edge_dst,
                            arc_src, arc_dst, in_ptr, in_arc, comp_node_ptr, comp_node,
                            comp_edge_ptr, comp_edge});
    ctx->set_materialize_grads(false);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list s = ctx->get_saved_variables();
    at::Tensor dy = grad_outputs[0];
    variable_list grads(17);
    if (!dy.defined()) return grads;
    static auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("plstm_graph::closed_form_backward", "")
            .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                              at::Tensor, at::Tensor>(
                const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                const at::Tensor&, const at::Tensor&)>();
    auto r = op.call(dy.contiguous(), s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8],
                     s[9], s[10], s[11], s[12], s[13], s[14], s[15], s[16]);
    grads[0] = std::get<0>(r);
    grads[1] = std::get<1>(r);
    grads[2] = std::get<2>(r);
    grads[3] = std::get<3>(r);
    grads[4] = std::get<4>(r);
    grads[5] = std::get<5>(r);
    grads[6] = std::get<6>(r);
    return grads;
  }
};

using ScanForwardSig = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, bool);

// The level scan: `states` is a cache for backward (empty unless keep_states) and carries no
// gradient.
class Scan : public torch::autograd::Function<Scan> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, const at::Tensor& source,
                               const at::Tensor& transition, const at::Tensor& mark,
                               const variable_list& schedule, bool keep_states) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("plstm_graph::scan_forward", "")
                         .typed<ScanForwardSig>();
    auto [out, states] = op.call(q, k, v, source, transition, mark, schedule[0], schedule[1],
                                 schedule[2], schedule[3], schedule[4], schedule[5],
                                 schedule[6], schedule[7], schedule[8], schedule[9],
                                 schedule[10], schedule[11], keep_states);
    variable_list saved = {q, k, v, source, transition, mark, states};
    saved.insert(saved.end(), schedule.begin(), schedule.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["keep_states"] = keep_states;
    ctx->mark_non_differentiable({states});
    // no [E, H, K, V] zero tensor for the gradient of `states` on every backward
    ctx->set_materialize_grads(false);
    return {out, states};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list s = ctx->get_saved_variables();
    variable_list grads(8);  // q, k, v, source, transition, mark, schedule, keep_states
    const at::Tensor& dy = grad_outputs[0];
    if (!dy.defined()) return grads;
    c10::optional<at::Tensor> states;
    if (ctx->saved_data["keep_states"].toBool()) states = s[6];
    static auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("plstm_graph::scan_backward", "")
            .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                              at::Tensor>(
                const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                const at::Tensor&, const at::Tensor&, const at::Tensor&,
                const c10::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
                const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                const at::Tensor&, const at::Tensor&)>();
    auto r = op.call(dy.contiguous(), s[0], s[1], s[2], s[3], s[4], s[5], states, s[7], s[8],
                     s[9], s[10], s[11], s[12], s[13], s[14], s[15], s[16], s[17], s[18]);
    grads[0] = std::get<0>(r);
    grads[1] = std::get<1>(r);
    grads[2] = std::get<2>(r);
    grads[3] = std::get<3>(r);
    grads[4] = std::get<4>(r);
    grads[5] = std::get<5>(r);
    return grads;
  }
};

std::tuple<at::Tensor, at::Tensor> scan_forward_autograd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& source,
    const at::Tensor& transition, const at::Tensor& mark, const at::Tensor& edge_src,
    const at::Tensor& edge_dst, const at::Tensor& arc_src, const at::Tensor& arc_dst,
    const at::Tensor& edge_order, const at::Tensor& level_ptr, const at::Tensor& in_ptr,
    const at::Tensor& in_arc, const at::Tensor& out_ptr, const at::Tensor& out_arc,
    const at::Tensor& node_ptr, const at::Tensor& node_edge, bool keep_states) {
  auto r = Scan::apply(q, k, v, source, transition, mark,
                       variable_list{edge_src, edge_dst, arc_src, arc_dst, edge_order,
                                     level_ptr, in_ptr, in_arc, out_ptr, out_arc, node_ptr,
                                     node_edge},
                       keep_states);
  return {r[0], r[1]};
}

at::Tensor closed_form_forward_autograd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& source,
    const at::Tensor& transition, const at::Tensor& mark, const at::Tensor& direct,
    const at::Tensor& edge_src, const at::Tensor& edge_dst, const at::Tensor& arc_src,
    const at::Tensor& arc_dst, const at::Tensor& in_ptr, const at::Tensor& in_arc,
    const at::Tensor& comp_node_ptr, const at::Tensor& comp_node,
    const at::Tensor& comp_edge_ptr, const at::Tensor& comp_edge) {
  return ClosedForm::apply(q, k, v, source, transition, mark, direct, edge_src, edge_dst,
                           arc_src, arc_dst, in_ptr, in_arc, comp_node_ptr, comp_node,
                           comp_edge_ptr, comp_edge);
}

}  // namespace
}  // namespace plstm_graph

TORCH_LIBRARY(plstm_graph, m) {
  m.def(
      "scan_forward(Tensor query, Tensor key, Tensor value, Tensor source, Tensor transition, "
      "Tensor mark, Tensor edge_src, Tensor edge_dst, Tensor arc_src, Tensor arc_dst, "
      "Tensor edge_order, Tensor level_ptr, Tensor in_ptr, Tensor in_arc, Tensor out_ptr, "
      "Tensor out_arc, Tensor node_ptr, Tensor node_edge, bool keep_states) "
      "-> (Tensor out, Tensor states)");
  m.def(
      "scan_backward(Tensor grad_out, Tensor query, Tensor key, Tensor value, Tensor source, "
      "Tensor transition, Tensor mark, Tensor? states, Tensor edge_src, Tensor edge_dst, "
      "Tensor arc_src, Tensor arc_dst, Tensor edge_order, Tensor level_ptr, Tensor in_ptr, "
      "Tensor in_arc, Tensor out_ptr, Tensor out_arc, Tensor node_ptr, Tensor node_edge) "
      "-> (Tensor grad_query, Tensor grad_key, Tensor grad_value, Tensor grad_source, "
      "Tensor grad_transition, Tensor grad_mark)");
  m.def(
      "closed_form_forward(Tensor query, Tensor key, Tensor value, Tensor source, "
      "Tensor transition, Tensor mark, Tensor direct, Tensor edge_src, Tensor edge_dst, "
      "Tensor arc_src, Tensor arc_dst, Tensor in_ptr, Tensor in_arc, Tensor comp_node_ptr, "
      "Tensor comp_node, Tensor comp_edge_ptr, Tensor comp_edge) -> Tensor");
  m.def(
      "closed_form_backward(Tensor grad_out, Tensor query, Tensor key, Tensor value, "
      "Tensor source, Tensor transition, Tensor mark, Tensor direct, Tensor edge_src, "
      "Tensor edge_dst, Tensor arc_src, Tensor arc_dst, Tensor in_ptr, Tensor in_arc, "
      "Tensor comp_node_ptr, Tensor comp_node, Tensor comp_edge_ptr, Tensor comp_edge) "
      "-> (Tensor grad_query, Tensor grad_key, Tensor grad_value, Tensor grad_source, "
      "Tensor grad_transition, Tensor grad_mark, Tensor grad_direct)");
  // The CUDA runtime version the library was built with (e.g. 12040), or -1 without CUDA.
  m.def("cuda_version() -> int", &plstm_graph::cuda_version);
}

TORCH_LIBRARY_IMPL(plstm_graph, Autograd, m) {
  m.impl("scan_forward", &plstm_graph::scan_forward_autograd);
  m.impl("closed_form_forward", &plstm_graph::closed_form_forward_autograd);
}

// `import plstm_graph._C` only needs a module object: loading the shared library runs the
// static registrations above and in the backend files.
static struct PyModuleDef plstm_graph_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1,
                                                nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&plstm_graph_module); }
