// CPU kernels of the node-level scan (docs/contract.md, "Node-level transitions": one transition T_n per shared node).
//
// With the node state H_n = sum_{e into n} C_e and C_b = S_b k_u v_u^T + T_u H_u (b = u -> w):
//
// Forward, levels in order, one work item per (node w, head), pulling over w's in-edges:
//   H_w = sum_b (S_b k_u v_u^T + T_u H_u),
//   y_w = sum_b M_b (S_b (q_w . k_u) v_u + T_u H_u^T q_w)
// Backward, two passes:
//   (a) any order, one item per (node w, head) over its in-edges (H is known):
//       dM_b = S_b (q_w . k_u)(v_u . dy_w) + T_u q_w^T H_u dy_w,
//       dq_w = sum_b M_b (S_b (v_u . dy_w) k_u + T_u H_u dy_w)
//   (b) levels in reverse, one item per (node u, head) over its out-edges:
//       dC_b = T_w F_w + M_b q_w dy_w^T,  F_u = sum_b dC_b,  dT_u = <F_u, H_u>,
//       dS_b = k_u^T dC_b v_u,  dk_u = sum_b S_b dC_b v_u,  dv_u = sum_b S_b dC_b^T k_u
// With the optional carry g_b (an edge mask's share of the transitions into edge b), T_u
// reads g_b T_u for edge b, F_u = sum_b g_b dC_b and dg_b = T_u <dC_b, H_u>.
//
// Every output element is written by one item, which reads only rows of lower (forward) or
// higher (backward pass b) levels, in a fixed order: no atomics, bitwise the same results on
// any number of threads. The items of one level run through at::parallel_for when the level
// has enough work; a deep, narrow graph runs its levels inline on the calling thread.
//
// The schedule is checked completely before any memory is touched (ranges, that the CSRs are
// permutations consistent with edge_src / edge_dst, and that every edge climbs a level), so
// bad input raises a ValueError instead of reading out of bounds or racing.
#include "index_checks.h"
#include "isa.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <tuple>
#include <vector>

