// CUDA kernels of the plstm_graph state scan.
//
// Same algorithm as the CPU kernels (see cpu/scan_kernel.cpp), laid out for the GPU:
//   forward:  one launch per level; a block per (edge of the level, head), its threads spread
//             over the K*V state elements (coalesced: states are [E, H, K, V] row-major).
//             Then one readout launch: a row of threads per (node, head), one per value
//             column, summing the node's in-edges in CSR order and adding the direct term.
//   backward: one launch per level in reverse for the state gradients G; then one launch for
//             the per-edge gradients (dS, dM and the per-edge pieces of dq/dk/dv), one for dT
//             per arc, and one per-node reduction for dq/dk/dv (with the direct term's shares)
//             that also writes dD.
// Every output element is produced by one thread (or one block with a fixed-shape tree
// reduction), in a fixed order: no atomics, bitwise reproducible.
//
// Only c10/cuda headers are used (ATen/cuda/CUDAContext.h pulls in cuBLAS/cuSPARSE headers).
// The host validates shapes and dtypes and checks every index value against its range before
// any launch (checks.h: one device->host synchronisation per op), so a bad index raises a
// ValueError instead of faulting the device. Edges by tail node come with the schedule.
#include "../checks.h"
#include "launch.cuh"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>

namespace plstm_graph {

int64_t cuda_runtime_version() { return CUDART_VERSION; }

namespace cuda {
namespace {

// One level of either line-graph recurrence, per (edge e, head):
//   X_e = g_e a_n b_n^T + sum_{arcs r of e} T_r X_{other(r)}.
// Forward:  X = C, g = S, (a, b) = (k, v) at n = src e, the arcs into e, other = arc_src.
// Backward: X = G, g = M, (a, b) = (q, dy) at n = dst e, the arcs out of e, other = arc_dst.
template <typename scalar_t, typename acc_t>
__global__ void level_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                             const scalar_t* __restrict__ g, const scalar_t* __restrict__ T,
                             const int64_t* __restrict__ edge_node,
                             const int64_t* __restrict__ edge_order,
                             const int64_t* __restrict__ arc_ptr,
                             const int64_t* __restrict__ arc_list,
                             const int64_t* __restrict__ arc_other, acc_t* X, int64_t lo,
                             int64_t items, int64_t H, int K, int V) {
  const int KV = K * V;
  for (int64_t it = blockIdx.x; it < items; it += gridDim.x) {
    const int64_t e = edge_order[lo + it / H], h = it % H;
    const int64_t eh = e * H + h, n = edge_node[e];
    const acc_t ge = static_cast<acc_t>(g[eh]);
    const scalar_t* an = a + (n * H + h) * K;
    const scalar_t* bn = b + (n * H + h) * V;
    const int64_t j0 = arc_ptr[e], j1 = arc_ptr[e + 1];
    acc_t* Xe = X + eh * KV;
    for (int x = threadIdx.x; x < KV; x += blockDim.x) {
      const int i = x / V, j = x - i * V;
      acc_t c = (ge * static_cast<acc_t>(an[i])) * static_cast<acc_t>(bn[j]);
      for (int64_t jj = j0; jj < j1; ++jj) {
        const int64_t r = arc_list[jj];
        c += static_cast<acc_t>(T[r * H + h]) * X[(arc_other[r] * H + h) * KV + x];
      }
      Xe[x] = c;
    }
  }
}

// out[n, h, j] = sum_{e into n} sum_i (M_e q_{n,i}) C_e[i, j]; threadIdx.y picks the item.
// Plus the direct term D_n (q_n . k_n) v_n[j].
template <typename scalar_t, typename acc_t>
__global__ void readout_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                               const scalar_t* __restrict__ v, const scalar_t* __restrict__ M,
                               const scalar_t* __restrict__ D,
                               const acc_t* __restrict__ C, const int64_t* __restrict__ node_ptr,
                               const int64_t* __restrict__ node_edge, scalar_t* __restrict__ out,
                               int64_t items, int64_t H, int K, int V) {
  const int KV = K * V;
  for (int64_t it = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; it < items;
       it += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t n = it / H, h = it % H;
    const scalar_t* qn = q + it * K;
    acc_t dqk = 0;
    for (int i = 0; i < K; ++i) dqk += static_cast<acc_t>(qn[i]) * static_cast<acc_t>(k[it * K + i]);
    dqk *= static_cast<acc_t>(D[it]);
    const int64_t p0 = node_ptr[n], p1 = node_ptr[n + 1];
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
      acc_t acc = 0;
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t e = node_edge[p];
        const acc_t m = static_cast<acc_t>(M[e * H + h]);
        const acc_t* Ce = C + (e * H + h) * KV;
        acc_t y = 0;
        for (int i = 0; i < K; ++i) y += (m * static_cast<acc_t>(qn[i])) * Ce[i * V + j];
        acc += y;
      }
      out[it * V + j] = static_cast<scalar_t>(acc + dqk * static_cast<acc_t>(v[it * V + j]));
    }
  }
}

