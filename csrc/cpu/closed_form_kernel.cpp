// CPU kernels of the plstm_graph closed form (docs/contract.md, "Closed form"): per weakly
// connected component and head, a masked linear attention
//   y_n = sum_{m before n} Gate[n,m] (q_n . k_m) v_m + D_n (q_n . k_n) v_n
// whose mask Gate[n,m] = sum_{e into n} M_e W[e, m] comes from the path weights W, one short
// scan over the component's edges (W[e] = S_e 1_{src e} + sum_{a -> e} T_a W[src a]).
//
// Why a second algorithm: on batches of small graphs (molecules, ASTs of functions) a
// component of n nodes costs about n^2/2 (K + V) here against (2E + L) K V for the state scan,
// and nothing but the inputs is kept for backward (W and Gate are recomputed there, they cost
// (E + L) n). The Python dispatcher picks this op when the schedule says it is cheaper.
//
// Work items are components, each with all its heads; each writes its own rows of every
// output, in a fixed order, so results are bitwise reproducible whatever the thread count. The
// component layout is checked completely before any memory is touched.
#include "../checks.h"
#include "float_ptrs.h"
#include "isa.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#define __restrict__ __restrict
#define PLSTM_CF_INLINE inline
#else  // the small helpers sit in the innermost loops: a call per pair costs more than the work
#define PLSTM_CF_INLINE inline __attribute__((always_inline))
#endif