namespace plstm_graph {
namespace cpu {
namespace {

constexpr int64_t kGrainWork = 1 << 15;  // flops below which a thread-pool round trip loses

std::string shape_of(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

bool supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

at::ScalarType acc_of(at::ScalarType t) {
  return (t == at::kBFloat16 || t == at::kHalf) ? at::kFloat : t;
}

struct NodeInputs {
  at::Tensor q, k, v, S, T, M, carry;  // carry: undefined when absent
  at::Tensor edge_src, edge_dst, node_order, level_ptr, in_ptr, in_edge, out_ptr, out_edge;
  int64_t N = 0, H = 0, K = 0, V = 0, E = 0, levels = 0;
};

at::Tensor index_arg(const char* op, const at::Tensor& t, const char* name, int64_t numel) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", name, " is an undefined tensor");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, op, ": ", name,
                   " must have dtype torch.int64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, " (CPU kernel): ", name, " is on ", t.device());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.numel() == numel, op, ": ", name, " must have shape [",
                    numel, "], got ", shape_of(t));
  return t.contiguous();
}

const int64_t* iptr(const at::Tensor& t) { return t.data_ptr<int64_t>(); }

// check_csr (index_checks.h) with `owner[member] == row` as the fit of each entry.
void check_owned_csr(const char* ptr_name, const char* member_name, const int64_t* ptr,
                     const int64_t* member, int64_t rows, int64_t count, const int64_t* owner,
                     const char* owner_name) {
  check_csr(ptr_name, member_name, ptr, member, rows, count, [&](int64_t r, int64_t x) {
    TORCH_CHECK_VALUE(owner[x] == r, member_name, " lists edge ", x, " under node ", r,
                      " but its ", owner_name, " is node ", owner[x]);
  });
}

NodeInputs check_node_inputs(const char* op, const at::Tensor& q, const at::Tensor& k,
                             const at::Tensor& v, const at::Tensor& S, const at::Tensor& T,
                             const at::Tensor& M, const c10::optional<at::Tensor>& carry,
                             const at::Tensor& edge_src,
                             const at::Tensor& edge_dst, const at::Tensor& node_order,
                             const at::Tensor& level_ptr, const at::Tensor& in_ptr,
                             const at::Tensor& in_edge, const at::Tensor& out_ptr,
                             const at::Tensor& out_edge) {
  const std::pair<const at::Tensor*, const char*> floats[] = {
      {&q, "query"}, {&k, "key"}, {&v, "value"}, {&S, "source"}, {&T, "transition"},
      {&M, "mark"}};
  for (const auto& [t, name] : floats) {
    TORCH_CHECK_VALUE(t->defined(), op, ": ", name, " is an undefined tensor");
    TORCH_CHECK_TYPE(supported_float(t->scalar_type()), op, ": ", name,
                     " must be float32, float64, bfloat16 or float16, got ", t->scalar_type());
    TORCH_CHECK_TYPE(t->scalar_type() == q.scalar_type(), op, ": ", name, " has dtype ",
                     t->scalar_type(), " but query has ", q.scalar_type());
    TORCH_CHECK_VALUE(t->device().is_cpu(), op, " (CPU kernel): ", name, " is on ",
                      t->device());
  }
  NodeInputs in;
  TORCH_CHECK_VALUE(q.dim() == 3, op, ": query must have shape [N, H, K], got ", shape_of(q));
  in.N = q.size(0);
  in.H = q.size(1);
  in.K = q.size(2);
  TORCH_CHECK_VALUE(k.sizes() == q.sizes(), op, ": key must have the shape of query ",
                    shape_of(q), ", got ", shape_of(k));
  TORCH_CHECK_VALUE(v.dim() == 3 && v.size(0) == in.N && v.size(1) == in.H, op,
                    ": value must have shape [N=", in.N, ", H=", in.H, ", V], got ",
                    shape_of(v));
  in.V = v.size(2);
  TORCH_CHECK_VALUE(S.dim() == 2 && S.size(1) == in.H, op, ": source must have shape [E, H=",
                    in.H, "], got ", shape_of(S));
  in.E = S.size(0);
  TORCH_CHECK_VALUE(M.dim() == 2 && M.size(0) == in.E && M.size(1) == in.H, op,
                    ": mark must have shape [E=", in.E, ", H=", in.H, "], got ", shape_of(M));
  TORCH_CHECK_VALUE(T.dim() == 2 && T.size(0) == in.N && T.size(1) == in.H, op,
                    ": transition must have shape [N=", in.N, ", H=", in.H,
                    "] (one per node), got ", shape_of(T));
  if (carry.has_value() && carry->defined()) {
    const at::Tensor& g = *carry;
    TORCH_CHECK_TYPE(g.scalar_type() == q.scalar_type(), op, ": carry has dtype ",
                     g.scalar_type(), " but query has ", q.scalar_type());
    TORCH_CHECK_VALUE(g.device().is_cpu(), op, " (CPU kernel): carry is on ", g.device());
    TORCH_CHECK_VALUE(g.dim() == 2 && g.size(0) == in.E && g.size(1) == in.H, op,
                      ": carry must have shape [E=", in.E, ", H=", in.H, "], got ",
                      shape_of(g));
    in.carry = g.contiguous();
  }
  in.edge_src = index_arg(op, edge_src, "edge_src", in.E);
  in.edge_dst = index_arg(op, edge_dst, "edge_dst", in.E);
  in.node_order = index_arg(op, node_order, "node_order", in.N);
  in.in_ptr = index_arg(op, in_ptr, "in_ptr", in.N + 1);
  in.in_edge = index_arg(op, in_edge, "in_edge", in.E);
  in.out_ptr = index_arg(op, out_ptr, "out_ptr", in.N + 1);
  in.out_edge = index_arg(op, out_edge, "out_edge", in.E);
  TORCH_CHECK_TYPE(level_ptr.defined() && level_ptr.scalar_type() == at::kLong, op,
                   ": level_ptr must be an int64 tensor");
  TORCH_CHECK_VALUE(level_ptr.device().is_cpu() && level_ptr.dim() == 1 &&
                        (level_ptr.numel() >= 1 || in.N == 0),
                    op, ": level_ptr must be a CPU tensor of shape [levels + 1], got ",
                    shape_of(level_ptr), " on ", level_ptr.device());
  in.level_ptr = level_ptr.contiguous();
  in.levels = std::max<int64_t>(0, in.level_ptr.numel() - 1);

  // the whole schedule, before any kernel runs
  const int64_t *es = iptr(in.edge_src), *ed = iptr(in.edge_dst), *no = iptr(in.node_order),
                *lp = iptr(in.level_ptr);
  for (int64_t e = 0; e < in.E; ++e) {
    TORCH_CHECK_VALUE(es[e] >= 0 && es[e] < in.N && ed[e] >= 0 && ed[e] < in.N, op,
                      ": edge ", e, " (", es[e], " -> ", ed[e], ") is out of range for ", in.N,
                      " nodes");
  }
  std::vector<int64_t> level(static_cast<size_t>(in.N), -1);
  if (in.level_ptr.numel() > 0) {
    TORCH_CHECK_VALUE(lp[0] == 0 && lp[in.levels] == in.N, op,
                      ": level_ptr must run from 0 to N=", in.N);
  }
  for (int64_t l = 0; l < in.levels; ++l) {
    TORCH_CHECK_VALUE(lp[l] <= lp[l + 1], op, ": level_ptr must be non-decreasing");
    for (int64_t j = lp[l]; j < lp[l + 1]; ++j) {
      const int64_t n = no[j];
      TORCH_CHECK_VALUE(n >= 0 && n < in.N, op, ": node_order[", j, "] = ", n,
                        " is out of range");
      TORCH_CHECK_VALUE(level[n] < 0, op, ": node_order lists node ", n, " twice");
      level[n] = l;
    }
  }
  for (int64_t e = 0; e < in.E; ++e) {
    TORCH_CHECK_VALUE(level[es[e]] < level[ed[e]], op, ": edge ", e, " (", es[e], " -> ",
                      ed[e], ") does not climb a level (", level[es[e]], " -> ", level[ed[e]],
                      "): the graph is not a DAG or the schedule is inconsistent");
  }
  check_owned_csr("in_ptr", "in_edge", iptr(in.in_ptr), iptr(in.in_edge), in.N, in.E, ed,
                  "head");
  check_owned_csr("out_ptr", "out_edge", iptr(in.out_ptr), iptr(in.out_edge), in.N, in.E, es,
                  "tail");

  in.q = q.contiguous();
  in.k = k.contiguous();
  in.v = v.contiguous();
  in.S = S.contiguous();
  in.T = T.contiguous();
  in.M = M.contiguous();
  return in;
}

template <typename scalar_t, typename acc_t>
struct P {
  const scalar_t *q, *k, *v, *S, *T, *M, *dy;
  const scalar_t* carry;  // optional [E, H] factor of the carried term T_u H_u of each edge
  scalar_t* dcarry;
  const int64_t *edge_src, *edge_dst, *node_order, *in_ptr, *in_edge, *out_ptr, *out_edge;
  acc_t *Hs, *F;  // node states H and, backward, the F_u (both [N, H, K, V])
  scalar_t *out, *dq, *dk, *dv, *dS, *dT, *dM;
  int64_t H, K, V, KV;

