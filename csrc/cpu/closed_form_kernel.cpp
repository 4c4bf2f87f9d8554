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

// Positions of every node and edge inside its component, from a complete check of the layout:
// the component CSRs must be permutations, every edge must join two nodes of its component in
// topological order, and every arc must come from an earlier edge of the same component that
// ends where the arc's edge starts.
struct Layout {
  std::vector<int64_t> node_pos, edge_pos;
  int64_t max_nodes = 0, max_edges = 0;
};

Layout check_layout(const ClosedFormInputs& in) {
  const Dims& d = in.f.d;
  const int64_t C = in.s.C;
  const int64_t *es = iptr(in.s.edge_src), *ed = iptr(in.s.edge_dst), *as = iptr(in.s.arc_src),
                *ad = iptr(in.s.arc_dst), *ip = iptr(in.s.in_ptr), *ia = iptr(in.s.in_arc),
                *cnp = iptr(in.s.comp_node_ptr), *cn = iptr(in.s.comp_node),
                *cep = iptr(in.s.comp_edge_ptr), *ce = iptr(in.s.comp_edge);
  Layout lay;
  std::vector<int64_t> node_comp(static_cast<size_t>(d.N), -1),
      edge_comp(static_cast<size_t>(d.E), -1);
  lay.node_pos.assign(static_cast<size_t>(d.N), 0);
  lay.edge_pos.assign(static_cast<size_t>(d.E), 0);
  auto check_ptr = [&](const char* name, const int64_t* ptr, int64_t total) {
    TORCH_CHECK_VALUE(ptr[0] == 0, name, " must start at 0, got ", ptr[0]);
    for (int64_t c = 0; c < C; ++c) {
      TORCH_CHECK_VALUE(ptr[c] <= ptr[c + 1], name, " must be non-decreasing (", ptr[c],
                        " > ", ptr[c + 1], " at component ", c, ")");
    }
    TORCH_CHECK_VALUE(ptr[C] == total, name, " must end at ", total, ", got ", ptr[C]);
  };
  check_ptr("comp_node_ptr", cnp, d.N);
  check_ptr("comp_edge_ptr", cep, d.E);
  // the members of component c (nodes or edges): in range, listed once; returns their count
  auto place = [&](int64_t c, const char* list, const char* what, const int64_t* ptr,
                   const int64_t* member, int64_t count, std::vector<int64_t>& comp,
                   std::vector<int64_t>& pos) {
    for (int64_t j = ptr[c]; j < ptr[c + 1]; ++j) {
      const int64_t x = member[j];
      TORCH_CHECK_VALUE(x >= 0 && x < count, list, "[", j, "] = ", x, " is out of range for ",
                        count, " ", what, "s");
      TORCH_CHECK_VALUE(comp[x] < 0, list, " lists ", what, " ", x, " twice");
      comp[x] = c;
      pos[x] = j - ptr[c];
    }
    return ptr[c + 1] - ptr[c];
  };
  for (int64_t c = 0; c < C; ++c) {
    lay.max_nodes = std::max(lay.max_nodes,
                             place(c, "comp_node", "node", cnp, cn, d.N, node_comp, lay.node_pos));
    lay.max_edges = std::max(lay.max_edges,
                             place(c, "comp_edge", "edge", cep, ce, d.E, edge_comp, lay.edge_pos));
  }
  for (int64_t e = 0; e < d.E; ++e) {
    const int64_t u = es[e], w = ed[e];
    TORCH_CHECK_VALUE(u >= 0 && u < d.N && w >= 0 && w < d.N, "edge ", e, " (", u, " -> ", w,
                      ") has a node id out of range for ", d.N, " nodes");
    TORCH_CHECK_VALUE(node_comp[u] == edge_comp[e] && node_comp[w] == edge_comp[e], "edge ", e,
                      " (", u, " -> ", w, ") is not inside its component ", edge_comp[e]);
    TORCH_CHECK_VALUE(lay.node_pos[u] < lay.node_pos[w], "edge ", e, " (", u, " -> ", w,
                      ") goes against the component's node order: comp_node must list each "
                      "component in topological order");
  }
  TORCH_CHECK_VALUE(ip[0] == 0 && ip[d.E] == d.L, "in_ptr must run from 0 to L=", d.L,
                    ", got ", ip[0], " to ", ip[d.E]);
  std::vector<uint8_t> seen(static_cast<size_t>(d.L), 0);
  for (int64_t e = 0; e < d.E; ++e) {
    TORCH_CHECK_VALUE(ip[e] <= ip[e + 1], "in_ptr must be non-decreasing (", ip[e], " > ",
                      ip[e + 1], " at edge ", e, ")");
    for (int64_t r = ip[e]; r < ip[e + 1]; ++r) {
      const int64_t a = ia[r];
      TORCH_CHECK_VALUE(a >= 0 && a < d.L, "in_arc[", r, "] = ", a, " is out of range for ",
                        d.L, " arcs");
      TORCH_CHECK_VALUE(!seen[a], "in_arc lists arc ", a, " twice");
      seen[a] = 1;
      const int64_t pe = as[a];
      TORCH_CHECK_VALUE(ad[a] == e, "in_arc lists arc ", a, " under edge ", e,
                        " but the arc feeds edge ", ad[a]);
      TORCH_CHECK_VALUE(pe >= 0 && pe < d.E, "arc_src[", a, "] = ", pe, " is out of range for ",
                        d.E, " edges");
      TORCH_CHECK_VALUE(ed[pe] == es[e], "arc ", a, " (edge ", pe, " -> edge ", e,
                        ") joins edges that do not meet");
      TORCH_CHECK_VALUE(edge_comp[pe] == edge_comp[e] && lay.edge_pos[pe] < lay.edge_pos[e],
                        "arc ", a, " (edge ", pe, " -> edge ", e, ") does not go forward in ",
                        "comp_edge: it must list each component's edges in level order");
    }
  }
  return lay;
}