namespace plstm_graph {
namespace cpu {
namespace {

const int64_t* iptr(const at::Tensor& t) { return t.data_ptr<int64_t>(); }

// The op's arguments after the checks (checks.h): gates contiguous, q, k and v with a node
// stride, the unpacked schedule.
struct ClosedFormInputs {
  Floats f;
  DagSchedule s;
};

ClosedFormInputs closed_form_inputs(const char* op, const at::Tensor& q, const at::Tensor& k,
                                    const at::Tensor& v, const at::Tensor& source,
                                    const at::Tensor& transition, const at::Tensor& mark,
                                    const at::Tensor& direct, at::TensorList schedule) {
  ClosedFormInputs in{check_floats(op, q, k, v, source, transition, mark, direct,
                                   /*node_level_transition=*/false, /*keep_node_stride=*/true),
                      {}};
  TORCH_CHECK_VALUE(in.f.q.device().is_cpu(), op, " (CPU kernel): query is on ",
                    in.f.q.device());
  in.s = unpack_dag_schedule(op, schedule, in.f.d, in.f.q.device());
  return in;
}

template <typename scalar_t, typename acc_t>
struct CfPtrs : FloatPtrs<scalar_t> {
  const int64_t *edge_src, *edge_dst, *arc_src, *in_ptr, *in_arc, *comp_node_ptr, *comp_node,
      *comp_edge_ptr, *comp_edge, *node_pos, *edge_pos;
  int64_t q_stride, k_stride, v_stride;  // elements between consecutive nodes
};

// Heads h0, ..., h0 + n - 1 of the H heads: what one task computes of its component.
struct CfHeads {
  int64_t h0, n;
};

// Per-thread scratch, kept across calls up to this size.
constexpr size_t kKeepBytes = size_t(4) << 20;
constexpr int64_t kGrainWork = 1 << 15;  // flops below which a thread-pool round trip loses

// One kept buffer per element type; a task asks for each type once.
template <typename T>
T* task_scratch(int64_t n, std::vector<T>& own) {
  thread_local std::vector<T> kept;
  const size_t count = static_cast<size_t>(std::max<int64_t>(n, 1));
  if (count * sizeof(T) > kKeepBytes) {
    if (own.size() < count) own.resize(count);
    return own.data();
  }
  if (kept.size() < count) kept.resize(count);
  return kept.data();
}

}  // namespace

#define PLSTM_ISA_HEADER "closed_form_impl.h"
#define PLSTM_ISA_BASE cf_base
#define PLSTM_ISA_AVX2 cf_avx2
#include "isa_variants.h"

namespace {

template <typename scalar_t, typename acc_t>
CfPtrs<scalar_t, acc_t> make_cf_ptrs(const ClosedFormInputs& in) {
  CfPtrs<scalar_t, acc_t> p{};
  p.bind_inputs(in.f);
  p.edge_src = iptr(in.s.edge_src);
  p.edge_dst = iptr(in.s.edge_dst);
  p.arc_src = iptr(in.s.arc_src);
  p.in_ptr = iptr(in.s.in_ptr);
  p.in_arc = iptr(in.s.in_arc);
  p.comp_node_ptr = iptr(in.s.comp_node_ptr);
  p.comp_node = iptr(in.s.comp_node);
  p.comp_edge_ptr = iptr(in.s.comp_edge_ptr);
  p.comp_edge = iptr(in.s.comp_edge);
  p.node_pos = iptr(in.s.node_pos);
  p.edge_pos = iptr(in.s.edge_pos);
  p.q_stride = in.f.q.stride(0);
  p.k_stride = in.f.k.stride(0);
  p.v_stride = in.f.v.stride(0);
  return p;
}

// For every component: its ancestor lists (ancestors(c, words, ints)), then
// task(c, heads, scratch, ints, rows) for each group of `group(nc, ec)` heads; over the
// threads when the work is large enough. `scratch_size(nc, ec, group)` gives the buffer
// sizes. Both return false where the layout would take an access out of bounds; then this
// raises, after the loop, naming `op`.
template <typename acc_t, typename Group, typename Size, typename Ancestors, typename Task>
void for_each_component(const char* op, const ClosedFormInputs& in, const Group& group,
                        const Size& scratch_size, const Ancestors& ancestors, const Task& task) {
  const int64_t H = in.f.d.H, C = in.s.C;
  if (C == 0) return;
  const int64_t* cnp = iptr(in.s.comp_node_ptr);
  const int64_t* cep = iptr(in.s.comp_edge_ptr);
  int64_t work = 0;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t nc = cnp[c + 1] - cnp[c], ec = cep[c + 1] - cep[c];
    TORCH_CHECK_VALUE(nc >= 0 && ec >= 0, op, ": comp_node_ptr and comp_edge_ptr must be "
                      "non-decreasing (component ", c, ")");
    work += (nc * nc + ec * nc) * (in.f.d.K + in.f.d.V);
  }
  work *= H;
  const int64_t grain = std::max<int64_t>(1, C * kGrainWork / std::max<int64_t>(1, work));
  std::atomic<bool> bad{false};
  auto body = [&](int64_t c0, int64_t c1) {
    std::vector<acc_t> own;
    std::vector<uint64_t> own_words;
    std::vector<int32_t> own_ints;
    std::vector<const acc_t*> own_rows;
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t nc = cnp[c + 1] - cnp[c], ec = cep[c + 1] - cep[c];
      const int64_t G = group(nc, ec);
      const auto size = scratch_size(nc, ec, G);
      acc_t* buf = task_scratch<acc_t>(size.acc, own);
      int32_t* ints = task_scratch<int32_t>(size.ints, own_ints);
      const acc_t** rows = task_scratch<const acc_t*>(4 * nc, own_rows);
      if (!ancestors(c, task_scratch<uint64_t>(size.words, own_words), ints)) {
        bad = true;
        return;
      }
      for (int64_t h0 = 0; h0 < H; h0 += G) {
        if (!task(c, CfHeads{h0, std::min(G, H - h0)}, buf, ints, rows)) {
          bad = true;
          return;
        }
      }
    }
  };
  if (at::get_num_threads() > 1 && !at::in_parallel_region() && C > grain) {
    at::parallel_for(0, C, grain, body);
  } else {
    body(0, C);
  }
  TORCH_CHECK_VALUE(!bad, op, ": the schedule's component layout is inconsistent (an edge "
                    "that does not join two nodes of its component in topological order, or "
                    "an arc from a later edge or another component); build_schedule never makes "
                    "one, DagSchedule.check() names the defect of one from elsewhere");
}

// The work of one op: ancestor lists and the per-component task of the chosen instruction set.
template <typename scalar_t, typename acc_t>
void run_closed_form(const char* op, const ClosedFormInputs& in,
                     const CfPtrs<scalar_t, acc_t>& p, bool backward) {
  using P = CfPtrs<scalar_t, acc_t>;
  bool (*ancestors)(const P&, int64_t, uint64_t*, int32_t*, int32_t*) =
      &cf_base::cf_ancestors<scalar_t, acc_t>;
  bool (*task)(const P&, int64_t, CfHeads, acc_t*, const int32_t*, const acc_t**) =
      backward ? &cf_base::cf_backward_task<scalar_t, acc_t>
               : &cf_base::cf_forward_task<scalar_t, acc_t>;
#ifdef PLSTM_HAVE_AVX2
  if (use_avx2()) {
    ancestors = &cf_avx2::cf_ancestors<scalar_t, acc_t>;
    task = backward ? &cf_avx2::cf_backward_task<scalar_t, acc_t>
                    : &cf_avx2::cf_forward_task<scalar_t, acc_t>;
  }
#endif
  const int64_t H = p.H, K = p.K, V = p.V;
  for_each_component<acc_t>(
      op, in,
      [&](int64_t nc, int64_t ec) {
        return cf_base::cf_head_group<acc_t>(nc, ec, H, backward);
      },
      [&](int64_t nc, int64_t ec, int64_t G) {
        return backward ? cf_base::cf_backward_scratch(nc, ec, H, G, K, V)
                        : cf_base::cf_forward_scratch(nc, ec, H, G, K, V);
      },
      [&](int64_t c, uint64_t* words, int32_t* ints) {
        return ancestors(p, c, words, ints,
                         ints + (p.comp_node_ptr[c + 1] - p.comp_node_ptr[c] + 1));
      },
      [&](int64_t c, CfHeads heads, acc_t* buf, const int32_t* ints, const acc_t** rows) {
        return task(p, c, heads, buf, ints, rows);
      });
}

}  // namespace