  acc_t carry_of(int64_t b, int64_t h) const {
    return carry ? static_cast<acc_t>(carry[b * H + h]) : acc_t(1);
  }
};

template <typename acc_t>
acc_t* thread_scratch(int64_t n) {
  thread_local std::vector<acc_t> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

}  // namespace

// The work items, once for the baseline instruction set and once for AVX2+FMA, chosen at run
// time as in the arc scan (isa.h).
#define PLSTM_ISA node_base
#define PLSTM_TARGET
#include "node_scan_impl.h"  // NOLINT(build/include)
#undef PLSTM_ISA
#undef PLSTM_TARGET

#ifdef PLSTM_HAVE_AVX2
#define PLSTM_ISA node_avx2
#define PLSTM_TARGET __attribute__((target("avx2,fma")))
#include "node_scan_impl.h"  // NOLINT(build/include)
#undef PLSTM_ISA
#undef PLSTM_TARGET
#endif

namespace {

template <typename scalar_t, typename acc_t>
struct NodeKernels {
  using Ptr = P<scalar_t, acc_t>;
  void (*forward_items)(const Ptr&, int64_t, int64_t, int64_t);
  void (*readout_grad_items)(const Ptr&, int64_t, int64_t);
  void (*carry_grad_items)(const Ptr&, int64_t, int64_t, int64_t);
};

template <typename scalar_t, typename acc_t>
NodeKernels<scalar_t, acc_t> node_kernels() {
#ifdef PLSTM_HAVE_AVX2
  if (use_avx2()) {
    return {&node_avx2::forward_items<scalar_t, acc_t>,
            &node_avx2::readout_grad_items<scalar_t, acc_t>,
            &node_avx2::carry_grad_items<scalar_t, acc_t>};
  }
#endif
  return {&node_base::forward_items<scalar_t, acc_t>,
          &node_base::readout_grad_items<scalar_t, acc_t>,
          &node_base::carry_grad_items<scalar_t, acc_t>};
}

bool use_threads() { return at::get_num_threads() > 1 && !at::in_parallel_region(); }

// items [0, n) with `work` flops in all: on the thread pool only when it pays
template <typename F>
void run_items(int64_t n, int64_t work, bool parallel, const F& f) {
  if (n <= 0) return;
  if (!parallel || work < 2 * kGrainWork) {
    f(0, n);
    return;
  }
  const int64_t grain = std::max<int64_t>(1, n * kGrainWork / std::max<int64_t>(1, work));
  at::parallel_for(0, n, grain, f);
}

// flops of the items of nodes node_order[lo:hi] (all heads), counting the edges in `ptr`
int64_t level_work(const int64_t* order, const int64_t* ptr, int64_t lo, int64_t hi,
                   int64_t per_edge, int64_t per_node) {
  int64_t edges = 0;
  for (int64_t j = lo; j < hi; ++j) edges += ptr[order[j] + 1] - ptr[order[j]];
  return edges * per_edge + (hi - lo) * per_node;
}

template <typename scalar_t, typename acc_t>
P<scalar_t, acc_t> make_p(const NodeInputs& in) {
  P<scalar_t, acc_t> p{};
  p.q = in.q.data_ptr<scalar_t>();
  p.k = in.k.data_ptr<scalar_t>();
  p.v = in.v.data_ptr<scalar_t>();
  p.S = in.S.data_ptr<scalar_t>();
  p.T = in.T.data_ptr<scalar_t>();
  p.M = in.M.data_ptr<scalar_t>();
  p.edge_src = iptr(in.edge_src);
  p.edge_dst = iptr(in.edge_dst);
  p.node_order = iptr(in.node_order);
  p.in_ptr = iptr(in.in_ptr);
  p.in_edge = iptr(in.in_edge);
  p.out_ptr = iptr(in.out_ptr);
  p.out_edge = iptr(in.out_edge);
  p.H = in.H;
  p.K = in.K;
  p.V = in.V;
  p.KV = in.K * in.V;
  return p;
}

#define PLSTM_NODE_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

}  // namespace

std::tuple<at::Tensor, at::Tensor> node_scan_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& source, const at::Tensor& transition, const at::Tensor& mark,
    const c10::optional<at::Tensor>& carry, const at::Tensor& edge_src,
    const at::Tensor& edge_dst, const at::Tensor& node_order,
    const at::Tensor& level_ptr, const at::Tensor& in_ptr, const at::Tensor& in_edge,
    const at::Tensor& out_ptr, const at::Tensor& out_edge) {
  const NodeInputs in =
      check_node_inputs("node_scan_forward", query, key, value, source, transition, mark,
                        carry, edge_src, edge_dst, node_order, level_ptr, in_ptr, in_edge,
                        out_ptr, out_edge);
  const auto acc_opts = in.q.options().dtype(acc_of(in.q.scalar_type()));
  at::Tensor states = at::empty({in.N, in.H, in.K, in.V}, acc_opts);
  at::Tensor out = at::empty({in.N, in.H, in.V}, in.q.options());
  const bool parallel = use_threads();
  PLSTM_NODE_DISPATCH(in.q.scalar_type(), "plstm_graph::node_scan_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto p = make_p<scalar_t, acc_t>(in);
    p.Hs = states.data_ptr<acc_t>();
    p.out = out.data_ptr<scalar_t>();
    p.carry = in.carry.defined() ? in.carry.data_ptr<scalar_t>() : nullptr;
    const auto kern = node_kernels<scalar_t, acc_t>();
    const int64_t* lp = iptr(in.level_ptr);
    for (int64_t l = 0; l < in.levels; ++l) {
      const int64_t lo = lp[l], hi = lp[l + 1];
      const int64_t work =
          in.H * level_work(p.node_order, p.in_ptr, lo, hi, 3 * p.KV, p.KV + p.V);
      run_items((hi - lo) * in.H, work, parallel,
                [&](int64_t b, int64_t e) { kern.forward_items(p, lo, b, e); });
    }
  });
  return {out, states};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
node_scan_backward(const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key,
                   const at::Tensor& value, const at::Tensor& source,
                   const at::Tensor& transition, const at::Tensor& mark,
                   const c10::optional<at::Tensor>& carry, const at::Tensor& states,
                   const at::Tensor& edge_src,
                   const at::Tensor& edge_dst, const at::Tensor& node_order,
                   const at::Tensor& level_ptr, const at::Tensor& in_ptr,
                   const at::Tensor& in_edge, const at::Tensor& out_ptr,
                   const at::Tensor& out_edge) {
  const NodeInputs in =
      check_node_inputs("node_scan_backward", query, key, value, source, transition, mark,
                        carry, edge_src, edge_dst, node_order, level_ptr, in_ptr, in_edge,
                        out_ptr, out_edge);
  TORCH_CHECK_VALUE(grad_out.defined() && grad_out.scalar_type() == in.q.scalar_type() &&
                        grad_out.device().is_cpu() && grad_out.dim() == 3 &&
                        grad_out.size(0) == in.N && grad_out.size(1) == in.H &&
                        grad_out.size(2) == in.V,
                    "node_scan_backward: grad_out must be a CPU tensor of shape [", in.N, ", ",
                    in.H, ", ", in.V, "] in the dtype of query");
  const auto acc = acc_of(in.q.scalar_type());
  TORCH_CHECK_VALUE(states.defined() && states.scalar_type() == acc && states.device().is_cpu() &&
                        states.dim() == 4 && states.size(0) == in.N && states.size(1) == in.H &&
                        states.size(2) == in.K && states.size(3) == in.V,
                    "node_scan_backward: states must be a CPU tensor of shape [N=", in.N,
                    ", H=", in.H, ", K=", in.K, ", V=", in.V, "] and dtype ", acc);
  const at::Tensor dy = grad_out.contiguous();
  const at::Tensor Hs = states.contiguous();
  at::Tensor fbuf = at::empty({in.N, in.H, in.K, in.V}, Hs.options());
  at::Tensor dq = at::empty_like(in.q), dk = at::empty_like(in.k), dv = at::empty_like(in.v);
  at::Tensor dS = at::empty_like(in.S), dT = at::empty_like(in.T), dM = at::empty_like(in.M);
  // (no carry: an empty gradient, which the autograd wrapper drops)
  at::Tensor dcarry =
      in.carry.defined() ? at::empty_like(in.carry) : at::empty({0}, in.q.options());
  const bool parallel = use_threads();
  PLSTM_NODE_DISPATCH(in.q.scalar_type(), "plstm_graph::node_scan_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto p = make_p<scalar_t, acc_t>(in);
    p.dy = dy.data_ptr<scalar_t>();
    p.Hs = const_cast<acc_t*>(Hs.data_ptr<acc_t>());
    p.F = fbuf.data_ptr<acc_t>();
    p.dq = dq.data_ptr<scalar_t>();
    p.dk = dk.data_ptr<scalar_t>();
    p.dv = dv.data_ptr<scalar_t>();
    p.dS = dS.data_ptr<scalar_t>();
    p.dT = dT.data_ptr<scalar_t>();
    p.dM = dM.data_ptr<scalar_t>();
    p.carry = in.carry.defined() ? in.carry.data_ptr<scalar_t>() : nullptr;
    p.dcarry = in.carry.defined() ? dcarry.data_ptr<scalar_t>() : nullptr;
    const auto kern = node_kernels<scalar_t, acc_t>();
    // (a) the readout gradients need H only: every node at once
    run_items(in.N * in.H, in.H * (2 * in.E * p.KV + in.N * p.K), parallel,
              [&](int64_t b, int64_t e) { kern.readout_grad_items(p, b, e); });
    // (b) the carried gradients, levels in reverse
    const int64_t* lp = iptr(in.level_ptr);
    for (int64_t l = in.levels - 1; l >= 0; --l) {
      const int64_t lo = lp[l], hi = lp[l + 1];
      const int64_t work =
          in.H * level_work(p.node_order, p.out_ptr, lo, hi, 4 * p.KV, 2 * p.KV);
      run_items((hi - lo) * in.H, work, parallel,
                [&](int64_t b, int64_t e) { kern.carry_grad_items(p, lo, b, e); });
    }
  });
  return {dq, dk, dv, dS, dT, dM, dcarry};
}

}  // namespace cpu
}  // namespace plstm_graph

TORCH_LIBRARY_IMPL(plstm_graph, CPU, m) {
  m.impl("node_scan_forward", &plstm_graph::cpu::node_scan_forward);
  m.impl("node_scan_backward", &plstm_graph::cpu::node_scan_backward);
}