template <typename scalar_t, typename acc_t>
struct CfPtrs : FloatPtrs<scalar_t> {
  const int64_t *edge_src, *edge_dst, *arc_src, *in_ptr, *in_arc, *comp_node_ptr, *comp_node,
      *comp_edge_ptr, *comp_edge, *node_pos, *edge_pos;
  int64_t q_stride, k_stride, v_stride;  // elements between consecutive nodes
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
CfPtrs<scalar_t, acc_t> make_cf_ptrs(const ClosedFormInputs& in, const Layout& lay) {
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
  p.node_pos = lay.node_pos.data();
  p.edge_pos = lay.edge_pos.data();
  p.q_stride = in.f.q.stride(0);
  p.k_stride = in.f.k.stride(0);
  p.v_stride = in.f.v.stride(0);
  return p;
}

// For every component: its ancestor lists (ancestors(c, words, ints)), then
// task(c, scratch, ints, rows), which does all heads; over the threads when the work is large
// enough. `scratch_size(nc, ec)` gives the buffer sizes.
template <typename acc_t, typename Size, typename Ancestors, typename Task>
void for_each_component(const ClosedFormInputs& in, const Size& scratch_size,
                        const Ancestors& ancestors, const Task& task) {
  const int64_t H = in.f.d.H, C = in.s.C;
  if (C == 0) return;
  const int64_t* cnp = iptr(in.s.comp_node_ptr);
  const int64_t* cep = iptr(in.s.comp_edge_ptr);
  int64_t work = 0;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t nc = cnp[c + 1] - cnp[c];
    work += (nc * nc + (cep[c + 1] - cep[c]) * nc) * (in.f.d.K + in.f.d.V);
  }
  work *= H;
  const int64_t grain = std::max<int64_t>(1, C * kGrainWork / std::max<int64_t>(1, work));
  auto body = [&](int64_t c0, int64_t c1) {
    std::vector<acc_t> own;
    std::vector<uint64_t> own_words;
    std::vector<int32_t> own_ints;
    std::vector<const acc_t*> own_rows;
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t nc = cnp[c + 1] - cnp[c], ec = cep[c + 1] - cep[c];
      const auto size = scratch_size(nc, ec);
      acc_t* buf = task_scratch<acc_t>(size.acc, own);
      int32_t* ints = task_scratch<int32_t>(size.ints, own_ints);
      const acc_t** rows = task_scratch<const acc_t*>(4 * nc, own_rows);
      ancestors(c, task_scratch<uint64_t>(size.words, own_words), ints);
      task(c, buf, ints, rows);
    }
  };
  if (at::get_num_threads() > 1 && !at::in_parallel_region() && C > grain) {
    at::parallel_for(0, C, grain, body);
  } else {
    body(0, C);
  }
}

