// CUDA kernels of the node-level scan (docs/contract.md, "Node-level transitions": one
// transition T_n per shared node, no line graph). The same recurrence as the CPU kernels
// (cpu/node_scan_kernel.cpp), with the node state H_n = sum_{e into n} C_e and
// C_b = S_b k_u v_u^T + g_b T_u H_u for b = u -> w (g_b: the optional carry, else 1):
//
//   forward:  one launch per node level, a block per (node w of the level, head). Its threads
//             first build H_w element by element over the in-edges (coalesced [K, V] rows),
//             then one thread per value column reads out
//               y_w = sum_b M_b (S_b (q_w . k_u) v_u + g_b T_u H_u^T q_w) + D_w (q_w . k_w) v_w.
//   backward: one launch per level in reverse, a block per (node u, head) over its out-edges
//             b = u -> w, with F_n = sum_{b out of n} g_b dC_b and
//               dC_b = T_w F_w + M_b q_w dy_w^T.
//             Everything per edge comes from row and column products of F_w and H_u, so no
//             [K, V] gradient is ever stored per edge:
//               dS_b = T_w k_u^T F_w v_u + M_b (q_w . k_u)(dy_w . v_u)
//               dM_b = S_b (q_w . k_u)(v_u . dy_w) + g_b T_u q_w^T H_u dy_w
//               DQ_b = M_b (S_b (v_u . dy_w) k_u + g_b T_u H_u dy_w)   (edge b's share of dq_w)
//               dg_b = T_u (T_w <F_w, H_u> + M_b q_w^T H_u dy_w)
//               dk_u = sum_b S_b (T_w F_w v_u + M_b (dy_w . v_u) q_w)  (+ the direct term)
//               dv_u = sum_b S_b (T_w F_w^T k_u + M_b (q_w . k_u) dy_w)  (+ the direct term)
//             and after the edges F_u and dT_u = <F_u, H_u>. Then one launch over all nodes
//             for dq_w = sum_{b into w} DQ_b + D_w (v_w . dy_w) k_w and dD_w.
//
// Every output element is written by one thread, and every sum runs in a fixed order (edges
// in CSR order, block sums as a fixed tree): no atomics, bitwise reproducible run to run. The
// sums are grouped differently from the CPU kernels, so the two agree to rounding, not bit
// for bit. The host checks shapes, dtypes and every index value's range before a launch
// (checks.h, one device->host synchronisation); the CSR structure is the schedule builder's
// (plstm_graph.dag.build_node_schedule), as for the arc scan.
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
#include <tuple>

namespace plstm_graph {
namespace cuda {
namespace {

// The default dynamic shared memory a block may take without an opt-in.
constexpr size_t kSharedBytes = 48 * 1024;

template <typename scalar_t, typename acc_t>
struct NodeArgs {
  const scalar_t *q, *k, *v, *S, *T, *M, *D;
  const scalar_t* carry;  // [E, H] or nullptr
  const int64_t *edge_src, *edge_dst, *node_order, *in_ptr, *in_edge, *out_ptr, *out_edge;
  int64_t H;
  int K, V;

