// CPU kernels of the plstm_graph state scan.
//
// Forward: one work item per (edge, head), edges in level order,
//   C_e = S_e k_u v_u^T + sum_{a -> e} T_a C_{src a}        (in-arcs by the CSR in_ptr/in_arc)
//   y_e = M_e C_e^T q_w                                      (while C_e is hot in cache)
// then out[n] = sum of y_e over the node's in-edges (node_ptr/node_edge) + D_n (q_n . k_n) v_n.
// Backward: one item per (edge, head), edges in reverse level order,
//   G_e = M_e q_w dy_w^T + sum_{e -> b} T_b G_b,  dT_b = <G_b, C_e>   (out-arcs, out_ptr/out_arc)
//   dS_e = k_u^T G_e v_u,  dM_e = q_w^T C_e dy_w,  and the per-edge pieces of dq, dk, dv,
// then per-node sums of those pieces (dq by head node, dk/dv by tail node: node_ptr/node_edge,
// src_ptr/src_edge) and the direct term's gradients.
// The items themselves are in scan_impl.h (compiled for the baseline ISA and for AVX2+FMA);
// this file checks the input, plans the work over threads (see "scheduling" below) and
// registers the CPU kernels.
//
// Every output element is written by exactly one work item, in a fixed order, so results are
// bitwise reproducible, whatever the thread count; no atomics.
//
// The schedule brings everything the plan needs (components, edges by tail node), built once
// with it; here it is only range-checked (checks.h) before any memory is touched, so bad
// indices raise a ValueError instead of reading out of bounds, at a cost linear in its size
// with a tiny constant. Its structure (permutations, arcs that climb levels) is checked where
// it is built, or by check_dag_schedule (schedule_checks.cpp).
#include "float_ptrs.h"
#include "isa.h"

