// CPU kernels of the node-level scan (docs/contract.md, "Node-level transitions": one transition T_n per shared node).
//
// With the node state H_n = sum_{e into n} C_e and C_b = S_b k_u v_u^T + T_u H_u (b = u -> w):
//
// Forward, levels in order, one work item per node w (all heads), pulling over its in-edges:
//   H_w = sum_b (S_b k_u v_u^T + T_u H_u),
//   y_w = sum_b M_b (S_b (q_w . k_u) v_u + T_u H_u^T q_w)
// Backward, two passes:
//   (a) levels in reverse, one item per node u (all heads) over its out-edges:
//       dC_b = T_w F_w + M_b q_w dy_w^T,  F_u = sum_b dC_b,  dT_u = <F_u, H_u>,
//       dS_b = k_u^T dC_b v_u,  dk_u = sum_b S_b dC_b v_u,  dv_u = sum_b S_b dC_b^T k_u,
//       and the readout gradients of the same edges, where H_u is the item's own state:
//       dM_b = S_b (q_w . k_u)(v_u . dy_w) + T_u q_w^T H_u dy_w,
//       DQ_b = M_b (S_b (v_u . dy_w) k_u + T_u H_u dy_w)  (edge b's share of dq_w)
//   (b) any order, one item per node w: dq_w = sum_{b into w} DQ_b (+ the direct term)
// With the optional carry g_b (an edge mask's share of the transitions into edge b), T_u
// reads g_b T_u for edge b, F_u = sum_b g_b dC_b and dg_b = T_u <dC_b, H_u>.
//
// Every output element is written by one item, which reads only rows of lower (forward) or
// higher (backward pass a) levels or of the pass before, in a fixed order: no atomics,
// bitwise the same results on any number of threads. The items of one level run through
// at::parallel_for when the level has enough work; a deep, narrow graph runs its levels inline
// on the calling thread.
//
// The schedule is checked completely before any memory is touched (ranges in checks.h; that
// the CSRs are permutations consistent with edge_src / edge_dst, and that every edge climbs a
// level, here), so bad input raises a ValueError instead of reading out of bounds or racing.
#include "index_checks.h"
#include "float_ptrs.h"
#include "isa.h"

#include "../checks.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace plstm_graph {
namespace cpu {
namespace {

constexpr int64_t kGrainWork = 1 << 15;  // flops below which a thread-pool round trip loses

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

// The shared checks (checks.h), then the schedule's structure.
NodeInputs node_inputs(const char* op, PLSTM_KERNEL_INPUTS,
                       const c10::optional<at::Tensor>& carry, at::TensorList schedule) {
  NodeInputs in = check_node_inputs(op, PLSTM_KERNEL_INPUT_NAMES, carry, schedule,
                                    c10::DeviceType::CPU, "CPU");
  // The structure too: the node levels order the items of the parallel loops, so an edge
  // that does not climb a level would race (the schedule is small: N + E entries).
  const Dims& d = in.f.d;
  const NodeSchedule& s = in.s;
  const int64_t *es = iptr(s.edge_src), *ed = iptr(s.edge_dst), *no = iptr(s.node_order),
                *lp = iptr(s.node_level_ptr);
  std::vector<int64_t> level(static_cast<size_t>(d.N), -1);
  for (int64_t l = 0; l < s.levels; ++l) {
    for (int64_t j = lp[l]; j < lp[l + 1]; ++j) {
      TORCH_CHECK_VALUE(level[no[j]] < 0, op, ": node_order lists node ", no[j], " twice");
      level[no[j]] = l;
    }
  }
  for (int64_t e = 0; e < d.E; ++e) {
    TORCH_CHECK_VALUE(level[es[e]] < level[ed[e]], op, ": edge ", e, " (", es[e], " -> ",
                      ed[e], ") does not climb a level (", level[es[e]], " -> ", level[ed[e]],
                      "): the graph is not a DAG or the schedule is inconsistent");
  }
  check_owned_csr("in_ptr", "in_edge", iptr(s.in_ptr), iptr(s.in_edge), d.N, d.E, ed, "head");
  check_owned_csr("out_ptr", "out_edge", iptr(s.out_ptr), iptr(s.out_edge), d.N, d.E, es,
                  "tail");
  return in;
}

template <typename scalar_t, typename acc_t>
struct P : FloatPtrs<scalar_t> {
  const scalar_t* carry;  // optional [E, H] factor of the carried term T_u H_u of each edge
  scalar_t* dcarry;
  const int64_t *edge_src, *edge_dst, *node_order, *in_ptr, *in_edge, *out_ptr, *out_edge;
  acc_t *Hs, *F;  // node states H and, backward, the F_u (both [N, H, K, V])
  acc_t* DQ;      // backward: each edge's share of dq at its head ([E, H, K])
  int64_t KV;

