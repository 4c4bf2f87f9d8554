// The part of every CPU kernel's pointer bundle that does not depend on the schedule: the seven
// float inputs, the output, grad_out and the seven input gradients, with the head sizes. The
// scan, the closed form and the node-level scan each extend it with their own index pointers
// and buffers.
#pragma once

#include <tuple>
#include <type_traits>

#include "../checks.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

namespace plstm_graph {
namespace cpu {

// `x[0:n]` as accumulation-type values: the pointer itself, or converted into `buf` (half
// types). Shared by the kernels of both instruction sets (it has no vector code of its own).
template <typename scalar_t, typename acc_t>
inline const acc_t* as_acc(const scalar_t* x, int64_t n, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return x;
  } else {
    for (int64_t j = 0; j < n; ++j) buf[j] = static_cast<acc_t>(x[j]);
    return buf;
  }
}

template <typename scalar_t>
struct FloatPtrs {
  const scalar_t *q, *k, *v, *S, *T, *M, *D, *dy;
  scalar_t *out, *dq, *dk, *dv, *dS, *dT, *dM, *dD;
  int64_t H, K, V;

  void bind_inputs(const Floats& f) {
    q = f.q.data_ptr<scalar_t>();
    k = f.k.data_ptr<scalar_t>();
    v = f.v.data_ptr<scalar_t>();
    S = f.source.data_ptr<scalar_t>();
    T = f.transition.data_ptr<scalar_t>();
    M = f.mark.data_ptr<scalar_t>();
    D = f.direct.data_ptr<scalar_t>();
    H = f.d.H;
    K = f.d.K;
    V = f.d.V;
  }
};

// The gradients of the seven inputs of one backward call. q, k and v get contiguous
// gradients even where the closed form reads them through a node stride.
struct InputGrads {
  at::Tensor dq, dk, dv, dS, dT, dM, dD;

  explicit InputGrads(const Floats& f)
      : dq(at::empty({f.d.N, f.d.H, f.d.K}, f.q.options())),
        dk(at::empty({f.d.N, f.d.H, f.d.K}, f.q.options())),
        dv(at::empty({f.d.N, f.d.H, f.d.V}, f.q.options())),
        dS(at::empty_like(f.source)),
        dT(at::empty_like(f.transition)),
        dM(at::empty_like(f.mark)),
        dD(at::empty_like(f.direct)) {}

  template <typename scalar_t>
  void bind(FloatPtrs<scalar_t>& p, const at::Tensor& grad_out) const {
    p.dy = grad_out.data_ptr<scalar_t>();
    p.dq = dq.data_ptr<scalar_t>();
    p.dk = dk.data_ptr<scalar_t>();
    p.dv = dv.data_ptr<scalar_t>();
    p.dS = dS.data_ptr<scalar_t>();
    p.dT = dT.data_ptr<scalar_t>();
    p.dM = dM.data_ptr<scalar_t>();
    p.dD = dD.data_ptr<scalar_t>();
  }

  InputGradTuple tuple() const {
    return {dq, dk, dv, dS, dT, dM, dD};
  }
};

}  // namespace cpu
}  // namespace plstm_graph