// The work of one op: ancestor lists and the per-head task of the chosen instruction set.
template <typename scalar_t, typename acc_t>
void run_closed_form(const ClosedFormInputs& in, const CfPtrs<scalar_t, acc_t>& p,
                     bool backward) {
  using P = CfPtrs<scalar_t, acc_t>;
  void (*ancestors)(const P&, int64_t, uint64_t*, int32_t*, int32_t*) =
      &cf_base::cf_ancestors<scalar_t, acc_t>;
  void (*task)(const P&, int64_t, acc_t*, const int32_t*, const acc_t**) =
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
      in,
      [&](int64_t nc, int64_t ec) {
        return backward ? cf_base::cf_backward_scratch(nc, ec, H, K, V)
                        : cf_base::cf_forward_scratch(nc, ec, H, K, V);
      },
      [&](int64_t c, uint64_t* words, int32_t* ints) {
        ancestors(p, c, words, ints, ints + (p.comp_node_ptr[c + 1] - p.comp_node_ptr[c] + 1));
      },
      [&](int64_t c, acc_t* buf, const int32_t* ints, const acc_t** rows) {
        task(p, c, buf, ints, rows);
      });
}

}  // namespace

at::Tensor closed_form_forward(PLSTM_KERNEL_INPUTS, at::TensorList schedule) {
  const ClosedFormInputs in =
      closed_form_inputs("closed_form_forward", PLSTM_KERNEL_INPUT_NAMES, schedule);
  const Layout lay = check_layout(in);
  at::Tensor out = at::empty({in.f.d.N, in.f.d.H, in.f.d.V}, in.f.q.options());
  PLSTM_DISPATCH_FLOATS(in.f.q.scalar_type(), "plstm_graph::closed_form_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto p = make_cf_ptrs<scalar_t, acc_t>(in, lay);
    p.out = out.data_ptr<scalar_t>();
    run_closed_form<scalar_t, acc_t>(in, p, /*backward=*/false);
  });
  return out;
}

InputGradTuple closed_form_backward(const at::Tensor& grad_out, PLSTM_KERNEL_INPUTS,
                                    at::TensorList schedule) {
  const ClosedFormInputs in =
      closed_form_inputs("closed_form_backward", PLSTM_KERNEL_INPUT_NAMES, schedule);
  const at::Tensor dy = check_grad_out("closed_form_backward", in.f, grad_out);
  const Layout lay = check_layout(in);
  const InputGrads grads(in.f);
  PLSTM_DISPATCH_FLOATS(in.f.q.scalar_type(), "plstm_graph::closed_form_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto p = make_cf_ptrs<scalar_t, acc_t>(in, lay);
    grads.bind(p, dy);
    run_closed_form<scalar_t, acc_t>(in, p, /*backward=*/true);
  });
  return grads.tuple();
}

}  // namespace cpu
}  // namespace plstm_graph

TORCH_LIBRARY_IMPL(plstm_graph, CPU, m) {
  m.impl("closed_form_forward", &plstm_graph::cpu::closed_form_forward);
  m.impl("closed_form_backward", &plstm_graph::cpu::closed_form_backward);
}