  __device__ acc_t g(int64_t eh) const {
    return carry ? static_cast<acc_t>(carry[eh]) : acc_t(1);
  }
};

template <typename acc_t, typename a_t, typename b_t>
__device__ acc_t dot(const a_t* a, const b_t* b, int n) {
  acc_t s = 0;
  for (int i = 0; i < n; ++i) s += static_cast<acc_t>(a[i]) * static_cast<acc_t>(b[i]);
  return s;
}

// Forward, one level: items = (nodes of the level) x H.
template <typename scalar_t, typename acc_t>
__global__ void node_forward_kernel(NodeArgs<scalar_t, acc_t> a, acc_t* __restrict__ Hs,
                                    scalar_t* __restrict__ out, int64_t lo, int64_t items) {
  const int64_t H = a.H;
  const int K = a.K, V = a.V, KV = K * V;
  for (int64_t it = blockIdx.x; it < items; it += gridDim.x) {
    const int64_t w = a.node_order[lo + it / H], h = it % H, wh = w * H + h;
    const int64_t j0 = a.in_ptr[w], j1 = a.in_ptr[w + 1];
    acc_t* Hw = Hs + wh * KV;
    for (int x = threadIdx.x; x < KV; x += blockDim.x) {
      const int i = x / V, c = x - i * V;
      acc_t acc = 0;
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t b = a.in_edge[j], u = a.edge_src[b], uh = u * H + h, bh = b * H + h;
        acc += static_cast<acc_t>(a.S[bh]) * static_cast<acc_t>(a.k[uh * K + i]) *
                   static_cast<acc_t>(a.v[uh * V + c]) +
               a.g(bh) * static_cast<acc_t>(a.T[uh]) * Hs[uh * KV + x];
      }
      Hw[x] = acc;
    }
    const scalar_t* qw = a.q + wh * K;
    for (int c = threadIdx.x; c < V; c += blockDim.x) {
      acc_t y = 0;
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t b = a.in_edge[j], u = a.edge_src[b], uh = u * H + h, bh = b * H + h;
        const acc_t qk = dot<acc_t>(qw, a.k + uh * K, K);
        const acc_t* Hu = Hs + uh * KV;
        acc_t qH = 0;
        for (int i = 0; i < K; ++i) qH += static_cast<acc_t>(qw[i]) * Hu[i * V + c];
        y += static_cast<acc_t>(a.M[bh]) *
             (static_cast<acc_t>(a.S[bh]) * qk * static_cast<acc_t>(a.v[uh * V + c]) +
              a.g(bh) * static_cast<acc_t>(a.T[uh]) * qH);
      }
      const acc_t direct = static_cast<acc_t>(a.D[wh]) * dot<acc_t>(qw, a.k + wh * K, K);
      out[wh * V + c] = static_cast<scalar_t>(y + direct * static_cast<acc_t>(a.v[wh * V + c]));
    }
  }
}

template <typename scalar_t>
struct NodeGrads {
  const scalar_t* dy;
  scalar_t *dk, *dv, *dS, *dT, *dM, *dcarry;
};

// Backward, one level in reverse: items = (nodes of the level) x H. Shared memory: the block
// sum's blockDim.x values, then F_w v_u and H_u dy_w [K] of the current edge and the dk [K]
// and dv [V] accumulators of the node.
template <typename scalar_t, typename acc_t>
__global__ void node_carry_grad_kernel(NodeArgs<scalar_t, acc_t> a, NodeGrads<scalar_t> gr,
                                       const acc_t* __restrict__ Hs, acc_t* __restrict__ F,
                                       acc_t* __restrict__ DQ, int64_t lo, int64_t items) {
  extern __shared__ __align__(sizeof(double)) unsigned char smem_raw[];
  const int64_t H = a.H;
  const int K = a.K, V = a.V, KV = K * V;
  acc_t* red = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* fv = red + blockDim.x;
  acc_t* hdy = fv + K;
  acc_t* dk = hdy + K;
  acc_t* dv = dk + K;
  for (int64_t it = blockIdx.x; it < items; it += gridDim.x) {
    const int64_t u = a.node_order[lo + it / H], h = it % H, uh = u * H + h;
    const int64_t j0 = a.out_ptr[u], j1 = a.out_ptr[u + 1];
    const scalar_t* ku = a.k + uh * K;
    const scalar_t* vu = a.v + uh * V;
    const acc_t* Hu = Hs + uh * KV;
    const acc_t tu = static_cast<acc_t>(a.T[uh]);
    for (int i = threadIdx.x; i < K; i += blockDim.x) dk[i] = 0;
    for (int c = threadIdx.x; c < V; c += blockDim.x) dv[c] = 0;
    __syncthreads();
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t b = a.out_edge[j], w = a.edge_dst[b], wh = w * H + h, bh = b * H + h;
      const scalar_t* qw = a.q + wh * K;
      const scalar_t* dyw = gr.dy + wh * V;
      const acc_t* Fw = F + wh * KV;
      const acc_t s = static_cast<acc_t>(a.S[bh]), m = static_cast<acc_t>(a.M[bh]);
      const acc_t tw = static_cast<acc_t>(a.T[wh]), g = a.g(bh);
      const acc_t qk = dot<acc_t>(qw, ku, K), dyv = dot<acc_t>(dyw, vu, V);
      for (int i = threadIdx.x; i < K; i += blockDim.x) {
        acc_t f = 0, e = 0;
        for (int c = 0; c < V; ++c) {
          f += Fw[i * V + c] * static_cast<acc_t>(vu[c]);
          e += Hu[i * V + c] * static_cast<acc_t>(dyw[c]);
        }
        fv[i] = f;
        hdy[i] = e;
        dk[i] += s * (tw * f + m * dyv * static_cast<acc_t>(qw[i]));
      }
      for (int c = threadIdx.x; c < V; c += blockDim.x) {
        acc_t f = 0;
        for (int i = 0; i < K; ++i) f += static_cast<acc_t>(ku[i]) * Fw[i * V + c];
        dv[c] += s * (tw * f + m * qk * static_cast<acc_t>(dyw[c]));
      }
      acc_t fh = 0;
      if (gr.dcarry != nullptr) {
        for (int x = threadIdx.x; x < KV; x += blockDim.x) fh += Fw[x] * Hu[x];
        fh = block_sum(fh, red);  // (synchronises the writes of fv and hdy as well)
      } else {
        __syncthreads();
      }
      if (threadIdx.x == 0) {
        acc_t kfv = 0, qhdy = 0;
        for (int i = 0; i < K; ++i) {
          kfv += static_cast<acc_t>(ku[i]) * fv[i];
          qhdy += static_cast<acc_t>(qw[i]) * hdy[i];
        }
        gr.dS[bh] = static_cast<scalar_t>(tw * kfv + m * qk * dyv);
        gr.dM[bh] = static_cast<scalar_t>(s * qk * dyv + g * tu * qhdy);
        if (gr.dcarry != nullptr) gr.dcarry[bh] = static_cast<scalar_t>(tu * (tw * fh + m * qhdy));
      }
      for (int i = threadIdx.x; i < K; i += blockDim.x) {
        DQ[bh * K + i] = m * (s * dyv * static_cast<acc_t>(ku[i]) + g * tu * hdy[i]);
      }
      __syncthreads();  // fv and hdy are rewritten by the next edge
    }
    // F_u and dT_u = <F_u, H_u>
    acc_t* Fu = F + uh * KV;
    acc_t part = 0;
    for (int x = threadIdx.x; x < KV; x += blockDim.x) {
      const int i = x / V, c = x - i * V;
      acc_t f = 0;
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t b = a.out_edge[j], w = a.edge_dst[b], wh = w * H + h, bh = b * H + h;
        f += a.g(bh) * (static_cast<acc_t>(a.T[wh]) * F[wh * KV + x] +
                        static_cast<acc_t>(a.M[bh]) * static_cast<acc_t>(a.q[wh * K + i]) *
                            static_cast<acc_t>(gr.dy[wh * V + c]));
      }
      Fu[x] = f;
      part += f * Hu[x];
    }
    part = block_sum(part, red);
    if (threadIdx.x == 0) gr.dT[uh] = static_cast<scalar_t>(part);
    // dk_u and dv_u with the direct term's shares D_u (v_u . dy_u) q_u and D_u (q_u . k_u) dy_u
    const scalar_t* qu = a.q + uh * K;
    const scalar_t* dyu = gr.dy + uh * V;
    const acc_t du = static_cast<acc_t>(a.D[uh]);
    const acc_t dvdy = du * dot<acc_t>(vu, dyu, V), dqk = du * dot<acc_t>(qu, ku, K);
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
      gr.dk[uh * K + i] = static_cast<scalar_t>(dk[i] + dvdy * static_cast<acc_t>(qu[i]));
    }
    for (int c = threadIdx.x; c < V; c += blockDim.x) {
      gr.dv[uh * V + c] = static_cast<scalar_t>(dv[c] + dqk * static_cast<acc_t>(dyu[c]));
    }
    __syncthreads();  // dk and dv are cleared by the next item
  }
}

