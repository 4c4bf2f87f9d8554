// The node-level scan op (docs/contract.md, "Node-level transitions": one transition T_n per shared node, no line graph):
// its schemas and its autograd, wired once here for every backend. The CPU kernels are in
// cpu/node_scan_kernel.cpp; there is no CUDA kernel (CUDA tensors take the pure-PyTorch node
// scan in plstm_graph/ops/node_scan_torch.py); the fake kernels are in plstm_graph/ops/native.py.
//
//   node_scan_forward(q, k, v, source[E,H], transition[N,H], mark[E,H], carry[E,H]?,
//                     <schedule>) -> (out[N,H,V], states[N,H,K,V])
//   node_scan_backward(grad_out, q, k, v, source, transition, mark, carry?, states,
//                      <schedule>) -> (grad_q, grad_k, grad_v, grad_source, grad_transition,
//                                      grad_mark, grad_carry)
//
// It computes the state part (no direct term): with H_n = sum_{e into n} C_e,
//   C_b = S_b k_u v_u^T + g_b T_u H_u (b = u -> w),   y_w = sum_{b into w} M_b C_b^T q_w,
// where the optional carry g_b (1 when absent; grad_carry is then an empty tensor) scales the
// state carried into edge b: what an edge mask does to the transitions into its edge.
// <schedule> is the index layout of plstm_graph.dag.NodeSchedule, in this order:
//   edge_src[E], edge_dst[E], node_order[N] (nodes by level), node_level_ptr[levels+1] (CPU),
//   in_ptr[N+1], in_edge[E] (edges by head), out_ptr[N+1], out_edge[E] (edges by tail).
// `states` (node states H, in the accumulation dtype: float32 for the half types) is kept for
// backward and carries no gradient.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

namespace plstm_graph {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using OptTensor = c10::optional<at::Tensor>;
using ForwardSig = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const OptTensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&);
using BackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                               at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&);

// Without a carry the autograd function gets an empty placeholder tensor (it takes no
// undefined tensors as inputs) and `has_carry` false.
OptTensor carry_arg(const at::Tensor& t, bool has_carry) {
  return has_carry ? OptTensor(t) : OptTensor();
}

class NodeScan : public torch::autograd::Function<NodeScan> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, const at::Tensor& source,
                               const at::Tensor& transition, const at::Tensor& mark,
                               const at::Tensor& carry, bool has_carry,
                               const variable_list& schedule) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("plstm_graph::node_scan_forward", "")
                         .typed<ForwardSig>();
    auto [out, states] = op.call(q, k, v, source, transition, mark, carry_arg(carry, has_carry),
                                 schedule[0], schedule[1], schedule[2], schedule[3],
                                 schedule[4], schedule[5], schedule[6], schedule[7]);
    variable_list saved = {q, k, v, source, transition, mark, carry, states};
    saved.insert(saved.end(), schedule.begin(), schedule.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["has_carry"] = has_carry;
    ctx->mark_non_differentiable({states});
    ctx->set_materialize_grads(false);
    return {out, states};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list s = ctx->get_saved_variables();
    variable_list grads(9);  // q, k, v, source, transition, mark, carry, has_carry, schedule
    const bool has_carry = ctx->saved_data["has_carry"].toBool();
    const at::Tensor& dy = grad_outputs[0];
    if (!dy.defined()) return grads;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("plstm_graph::node_scan_backward", "")
                         .typed<BackwardSig>();
    auto r = op.call(dy.contiguous(), s[0], s[1], s[2], s[3], s[4], s[5],
                     carry_arg(s[6], has_carry),
                     s[7], s[8], s[9], s[10], s[11], s[12], s[13], s[14], s[15]);
    grads[0] = std::get<0>(r);
    grads[1] = std::get<1>(r);
    grads[2] = std::get<2>(r);
    grads[3] = std::get<3>(r);
    grads[4] = std::get<4>(r);
    grads[5] = std::get<5>(r);
    if (has_carry) grads[6] = std::get<6>(r);
    return grads;
  }
};

std::tuple<at::Tensor, at::Tensor> node_scan_forward_autograd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& source,
    const at::Tensor& transition, const at::Tensor& mark, const OptTensor& carry,
    const at::Tensor& edge_src, const at::Tensor& edge_dst, const at::Tensor& node_order,
    const at::Tensor& level_ptr, const at::Tensor& in_ptr, const at::Tensor& in_edge,
    const at::Tensor& out_ptr, const at::Tensor& out_edge) {
  const bool has_carry = carry.has_value() && carry->defined();
  auto r = NodeScan::apply(q, k, v, source, transition, mark,
                           has_carry ? *carry : at::empty({0}, q.options()), has_carry,
                           variable_list{edge_src, edge_dst, node_order, level_ptr, in_ptr,
                                         in_edge, out_ptr, out_edge});
  return {r[0], r[1]};
}

}  // namespace
}  // namespace plstm_graph

TORCH_LIBRARY_FRAGMENT(plstm_graph, m) {
  m.def(
      "node_scan_forward(Tensor query, Tensor key, Tensor value, Tensor source, "
      "Tensor transition, Tensor mark, Tensor? carry, Tensor edge_src, Tensor edge_dst, "
      "Tensor node_order, Tensor level_ptr, Tensor in_ptr, Tensor in_edge, Tensor out_ptr, "
      "Tensor out_edge) -> (Tensor out, Tensor states)");
  m.def(
      "node_scan_backward(Tensor grad_out, Tensor query, Tensor key, Tensor value, "
      "Tensor source, Tensor transition, Tensor mark, Tensor? carry, Tensor states, "
      "Tensor edge_src, Tensor edge_dst, Tensor node_order, Tensor level_ptr, Tensor in_ptr, "
      "Tensor in_edge, Tensor out_ptr, Tensor out_edge) "
      "-> (Tensor grad_query, Tensor grad_key, Tensor grad_value, Tensor grad_source, "
      "Tensor grad_transition, Tensor grad_mark, Tensor grad_carry)");
}

TORCH_LIBRARY_IMPL(plstm_graph, Autograd, m) {
  m.impl("node_scan_forward", &plstm_graph::node_scan_forward_autograd);
}