#include "../checks.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <xmmintrin.h>
#endif
#if defined(_MSC_VER) && !defined(__clang__)
#define __restrict__ __restrict
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace plstm_graph {
namespace cpu {
namespace {

const int64_t* iptr(const at::Tensor& t) { return t.data_ptr<int64_t>(); }

// ---------------------------------------------------------------------------------------------
// kernels
// ---------------------------------------------------------------------------------------------
// Buffers: C edge states [*, H, K, V], G their gradients [*, H, K, V], W per-edge gradient
// pieces [*, H, 2K + V], Y per-edge readouts [*, H, V]. Either global (row = edge id) or a
// small per-thread scratch holding one component at a time (row = the edge's position in its
// component), which keeps them in cache; `cslot` (for C) and `wslot` (for G, W, Y) map edge
// ids to rows, null meaning the identity.
template <typename scalar_t, typename acc_t>
struct Ptrs : FloatPtrs<scalar_t> {
  const int64_t *edge_src, *edge_dst, *arc_src, *arc_dst, *edge_order, *in_ptr, *in_arc,
      *out_ptr, *out_arc, *node_ptr, *node_edge, *src_ptr, *src_edge;
  acc_t *C, *Y, *G, *W;
  const int64_t *cslot, *wslot;
  int64_t KV;

  int64_t crow(int64_t e) const { return cslot ? cslot[e] : e; }
  int64_t wrow(int64_t e) const { return wslot ? wslot[e] : e; }
};

// ---------------------------------------------------------------------------------------------
// scheduling of the work over threads
// ---------------------------------------------------------------------------------------------
// A batch of graphs is a DAG with many weakly connected components, and components never
// exchange states. The default plan runs the scan component by component (all levels of one
// component, then its node sums, then the next component) with the component's working
// buffers in a small per-thread scratch, so they stay in cache. On several threads the
// components are dealt to one bin per thread (largest first, to the least loaded bin) and
// every thread runs its own bin: one fork/join per op call and no barrier, which also keeps
// the kernels fast when other processes compete for the cores.
// When one component holds most of the work (one big graph, a long chain) and several threads
// are available, the plan runs by level instead: the edges of each level are split over the
// threads with a barrier per level, and levels with less work than a grain run inline on the
// calling thread (so a long chain pays no thread-pool round trip per level).
// Either way every output element is computed by the same code in the same order, so the
// results do not depend on the plan or on the thread count.
constexpr int64_t kGrainWork = 1 << 15;   // flops below which a thread-pool round trip loses
constexpr int64_t kSerialWork = 1 << 17;  // whole scans below this run on one thread
constexpr size_t kScratchKeepBytes = size_t(4) << 20;  // per-thread scratch kept across calls

struct Plan {
  int64_t bins = 0;  // 0: run by level with global buffers
  // component c: edges comp_edges[comp_edge_off[c]:comp_edge_off[c+1]] in level order, and
  // nodes comp_nodes[comp_node_off[c]:...] (the schedule's component CSRs); bin b: components
  // bin_comps[bin_off[b]:...]; slot[e]: position of edge e in its component
  const int64_t *comp_edges = nullptr, *comp_edge_off = nullptr, *comp_nodes = nullptr,
                *comp_node_off = nullptr;
  std::vector<int64_t> bin_comps, bin_off, slot;
  int64_t max_comp_edges = 0;
};

Plan make_plan(const Dims& d, const DagSchedule& s, bool parallel) {
  Plan plan;
  const int64_t unit = std::max<int64_t>(1, d.K * d.V * d.H);
  const int64_t total = (2 * d.E + d.L) * unit;
  const int64_t threads =
      (parallel && total >= kSerialWork) ? std::max<int64_t>(1, at::get_num_threads()) : 1;
  const int64_t num_comps = s.C;
  const int64_t *cep = iptr(s.comp_edge_ptr), *ce = iptr(s.comp_edge), *ip = iptr(s.in_ptr);

  // deal the components to the bins
  const int64_t bins = std::max<int64_t>(1, std::min(threads, num_comps));
  std::vector<int64_t> comp_bin(static_cast<size_t>(num_comps), 0);
  if (bins > 1) {
    std::vector<int64_t> work(static_cast<size_t>(num_comps), 0);
    for (int64_t c = 0; c < num_comps; ++c) {
      for (int64_t j = cep[c]; j < cep[c + 1]; ++j) {
        work[c] += (2 + ip[ce[j] + 1] - ip[ce[j]]) * unit;
      }
    }
    std::vector<int64_t> by_work(static_cast<size_t>(num_comps));
    for (int64_t c = 0; c < num_comps; ++c) by_work[c] = c;
    std::stable_sort(by_work.begin(), by_work.end(),
                     [&](int64_t a, int64_t b) { return work[a] > work[b]; });
    std::vector<int64_t> load(static_cast<size_t>(bins), 0);
    for (int64_t c : by_work) {
      const int64_t b = std::min_element(load.begin(), load.end()) - load.begin();
      comp_bin[c] = b;
      load[b] += work[c];
    }
    const int64_t max_load = *std::max_element(load.begin(), load.end());
    if (max_load * bins > total + total / 4) return plan;  // unbalanced: run by level
  }

  plan.comp_edges = ce;
  plan.comp_edge_off = cep;
  plan.comp_nodes = iptr(s.comp_node);
  plan.comp_node_off = iptr(s.comp_node_ptr);
  plan.slot.assign(static_cast<size_t>(d.E), 0);
  for (int64_t c = 0; c < num_comps; ++c) {
    plan.max_comp_edges = std::max(plan.max_comp_edges, cep[c + 1] - cep[c]);
    for (int64_t j = cep[c]; j < cep[c + 1]; ++j) plan.slot[ce[j]] = j - cep[c];
  }
  plan.bins = bins;
  plan.bin_off.assign(static_cast<size_t>(bins + 1), 0);
  for (int64_t c = 0; c < num_comps; ++c) ++plan.bin_off[comp_bin[c] + 1];
  for (int64_t b = 0; b < bins; ++b) plan.bin_off[b + 1] += plan.bin_off[b];
  plan.bin_comps.resize(static_cast<size_t>(num_comps));
  std::vector<int64_t> fill(plan.bin_off.begin(), plan.bin_off.end() - 1);
  for (int64_t c = 0; c < num_comps; ++c) plan.bin_comps[fill[comp_bin[c]]++] = c;
  return plan;
}

// Asks for transparent huge pages on a large buffer that is not touched yet: the first touch
// of a fresh buffer of E*H*K*V elements (a long chain's states: hundreds of MB) otherwise
// costs one page fault per 4 KiB, which can take longer than the scan itself. Advisory only.
void advise_huge_pages(void* ptr, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (ptr == nullptr || bytes < 2 * kHuge) return;
  const uintptr_t first = reinterpret_cast<uintptr_t>(ptr);
  const uintptr_t begin = (first + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (first + bytes) & ~(kHuge - 1);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)ptr;
  (void)bytes;
#endif
}

at::Tensor empty_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  advise_huge_pages(t.data_ptr(), t.nbytes());
  return t;
}

// Scratch buffer `which` of the calling thread with at least n elements (uninitialised).
// Buffers up to kScratchKeepBytes stay allocated for the next call (no page faults on the hot
// path); larger ones live in `own` and go away with it.
template <typename T>
T* scratch(int which, int64_t n, std::unique_ptr<T[]>& own) {
  thread_local std::vector<T> kept[3];
  const size_t count = static_cast<size_t>(std::max<int64_t>(n, 1));
  if (count * sizeof(T) > kScratchKeepBytes) {
    own.reset(new T[count]);
    advise_huge_pages(own.get(), count * sizeof(T));
    return own.get();
  }
  if (kept[which].size() < count) kept[which].resize(count);
  return kept[which].data();
}

// Items below `grain` run inline: no thread-pool round trip for small levels.
template <typename F>
inline void run_items(int64_t n, int64_t grain, bool parallel, const F& f) {
  if (n <= 0) return;
  if (!parallel || n <= grain) {
    f(0, n);
  } else {
    at::parallel_for(0, n, grain, f);
  }
}

// Each bin on its own thread (inline, one after the other, if no threads are free).
template <typename F>
inline void run_bins(int64_t bins, const F& f) {
  if (bins == 1) {
    f(0);
    return;
  }
  at::parallel_for(0, bins, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) f(b);
  });
}