// dq_w = sum_{b into w} DQ_b + D_w (v_w . dy_w) k_w and dD_w = (q_w . k_w)(v_w . dy_w);
// threadIdx.y picks the (node, head) item.
template <typename scalar_t, typename acc_t>
__global__ void node_readout_grad_kernel(NodeArgs<scalar_t, acc_t> a,
                                         const scalar_t* __restrict__ dy,
                                         const acc_t* __restrict__ DQ, scalar_t* __restrict__ dq,
                                         scalar_t* __restrict__ dD, int64_t items) {
  const int64_t H = a.H;
  const int K = a.K, V = a.V;
  for (int64_t it = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; it < items;
       it += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t w = it / H, h = it % H;
    const scalar_t* kw = a.k + it * K;
    const acc_t vdy = dot<acc_t>(a.v + it * V, dy + it * V, V);
    if (threadIdx.x == 0) dD[it] = static_cast<scalar_t>(dot<acc_t>(a.q + it * K, kw, K) * vdy);
    const acc_t dvdy = static_cast<acc_t>(a.D[it]) * vdy;
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
      acc_t s = 0;
      for (int64_t j = a.in_ptr[w]; j < a.in_ptr[w + 1]; ++j) {
        s += DQ[(a.in_edge[j] * H + h) * K + i];
      }
      dq[it * K + i] = static_cast<scalar_t>(s + dvdy * static_cast<acc_t>(kw[i]));
    }
  }
}