  acc_t carry_of(int64_t b, int64_t h) const {
    return carry ? static_cast<acc_t>(carry[b * this->H + h]) : acc_t(1);
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
#define PLSTM_ISA_HEADER "node_scan_impl.h"
#define PLSTM_ISA_BASE node_base
#define PLSTM_ISA_AVX2 node_avx2
#include "isa_variants.h"

namespace {

template <typename scalar_t, typename acc_t>
struct NodeKernels {
  using Ptr = P<scalar_t, acc_t>;
  void (*forward_items)(const Ptr&, int64_t, int64_t, int64_t, int64_t);
  void (*readout_grad_items)(const Ptr&, int64_t, int64_t);
  void (*carry_grad_items)(const Ptr&, int64_t, int64_t, int64_t, int64_t);
};

template <typename scalar_t, typename acc_t>
NodeKernels<scalar_t, acc_t> node_kernels() {
#ifdef PLSTM_HAVE_AVX2
  if (use_avx2()) {
    return {&node_avx2::level_items</*Forward=*/true, scalar_t, acc_t>,
            &node_avx2::readout_grad_items<scalar_t, acc_t>,
            &node_avx2::level_items</*Forward=*/false, scalar_t, acc_t>};
  }
#endif
  return {&node_base::level_items</*Forward=*/true, scalar_t, acc_t>,
          &node_base::readout_grad_items<scalar_t, acc_t>,
          &node_base::level_items</*Forward=*/false, scalar_t, acc_t>};
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

// Head groups per node in a level of `nodes` nodes: one (the heads share the gathered edges)
// unless the threads would get fewer than about four items each.
int64_t head_groups(bool parallel, int64_t nodes, int64_t H) {
  if (!parallel || nodes <= 0) return 1;
  const int64_t want = 4 * static_cast<int64_t>(at::get_num_threads());
  return std::max<int64_t>(1, std::min<int64_t>(H, (want + nodes - 1) / nodes));
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
  const Floats& f = in.f;
  p.bind_inputs(f);
  p.carry = in.carry.defined() ? in.carry.data_ptr<scalar_t>() : nullptr;
  const NodeSchedule& s = in.s;
  p.edge_src = iptr(s.edge_src);
  p.edge_dst = iptr(s.edge_dst);
  p.node_order = iptr(s.node_order);
  p.in_ptr = iptr(s.in_ptr);
  p.in_edge = iptr(s.in_edge);
  p.out_ptr = iptr(s.out_ptr);
  p.out_edge = iptr(s.out_edge);
  p.KV = f.d.K * f.d.V;
  return p;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> node_scan_forward(PLSTM_KERNEL_INPUTS,
                                                     const c10::optional<at::Tensor>& carry,
                                                     at::TensorList schedule) {
  const NodeInputs in =
      node_inputs("node_scan_forward", PLSTM_KERNEL_INPUT_NAMES, carry, schedule);
  const Dims& d = in.f.d;
  const auto acc_opts = in.f.q.options().dtype(acc_dtype(in.f.q.scalar_type()));
  at::Tensor states = at::empty({d.N, d.H, d.K, d.V}, acc_opts);
  at::Tensor out = at::empty({d.N, d.H, d.V}, in.f.q.options());
  const bool parallel = use_threads();
  PLSTM_DISPATCH_FLOATS(in.f.q.scalar_type(), "plstm_graph::node_scan_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto p = make_p<scalar_t, acc_t>(in);
    p.Hs = states.data_ptr<acc_t>();
    p.out = out.data_ptr<scalar_t>();
    const auto kern = node_kernels<scalar_t, acc_t>();
    const int64_t* lp = iptr(in.s.node_level_ptr);
    for (int64_t l = 0; l < in.s.levels; ++l) {
      const int64_t lo = lp[l], hi = lp[l + 1];
      const int64_t work =
          d.H * level_work(p.node_order, p.in_ptr, lo, hi, 3 * p.KV, p.KV + p.V);
      const int64_t groups = head_groups(parallel, hi - lo, d.H);
      run_items((hi - lo) * groups, work, parallel,
                [&](int64_t b, int64_t e) { kern.forward_items(p, lo, groups, b, e); });
    }
  });
  return {out, states};
}

NodeGradTuple node_scan_backward(const at::Tensor& grad_out, PLSTM_KERNEL_INPUTS,
                                 const c10::optional<at::Tensor>& carry,
                                 const c10::optional<at::Tensor>& states,
                                 at::TensorList schedule) {
  const NodeInputs in =
      node_inputs("node_scan_backward", PLSTM_KERNEL_INPUT_NAMES, carry, schedule);
  const Dims& d = in.f.d;
  const Floats& f = in.f;
  const at::Tensor dy = check_grad_out("node_scan_backward", f, grad_out);
  const at::Tensor Hs = check_states("node_scan_backward", f, states, d.N, /*required=*/true);
  at::Tensor fbuf = at::empty({d.N, d.H, d.K, d.V}, Hs.options());
  at::Tensor dqbuf = at::empty({d.E, d.H, d.K}, Hs.options());
  const InputGrads grads(f);
  // (no carry: an empty gradient, which the autograd wrapper drops)
  at::Tensor dcarry =
      in.carry.defined() ? at::empty_like(in.carry) : at::empty({0}, f.q.options());
  const bool parallel = use_threads();
  PLSTM_DISPATCH_FLOATS(f.q.scalar_type(), "plstm_graph::node_scan_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto p = make_p<scalar_t, acc_t>(in);
    grads.bind(p, dy);
    p.Hs = const_cast<acc_t*>(Hs.data_ptr<acc_t>());
    p.F = fbuf.data_ptr<acc_t>();
    p.DQ = dqbuf.data_ptr<acc_t>();
    p.dcarry = in.carry.defined() ? dcarry.data_ptr<scalar_t>() : nullptr;
    const auto kern = node_kernels<scalar_t, acc_t>();
    // the carried gradients, levels in reverse (with the edges' readout gradients)
    const int64_t* lp = iptr(in.s.node_level_ptr);
    for (int64_t l = in.s.levels - 1; l >= 0; --l) {
      const int64_t lo = lp[l], hi = lp[l + 1];
      const int64_t work =
          d.H * level_work(p.node_order, p.out_ptr, lo, hi, 6 * p.KV, 3 * p.KV);
      const int64_t groups = head_groups(parallel, hi - lo, d.H);
      run_items((hi - lo) * groups, work, parallel,
                [&](int64_t b, int64_t e) { kern.carry_grad_items(p, lo, groups, b, e); });
    }
    // then dq (the sums of the edges' shares) and dD: every node at once
    run_items(d.N, d.H * (d.E * p.K + d.N * (2 * p.K + p.V)), parallel,
              [&](int64_t b, int64_t e) { kern.readout_grad_items(p, b, e); });
  });
  return {grads.dq, grads.dk, grads.dv, grads.dS, grads.dT, grads.dM, grads.dD, dcarry};
}

}  // namespace cpu
}  // namespace plstm_graph

TORCH_LIBRARY_IMPL(plstm_graph, CPU, m) {
  m.impl("node_scan_forward", &plstm_graph::cpu::node_scan_forward);
  m.impl("node_scan_backward", &plstm_graph::cpu::node_scan_backward);
}