at::Tensor closed_form_forward(PLSTM_KERNEL_INPUTS, at::TensorList schedule) {
  const ClosedFormInputs in =
      closed_form_inputs("closed_form_forward", PLSTM_KERNEL_INPUT_NAMES, schedule);
  at::Tensor out = at::empty({in.f.d.N, in.f.d.H, in.f.d.V}, in.f.q.options());
  PLSTM_DISPATCH_FLOATS(in.f.q.scalar_type(), "plstm_graph::closed_form_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto p = make_cf_ptrs<scalar_t, acc_t>(in);
    p.out = out.data_ptr<scalar_t>();
    run_closed_form<scalar_t, acc_t>("closed_form_forward", in, p, /*backward=*/false);
  });
  return out;
}

InputGradTuple closed_form_backward(const at::Tensor& grad_out, PLSTM_KERNEL_INPUTS,
                                    at::TensorList schedule) {
  const ClosedFormInputs in =
      closed_form_inputs("closed_form_backward", PLSTM_KERNEL_INPUT_NAMES, schedule);
  const at::Tensor dy = check_grad_out("closed_form_backward", in.f, grad_out);
  const InputGrads grads(in.f);
  PLSTM_DISPATCH_FLOATS(in.f.q.scalar_type(), "plstm_graph::closed_form_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto p = make_cf_ptrs<scalar_t, acc_t>(in);
    grads.bind(p, dy);
    run_closed_form<scalar_t, acc_t>("closed_form_backward", in, p, /*backward=*/true);
  });
  return grads.tuple();
}

}  // namespace cpu
}  // namespace plstm_graph

TORCH_LIBRARY_IMPL(plstm_graph, CPU, m) {
  m.impl("closed_form_forward", &plstm_graph::cpu::closed_form_forward);
  m.impl("closed_form_backward", &plstm_graph::cpu::closed_form_backward);
}