// Per (edge, head): dS = k^T G v, dM = q^T C dy and W = [M C dy | S G v | S G^T k].
template <typename scalar_t, typename acc_t>
__global__ void edge_grad_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                 const scalar_t* __restrict__ v, const scalar_t* __restrict__ dy,
                                 const scalar_t* __restrict__ S, const scalar_t* __restrict__ M,
                                 const int64_t* __restrict__ edge_src,
                                 const int64_t* __restrict__ edge_dst,
                                 const acc_t* __restrict__ C, const acc_t* __restrict__ G,
                                 acc_t* __restrict__ W, scalar_t* __restrict__ dS,
                                 scalar_t* __restrict__ dM, int64_t items, int64_t H, int K,
                                 int V) {
  extern __shared__ __align__(sizeof(double)) unsigned char smem_raw[];
  acc_t* sh = reinterpret_cast<acc_t*>(smem_raw);
  const int KV = K * V, width = 2 * K + V;
  for (int64_t it = blockIdx.x; it < items; it += gridDim.x) {
    const int64_t e = it / H, h = it % H;
    const int64_t u = edge_src[e], w = edge_dst[e];
    const acc_t s = static_cast<acc_t>(S[it]), m = static_cast<acc_t>(M[it]);
    const scalar_t* qw = q + (w * H + h) * K;
    const scalar_t* dyw = dy + (w * H + h) * V;
    const scalar_t* ku = k + (u * H + h) * K;
    const scalar_t* vu = v + (u * H + h) * V;
    const acc_t* Ge = G + it * KV;
    const acc_t* Ce = C + it * KV;
    acc_t* wq = W + it * width;
    acc_t* wk = wq + K;
    acc_t* wv = wk + K;
    acc_t ds = 0, dm = 0;
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
      acc_t gv = 0, cdy = 0;
      for (int j = 0; j < V; ++j) {
        gv += Ge[i * V + j] * static_cast<acc_t>(vu[j]);
        cdy += Ce[i * V + j] * static_cast<acc_t>(dyw[j]);
      }
      ds += static_cast<acc_t>(ku[i]) * gv;
      dm += static_cast<acc_t>(qw[i]) * cdy;
      wk[i] = s * gv;
      wq[i] = m * cdy;
    }
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
      acc_t gk = 0;
      for (int i = 0; i < K; ++i) gk += (s * static_cast<acc_t>(ku[i])) * Ge[i * V + j];
      wv[j] = gk;
    }
    ds = block_sum(ds, sh);
    dm = block_sum(dm, sh);
    if (threadIdx.x == 0) {
      dS[it] = static_cast<scalar_t>(ds);
      dM[it] = static_cast<scalar_t>(dm);
    }
  }
}