// The shared checks (checks.h), then the limit of the kernels' int indices.
NodeInputs node_inputs(const char* op, PLSTM_KERNEL_INPUTS,
                       const c10::optional<at::Tensor>& carry, at::TensorList schedule) {
  NodeInputs in = check_node_inputs(op, PLSTM_KERNEL_INPUT_NAMES, carry, schedule,
                                    c10::DeviceType::CUDA, "CUDA");
  TORCH_CHECK_VALUE(in.f.d.K * in.f.d.V < INT_MAX, op, ": K * V is too large");
  return in;
}

template <typename scalar_t, typename acc_t>
NodeArgs<scalar_t, acc_t> node_args(const NodeInputs& in) {
  const Floats& f = in.f;
  const NodeSchedule& s = in.s;
  return {cptr<scalar_t>(f.q), cptr<scalar_t>(f.k), cptr<scalar_t>(f.v),
          cptr<scalar_t>(f.source), cptr<scalar_t>(f.transition), cptr<scalar_t>(f.mark),
          cptr<scalar_t>(f.direct),
          in.carry.defined() ? cptr<scalar_t>(in.carry) : nullptr,
          iptr(s.edge_src), iptr(s.edge_dst), iptr(s.node_order), iptr(s.in_ptr),
          iptr(s.in_edge), iptr(s.out_ptr), iptr(s.out_edge), f.d.H,
          static_cast<int>(f.d.K), static_cast<int>(f.d.V)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> node_scan_forward(PLSTM_KERNEL_INPUTS,
                                                     const c10::optional<at::Tensor>& carry,
                                                     at::TensorList schedule) {
  const NodeInputs in =
      node_inputs("node_scan_forward", PLSTM_KERNEL_INPUT_NAMES, carry, schedule);
  const c10::cuda::CUDAGuard guard(in.f.q.device());
  const Dims& d = in.f.d;
  const auto acc_opts = in.f.q.options().dtype(acc_dtype(in.f.q.scalar_type()));
  at::Tensor states = at::empty({d.N, d.H, d.K, d.V}, acc_opts);
  at::Tensor out = at::empty({d.N, d.H, d.V}, in.f.q.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  PLSTM_DISPATCH_FLOATS(in.f.q.scalar_type(), "plstm_graph::node_scan_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto args = node_args<scalar_t, acc_t>(in);
    const int threads = pow2_threads(std::max(d.K * d.V, d.V));
    const int64_t* lp = iptr(in.s.node_level_ptr);
    for (int64_t l = 0; l < in.s.levels; ++l) {
      const int64_t items = (lp[l + 1] - lp[l]) * d.H;
      if (items == 0) continue;
      node_forward_kernel<scalar_t, acc_t><<<grid_for(items), threads, 0, stream>>>(
          args, states.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), lp[l], items);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  const c10::cuda::CUDAGuard guard(in.f.q.device());
  const Floats& f = in.f;
  const Dims& d = f.d;
  const at::Tensor dy = check_grad_out("node_scan_backward", f, grad_out);
  const at::Tensor Hs = check_states("node_scan_backward", f, states, d.N, /*required=*/true);
  const auto acc_opts = f.q.options().dtype(acc_dtype(f.q.scalar_type()));
  at::Tensor F = at::empty({d.N, d.H, d.K, d.V}, acc_opts);
  at::Tensor DQ = at::empty({d.E, d.H, d.K}, acc_opts);
  at::Tensor dq = at::empty_like(f.q), dk = at::empty_like(f.k), dv = at::empty_like(f.v);
  at::Tensor dS = at::empty_like(f.source), dT = at::empty_like(f.transition),
             dM = at::empty_like(f.mark), dD = at::empty_like(f.direct);
  // (no carry: an empty gradient, which the autograd wrapper drops)
  at::Tensor dcarry =
      in.carry.defined() ? at::empty_like(in.carry) : at::empty({0}, f.q.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  PLSTM_DISPATCH_FLOATS(f.q.scalar_type(), "plstm_graph::node_scan_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto args = node_args<scalar_t, acc_t>(in);
    const NodeGrads<scalar_t> grads{
        dy.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(),
        dS.data_ptr<scalar_t>(), dT.data_ptr<scalar_t>(), dM.data_ptr<scalar_t>(),
        in.carry.defined() ? dcarry.data_ptr<scalar_t>() : nullptr};
    const int threads = pow2_threads(std::max({d.K * d.V, d.K, d.V}));
    const size_t shared = (threads + 3 * d.K + d.V) * sizeof(acc_t);
    TORCH_CHECK_VALUE(shared <= kSharedBytes, "node_scan_backward (CUDA kernel): K = ", d.K,
                      " and V = ", d.V, " need ", shared, " bytes of shared memory per block, "
                      "more than ", kSharedBytes, "; use smaller heads or backend='torch'");
    const int64_t* lp = iptr(in.s.node_level_ptr);
    for (int64_t l = in.s.levels - 1; l >= 0; --l) {
      const int64_t items = (lp[l + 1] - lp[l]) * d.H;
      if (items == 0) continue;
      node_carry_grad_kernel<scalar_t, acc_t><<<grid_for(items), threads, shared, stream>>>(
          args, grads, Hs.data_ptr<acc_t>(), F.data_ptr<acc_t>(), DQ.data_ptr<acc_t>(), lp[l],
          items);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const int64_t items = d.N * d.H;
    if (items > 0) {
      const int lanes = pow2_threads(d.K, 128);
      const dim3 block(lanes, 128 / lanes);
      const int64_t blocks = (items + block.y - 1) / block.y;
      node_readout_grad_kernel<scalar_t, acc_t><<<grid_for(blocks), block, 0, stream>>>(
          args, dy.data_ptr<scalar_t>(), DQ.data_ptr<acc_t>(), dq.data_ptr<scalar_t>(),
          dD.data_ptr<scalar_t>(), items);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {dq, dk, dv, dS, dT, dM, dD, dcarry};
}

}  // namespace cuda
}  // namespace plstm_graph

TORCH_LIBRARY_IMPL(plstm_graph, CUDA, m) {
  m.impl("node_scan_forward", &plstm_graph::cuda::node_scan_forward);
  m.impl("node_scan_backward", &plstm_graph::cuda::node_scan_backward);
}