constexpr int kLanes = 16;    // partial sums of the long (K*V) reductions
constexpr int kRowLanes = 8;  // partial sums of the short (V) row reductions

}  // namespace

// The work items, once for the baseline instruction set and once for AVX2+FMA (x86-64 with
// GCC or Clang), chosen at run time (here AVX2 made the scan some 20% faster).
#define PLSTM_ISA_HEADER "scan_impl.h"
#define PLSTM_ISA_BASE base
#define PLSTM_ISA_AVX2 avx2
#include "isa_variants.h"

namespace {

// The op's arguments after the checks (checks.h): contiguous inputs and the unpacked schedule.
struct Inputs {
  Floats f;
  DagSchedule s;
  const Dims& d() const { return f.d; }
};

Inputs scan_inputs(const char* op, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor& source, const at::Tensor& transition,
                   const at::Tensor& mark, const at::Tensor& direct, at::TensorList schedule) {
  Inputs in{check_floats(op, q, k, v, source, transition, mark, direct,
                         /*node_level_transition=*/false, /*keep_node_stride=*/false),
            {}};
  TORCH_CHECK_VALUE(in.f.q.device().is_cpu(), op, " (CPU kernel): query is on ",
                    in.f.q.device());
  in.s = unpack_dag_schedule(op, schedule, in.f.d, in.f.q.device());
  return in;
}

template <typename scalar_t, typename acc_t>
struct Kernels {
  using P = Ptrs<scalar_t, acc_t>;
  void (*state_items)(const P&, const int64_t*, int64_t, int64_t, int64_t, bool);
  void (*grad_items)(const P&, const int64_t*, int64_t, int64_t, int64_t);
  void (*node_out_items)(const P&, int64_t, int64_t);
  void (*node_grad_items)(const P&, int64_t, int64_t);
  void (*forward_bin)(const P&, const Plan&, int64_t);
  void (*backward_bin)(const P&, const Plan&, int64_t, bool);
};

#define PLSTM_KERNELS(NS)                                                                 \
  Kernels<scalar_t, acc_t> {                                                              \
    &NS::state_items<scalar_t, acc_t>, &NS::grad_items<scalar_t, acc_t>,                  \
        &NS::node_out_items<scalar_t, acc_t>, &NS::node_grad_items<scalar_t, acc_t>,      \
        &NS::forward_bin<scalar_t, acc_t>, &NS::backward_bin<scalar_t, acc_t>             \
  }

template <typename scalar_t, typename acc_t>
Kernels<scalar_t, acc_t> kernels() {
#ifdef PLSTM_HAVE_AVX2
  if (use_avx2()) return PLSTM_KERNELS(avx2);
#endif
  return PLSTM_KERNELS(base);
}

template <typename scalar_t, typename acc_t>
void forward_by_level(const Kernels<scalar_t, acc_t>& K, const Ptrs<scalar_t, acc_t>& p,
                      const Inputs& in, bool readout, bool parallel) {
  const int64_t H = p.H, V = p.V;
  const int64_t* level_ptr = iptr(in.s.level_ptr);
  const int64_t grain = std::max<int64_t>(1, kGrainWork / std::max<int64_t>(1, 3 * p.KV));
  for (int64_t l = 0; l < in.s.levels; ++l) {
    const int64_t lo = level_ptr[l];
    const int64_t items = (level_ptr[l + 1] - lo) * H;
    run_items(items, grain, parallel, [&](int64_t b, int64_t end) {
      K.state_items(p, p.edge_order, lo, b, end, readout);
    });
  }
  if (!readout) return;
  const int64_t node_grain = std::max<int64_t>(1, kGrainWork / std::max<int64_t>(1, 4 * V));
  run_items(in.d().N * H, node_grain, parallel,
            [&](int64_t b, int64_t end) { K.node_out_items(p, b, end); });
}

template <typename scalar_t, typename acc_t>
void backward_by_level(const Kernels<scalar_t, acc_t>& K, const Ptrs<scalar_t, acc_t>& p,
                       const Inputs& in, bool parallel) {
  const int64_t H = p.H, width = 2 * p.K + p.V;
  const int64_t* level_ptr = iptr(in.s.level_ptr);
  const int64_t grain = std::max<int64_t>(1, kGrainWork / std::max<int64_t>(1, 4 * p.KV));
  for (int64_t l = in.s.levels - 1; l >= 0; --l) {
    const int64_t lo = level_ptr[l];
    const int64_t items = (level_ptr[l + 1] - lo) * H;
    run_items(items, grain, parallel, [&](int64_t b, int64_t end) {
      K.grad_items(p, p.edge_order, lo, b, end);
    });
  }
  const int64_t node_grain =
      std::max<int64_t>(1, kGrainWork / std::max<int64_t>(1, 4 * width));
  run_items(in.d().N * H, node_grain, parallel,
            [&](int64_t b, int64_t end) { K.node_grad_items(p, b, end); });
}

// `local_states`: C lives in the per-thread scratch (states not kept); otherwise p.C is the
// global [E, H, K, V] states tensor.
template <typename scalar_t, typename acc_t>
void forward_by_bin(const Kernels<scalar_t, acc_t>& K, const Ptrs<scalar_t, acc_t>& p,
                    const Plan& plan, bool local_states) {
  const int64_t rows = plan.max_comp_edges * p.H;
  run_bins(plan.bins, [&](int64_t b) {
    Ptrs<scalar_t, acc_t> t = p;
    std::unique_ptr<acc_t[]> own_y, own_c;
    t.Y = scratch(0, rows * p.V, own_y);
    t.wslot = plan.slot.data();
    if (local_states) {
      t.C = scratch(1, rows * p.KV, own_c);
      t.cslot = plan.slot.data();
    }
    K.forward_bin(t, plan, b);
  });
}

// `recompute`: C is recomputed per component into the per-thread scratch.
template <typename scalar_t, typename acc_t>
void backward_by_bin(const Kernels<scalar_t, acc_t>& K, const Ptrs<scalar_t, acc_t>& p,
                     const Plan& plan, bool recompute) {
  const int64_t width = 2 * p.K + p.V;
  const int64_t rows = plan.max_comp_edges * p.H;
  run_bins(plan.bins, [&](int64_t b) {
    Ptrs<scalar_t, acc_t> t = p;
    std::unique_ptr<acc_t[]> own_g, own_w, own_c;
    t.G = scratch(0, rows * p.KV, own_g);
    t.W = scratch(1, rows * width, own_w);
    t.wslot = plan.slot.data();
    if (recompute) {
      t.C = scratch(2, rows * p.KV, own_c);
      t.cslot = plan.slot.data();
    }
    K.backward_bin(t, plan, b, recompute);
  });
}

template <typename scalar_t, typename acc_t>
Ptrs<scalar_t, acc_t> make_ptrs(const Inputs& in) {
  Ptrs<scalar_t, acc_t> p{};
  const Floats& f = in.f;
  p.bind_inputs(f);
  const DagSchedule& s = in.s;
  p.edge_src = iptr(s.edge_src);
  p.edge_dst = iptr(s.edge_dst);
  p.arc_src = iptr(s.arc_src);
  p.arc_dst = iptr(s.arc_dst);
  p.edge_order = iptr(s.edge_order);
  p.in_ptr = iptr(s.in_ptr);
  p.in_arc = iptr(s.in_arc);
  p.out_ptr = iptr(s.out_ptr);
  p.out_arc = iptr(s.out_arc);
  p.node_ptr = iptr(s.node_ptr);
  p.node_edge = iptr(s.node_edge);
  p.src_ptr = iptr(s.src_ptr);
  p.src_edge = iptr(s.src_edge);
  p.KV = f.d.K * f.d.V;
  return p;
}

bool use_threads() { return at::get_num_threads() > 1 && !at::in_parallel_region(); }

template <typename T>
T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> scan_forward(PLSTM_KERNEL_INPUTS, at::TensorList schedule,
                                                bool keep_states) {
  const Inputs in = scan_inputs("scan_forward", PLSTM_KERNEL_INPUT_NAMES, schedule);
  const Dims& d = in.d();
  const auto acc_opts = in.f.q.options().dtype(acc_dtype(in.f.q.scalar_type()));
  const bool parallel = use_threads();
  const Plan plan = make_plan(d, in.s, parallel);
  const bool by_level = plan.bins == 0;
  at::Tensor states = (keep_states || by_level) ? empty_buffer({d.E, d.H, d.K, d.V}, acc_opts)
                                                : at::Tensor();
  at::Tensor ybuf = by_level ? empty_buffer({d.E, d.H, d.V}, acc_opts) : at::Tensor();
  at::Tensor out = at::empty({d.N, d.H, d.V}, in.f.q.options());
  PLSTM_DISPATCH_FLOATS(in.f.q.scalar_type(), "plstm_graph::scan_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto p = make_ptrs<scalar_t, acc_t>(in);
    p.C = data_or_null<acc_t>(states);
    p.Y = data_or_null<acc_t>(ybuf);
    p.out = out.data_ptr<scalar_t>();
    const auto K = kernels<scalar_t, acc_t>();
    if (by_level) {
      forward_by_level(K, p, in, /*readout=*/true, parallel);
    } else {
      forward_by_bin(K, p, plan, /*local_states=*/!keep_states);
    }
  });
  if (!keep_states) states = at::empty({0}, acc_opts);
  return {out, states};
}