// dT[a, h] = <G_{dst a}, C_{src a}>
template <typename scalar_t, typename acc_t>
__global__ void arc_grad_kernel(const int64_t* __restrict__ arc_src,
                                const int64_t* __restrict__ arc_dst, const acc_t* __restrict__ C,
                                const acc_t* __restrict__ G, scalar_t* __restrict__ dT,
                                int64_t items, int64_t H, int KV) {
  extern __shared__ __align__(sizeof(double)) unsigned char smem_raw[];
  acc_t* sh = reinterpret_cast<acc_t*>(smem_raw);
  for (int64_t it = blockIdx.x; it < items; it += gridDim.x) {
    const int64_t a = it / H, h = it % H;
    const acc_t* Gb = G + (arc_dst[a] * H + h) * KV;
    const acc_t* Ca = C + (arc_src[a] * H + h) * KV;
    acc_t part = 0;
    for (int x = threadIdx.x; x < KV; x += blockDim.x) part += Gb[x] * Ca[x];
    part = block_sum(part, sh);
    if (threadIdx.x == 0) dT[it] = static_cast<scalar_t>(part);
  }
}

// dq by head node, dk and dv by tail node: sums of the per-edge pieces in CSR order, plus the
// shares of the direct term D_n (q_n . k_n) v_n; thread 0 writes dD_n = (q_n . k_n)(v_n . dy_n).
template <typename scalar_t, typename acc_t>
__global__ void node_grad_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                 const scalar_t* __restrict__ v, const scalar_t* __restrict__ dy,
                                 const scalar_t* __restrict__ D, const acc_t* __restrict__ W,
                                 const int64_t* __restrict__ node_ptr,
                                 const int64_t* __restrict__ node_edge,
                                 const int64_t* __restrict__ src_ptr,
                                 const int64_t* __restrict__ src_edge,
                                 scalar_t* __restrict__ dq, scalar_t* __restrict__ dk,
                                 scalar_t* __restrict__ dv, scalar_t* __restrict__ dD,
                                 int64_t items, int64_t H, int K, int V) {
  const int width = 2 * K + V;
  for (int64_t it = blockIdx.x; it < items; it += gridDim.x) {
    const int64_t n = it / H, h = it % H;
    acc_t qk = 0, vdy = 0;
    for (int i = 0; i < K; ++i) qk += static_cast<acc_t>(q[it * K + i]) * static_cast<acc_t>(k[it * K + i]);
    for (int j = 0; j < V; ++j) vdy += static_cast<acc_t>(v[it * V + j]) * static_cast<acc_t>(dy[it * V + j]);
    const acc_t dn = static_cast<acc_t>(D[it]);
    if (threadIdx.x == 0) dD[it] = static_cast<scalar_t>(qk * vdy);
    for (int x = threadIdx.x; x < width; x += blockDim.x) {
      const bool by_dst = x < K;
      const int64_t* ptr = by_dst ? node_ptr : src_ptr;
      const int64_t* members = by_dst ? node_edge : src_edge;
      acc_t acc = 0;
      for (int64_t p = ptr[n]; p < ptr[n + 1]; ++p) acc += W[(members[p] * H + h) * width + x];
      if (by_dst) {
        acc += dn * vdy * static_cast<acc_t>(k[it * K + x]);
        dq[it * K + x] = static_cast<scalar_t>(acc);
      } else if (x < 2 * K) {
        acc += dn * vdy * static_cast<acc_t>(q[it * K + x - K]);
        dk[it * K + x - K] = static_cast<scalar_t>(acc);
      } else {
        acc += dn * qk * static_cast<acc_t>(dy[it * V + x - 2 * K]);
        dv[it * V + x - 2 * K] = static_cast<scalar_t>(acc);
      }
    }
  }
}


// The op's arguments after the checks (checks.h): contiguous inputs, the unpacked schedule
// with every index value range-checked on the device.
struct Inputs {
  Floats f;
  DagSchedule s;
};

Inputs scan_inputs(const char* op, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor& source, const at::Tensor& transition,
                   const at::Tensor& mark, const at::Tensor& direct, at::TensorList schedule) {
  Inputs in{check_floats(op, q, k, v, source, transition, mark, direct,
                         /*node_level_transition=*/false, /*keep_node_stride=*/false),
            {}};
  TORCH_CHECK_VALUE(in.f.q.is_cuda(), op, " (CUDA kernel): query is on ", in.f.q.device());
  TORCH_CHECK_VALUE(in.f.d.K * in.f.d.V < INT_MAX && 2 * in.f.d.K + in.f.d.V < INT_MAX, op,
                    ": K * V is too large");
  const c10::cuda::CUDAGuard guard(in.f.q.device());
  in.s = unpack_dag_schedule(op, schedule, in.f.d, in.f.q.device());
  return in;
}