InputGradTuple scan_backward(const at::Tensor& grad_out, PLSTM_KERNEL_INPUTS,
                             const c10::optional<at::Tensor>& states, at::TensorList schedule) {
  const Inputs in = scan_inputs("scan_backward", PLSTM_KERNEL_INPUT_NAMES, schedule);
  const Dims& d = in.d();
  const at::Tensor dy = check_grad_out("scan_backward", in.f, grad_out);
  at::Tensor C = check_states("scan_backward", in.f, states, d.E, /*required=*/false);
  const auto acc_opts = in.f.q.options().dtype(acc_dtype(in.f.q.scalar_type()));
  const bool recompute = !C.defined();
  const bool parallel = use_threads();
  const Plan plan = make_plan(d, in.s, parallel);
  const bool by_level = plan.bins == 0;
  at::Tensor G, W;
  if (by_level) {
    if (recompute) C = empty_buffer({d.E, d.H, d.K, d.V}, acc_opts);
    G = empty_buffer({d.E, d.H, d.K, d.V}, acc_opts);
    W = empty_buffer({d.E, d.H, 2 * d.K + d.V}, acc_opts);
  }
  const InputGrads grads(in.f);
  PLSTM_DISPATCH_FLOATS(in.f.q.scalar_type(), "plstm_graph::scan_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto p = make_ptrs<scalar_t, acc_t>(in);
    grads.bind(p, dy);
    p.C = data_or_null<acc_t>(C);
    p.G = data_or_null<acc_t>(G);
    p.W = data_or_null<acc_t>(W);
    const auto K = kernels<scalar_t, acc_t>();
    if (by_level) {
      if (recompute) forward_by_level(K, p, in, /*readout=*/false, parallel);
      backward_by_level(K, p, in, parallel);
    } else {
      backward_by_bin(K, p, plan, recompute);
    }
  });
  return grads.tuple();
}

}  // namespace cpu
}  // namespace plstm_graph

TORCH_LIBRARY_IMPL(plstm_graph, CPU, m) {
  m.impl("scan_forward", &plstm_graph::cpu::scan_forward);
  m.impl("scan_backward", &plstm_graph::cpu::scan_backward);
}