template <typename scalar_t, typename acc_t>
void run_states(const Inputs& in, acc_t* C, cudaStream_t stream) {
  const Dims& d = in.f.d;
  const int threads = pow2_threads(d.K * d.V);
  const int64_t* lp = iptr(in.s.level_ptr);
  for (int64_t l = 0; l < in.s.levels; ++l) {
    const int64_t items = (lp[l + 1] - lp[l]) * d.H;
    if (items == 0) continue;
    level_kernel<scalar_t, acc_t><<<grid_for(items), threads, 0, stream>>>(
        cptr<scalar_t>(in.f.k), cptr<scalar_t>(in.f.v), cptr<scalar_t>(in.f.source),
        cptr<scalar_t>(in.f.transition), iptr(in.s.edge_src), iptr(in.s.edge_order),
        iptr(in.s.in_ptr), iptr(in.s.in_arc), iptr(in.s.arc_src), C, lp[l], items, d.H,
        static_cast<int>(d.K), static_cast<int>(d.V));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> scan_forward(PLSTM_KERNEL_INPUTS, at::TensorList schedule,
                                                bool keep_states) {
  const Inputs in = scan_inputs("scan_forward", PLSTM_KERNEL_INPUT_NAMES, schedule);
  const c10::cuda::CUDAGuard guard(in.f.q.device());
  const Dims& d = in.f.d;
  const auto acc_opts = in.f.q.options().dtype(acc_dtype(in.f.q.scalar_type()));
  at::Tensor states = at::empty({d.E, d.H, d.K, d.V}, acc_opts);
  at::Tensor out = at::empty({d.N, d.H, d.V}, in.f.q.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  PLSTM_DISPATCH_FLOATS(in.f.q.scalar_type(), "plstm_graph::scan_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    run_states<scalar_t, acc_t>(in, states.data_ptr<acc_t>(), stream);
    const int64_t items = d.N * d.H;
    if (items > 0 && d.V > 0) {
      const int lanes = pow2_threads(d.V, 128);
      const dim3 block(lanes, 128 / lanes);
      const int64_t blocks = (items + block.y - 1) / block.y;
      readout_kernel<scalar_t, acc_t><<<grid_for(blocks), block, 0, stream>>>(
          cptr<scalar_t>(in.f.q), cptr<scalar_t>(in.f.k), cptr<scalar_t>(in.f.v),
          cptr<scalar_t>(in.f.mark), cptr<scalar_t>(in.f.direct), states.data_ptr<acc_t>(),
          iptr(in.s.node_ptr), iptr(in.s.node_edge), out.data_ptr<scalar_t>(), items, d.H,
          static_cast<int>(d.K), static_cast<int>(d.V));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else if (items > 0) {
      out.zero_();
    }
  });
  if (!keep_states) states = at::empty({0}, acc_opts);
  return {out, states};
}

InputGradTuple scan_backward(const at::Tensor& grad_out, PLSTM_KERNEL_INPUTS,
                             const c10::optional<at::Tensor>& states, at::TensorList schedule) {
  const Inputs in = scan_inputs("scan_backward", PLSTM_KERNEL_INPUT_NAMES, schedule);
  const c10::cuda::CUDAGuard guard(in.f.q.device());
  const Floats& f = in.f;
  const Dims& d = f.d;
  const at::Tensor dy = check_grad_out("scan_backward", f, grad_out);
  at::Tensor C = check_states("scan_backward", f, states, d.E, /*required=*/false);
  const auto acc_opts = f.q.options().dtype(acc_dtype(f.q.scalar_type()));
  const bool recompute = !C.defined();
  if (recompute) C = at::empty({d.E, d.H, d.K, d.V}, acc_opts);
  at::Tensor G = at::empty({d.E, d.H, d.K, d.V}, acc_opts);
  at::Tensor W = at::empty({d.E, d.H, 2 * d.K + d.V}, acc_opts);
  at::Tensor dq = at::empty_like(f.q), dk = at::empty_like(f.k), dv = at::empty_like(f.v);
  at::Tensor dS = at::empty_like(f.source), dT = at::empty_like(f.transition),
             dM = at::empty_like(f.mark), dD = at::empty_like(f.direct);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int K = static_cast<int>(d.K), V = static_cast<int>(d.V);
  PLSTM_DISPATCH_FLOATS(f.q.scalar_type(), "plstm_graph::scan_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* Cp = C.data_ptr<acc_t>();
    acc_t* Gp = G.data_ptr<acc_t>();
    if (recompute) run_states<scalar_t, acc_t>(in, Cp, stream);
    const int threads = pow2_threads(d.K * d.V);
    const int64_t* lp = iptr(in.s.level_ptr);
    for (int64_t l = in.s.levels - 1; l >= 0; --l) {
      const int64_t items = (lp[l + 1] - lp[l]) * d.H;
      if (items == 0) continue;
      level_kernel<scalar_t, acc_t><<<grid_for(items), threads, 0, stream>>>(
          cptr<scalar_t>(f.q), cptr<scalar_t>(dy), cptr<scalar_t>(f.mark),
          cptr<scalar_t>(f.transition), iptr(in.s.edge_dst), iptr(in.s.edge_order),
          iptr(in.s.out_ptr), iptr(in.s.out_arc), iptr(in.s.arc_dst), Gp, lp[l], items, d.H, K,
          V);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const int64_t edge_items = d.E * d.H;
    if (edge_items > 0) {
      const int t = pow2_threads(std::max(d.K, d.V), 128);
      edge_grad_kernel<scalar_t, acc_t><<<grid_for(edge_items), t, t * sizeof(acc_t), stream>>>(
          cptr<scalar_t>(f.q), cptr<scalar_t>(f.k), cptr<scalar_t>(f.v), cptr<scalar_t>(dy),
          cptr<scalar_t>(f.source), cptr<scalar_t>(f.mark), iptr(in.s.edge_src),
          iptr(in.s.edge_dst), Cp, Gp, W.data_ptr<acc_t>(), dS.data_ptr<scalar_t>(),
          dM.data_ptr<scalar_t>(), edge_items, d.H, K, V);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const int64_t arc_items = d.L * d.H;
    if (arc_items > 0) {
      const int t = pow2_threads(d.K * d.V);
      arc_grad_kernel<scalar_t, acc_t><<<grid_for(arc_items), t, t * sizeof(acc_t), stream>>>(
          iptr(in.s.arc_src), iptr(in.s.arc_dst), Cp, Gp, dT.data_ptr<scalar_t>(), arc_items,
          d.H, K * V);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const int64_t node_items = d.N * d.H;
    if (node_items > 0) {
      const int t = pow2_threads(2 * d.K + d.V, 128);
      node_grad_kernel<scalar_t, acc_t><<<grid_for(node_items), t, 0, stream>>>(
          cptr<scalar_t>(f.q), cptr<scalar_t>(f.k), cptr<scalar_t>(f.v), cptr<scalar_t>(dy),
          cptr<scalar_t>(f.direct), W.data_ptr<acc_t>(), iptr(in.s.node_ptr),
          iptr(in.s.node_edge), iptr(in.s.src_ptr), iptr(in.s.src_edge),
          dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(),
          dD.data_ptr<scalar_t>(), node_items, d.H, K, V);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {dq, dk, dv, dS, dT, dM, dD};
}

}  // namespace cuda
}  // namespace plstm_graph

TORCH_LIBRARY_IMPL(plstm_graph, CUDA, m) {
  m.impl("scan_forward", &plstm_graph::cuda::scan_forward);
  m.impl("scan_backward", &plstm_graph::cuda::scan_backward);
}
