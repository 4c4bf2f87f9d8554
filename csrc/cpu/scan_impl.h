// The work items of the CPU scan, compiled once per instruction set.
//
// scan_kernel.cpp compiles this file twice through isa_variants.h, with PLSTM_ISA (a
// namespace) and PLSTM_TARGET (a function attribute) set for the baseline ISA and for
// AVX2+FMA; the op picks one at run time. It has no include guard on purpose and relies on the includes, Ptrs, Plan
// and the constants of scan_kernel.cpp. Only functions defined here carry the target
// attribute, so nothing shared with other translation units is compiled for AVX2.
// NOLINT(build/header_guard)

namespace PLSTM_ISA {

// sum_x a[x] * b[x] with `lanes` independent partial sums, added up in a fixed tree: the
// compiler can vectorise it without reassociating anything, so it is deterministic.
template <int lanes, typename acc_t, typename b_t>
PLSTM_TARGET inline acc_t dot(const acc_t* __restrict__ a, const b_t* __restrict__ b,
                              int64_t n) {
  acc_t part[lanes] = {};
  int64_t x = 0;
  for (; x + lanes <= n; x += lanes) {
    for (int r = 0; r < lanes; ++r) part[r] += a[x + r] * static_cast<acc_t>(b[x + r]);
  }
  for (int r = 0; x < n; ++x, ++r) part[r] += a[x] * static_cast<acc_t>(b[x]);
  for (int w = lanes / 2; w > 0; w /= 2) {
    for (int r = 0; r < w; ++r) part[r] += part[r + w];
  }
  return part[0];
}

// out[i] = <A[i, :], x> for the rows of a row-major K x V matrix. For float on x86, four
// rows at a time: their four partial-sum vectors are transposed and added at the end (one
// horizontal step for four rows instead of one per row). Fixed order: deterministic.
template <typename acc_t>
PLSTM_TARGET inline void row_dots(const acc_t* __restrict__ A, const acc_t* __restrict__ x,
                                  int64_t K, int64_t V, acc_t* __restrict__ out) {
  int64_t i = 0;
#if defined(__SSE2__)
  if constexpr (std::is_same_v<acc_t, float>) {
    for (; i + 4 <= K; i += 4) {
      const float* r0 = A + i * V;
      const float* r1 = r0 + V;
      const float* r2 = r1 + V;
      const float* r3 = r2 + V;
      __m128 a0 = _mm_setzero_ps(), a1 = _mm_setzero_ps(), a2 = _mm_setzero_ps(),
             a3 = _mm_setzero_ps();
      int64_t j = 0;
      for (; j + 4 <= V; j += 4) {
        const __m128 xv = _mm_loadu_ps(x + j);
        a0 = _mm_add_ps(a0, _mm_mul_ps(_mm_loadu_ps(r0 + j), xv));
        a1 = _mm_add_ps(a1, _mm_mul_ps(_mm_loadu_ps(r1 + j), xv));
        a2 = _mm_add_ps(a2, _mm_mul_ps(_mm_loadu_ps(r2 + j), xv));
        a3 = _mm_add_ps(a3, _mm_mul_ps(_mm_loadu_ps(r3 + j), xv));
      }
      _MM_TRANSPOSE4_PS(a0, a1, a2, a3);
      __m128 sum = _mm_add_ps(_mm_add_ps(a0, a1), _mm_add_ps(a2, a3));
      if (j < V) {
        float tail[4] = {0.f, 0.f, 0.f, 0.f};
        for (; j < V; ++j) {
          tail[0] += r0[j] * x[j];
          tail[1] += r1[j] * x[j];
          tail[2] += r2[j] * x[j];
          tail[3] += r3[j] * x[j];
        }
        sum = _mm_add_ps(sum, _mm_loadu_ps(tail));
      }
      _mm_storeu_ps(out + i, sum);
    }
  }
#endif
  for (; i < K; ++i) out[i] = dot<kRowLanes>(A + i * V, x, V);
}

// Per-thread scratch for one work item (a few vectors of length K or V).
template <typename acc_t, int which>
inline acc_t* item_scratch(int64_t n) {
  thread_local std::vector<acc_t> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

// y += t * x and return <x, c>, in one pass over x.
template <typename acc_t>
PLSTM_TARGET inline acc_t axpy_dot(acc_t* __restrict__ y, acc_t t, const acc_t* __restrict__ x,
                                   const acc_t* __restrict__ c, int64_t n) {
  acc_t part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int r = 0; r < kLanes; ++r) {
      const acc_t xv = x[i + r];
      part[r] += xv * c[i + r];
      y[i + r] += t * xv;
    }
  }
  for (int r = 0; i < n; ++i, ++r) {
    part[r] += x[i] * c[i];
    y[i] += t * x[i];
  }
  for (int w = kLanes / 2; w > 0; w /= 2) {
    for (int r = 0; r < w; ++r) part[r] += part[r + w];
  }
  return part[0];
}

// Forward item: state C_e (head h) and, if `readout`, y_e = M_e C_e^T q_{dst e} into Y.
template <typename scalar_t, typename acc_t>
PLSTM_TARGET inline void state_item(const Ptrs<scalar_t, acc_t>& p, int64_t e, int64_t h,
                                    bool readout) {
  const int64_t H = p.H, K = p.K, V = p.V, KV = p.KV;
  const int64_t eh = e * H + h;
  const int64_t u = p.edge_src[e];
  acc_t* __restrict__ Ce = p.C + (p.crow(e) * H + h) * KV;
  const scalar_t* __restrict__ ku = p.k + (u * H + h) * K;
  const scalar_t* __restrict__ vu = p.v + (u * H + h) * V;
  const acc_t s = static_cast<acc_t>(p.S[eh]);
  int64_t j0 = p.in_ptr[e];
  const int64_t j1 = p.in_ptr[e + 1];
  if (j0 == j1) {
    for (int64_t i = 0; i < K; ++i) {
      const acc_t c = s * static_cast<acc_t>(ku[i]);
      acc_t* __restrict__ row = Ce + i * V;
      for (int64_t j = 0; j < V; ++j) row[j] = c * static_cast<acc_t>(vu[j]);
    }
  } else {  // source term fused with the first in-arc
    const int64_t a = p.in_arc[j0++];
    const acc_t t = static_cast<acc_t>(p.T[a * H + h]);
    const acc_t* __restrict__ Ca = p.C + (p.crow(p.arc_src[a]) * H + h) * KV;
    for (int64_t i = 0; i < K; ++i) {
      const acc_t c = s * static_cast<acc_t>(ku[i]);
      acc_t* __restrict__ row = Ce + i * V;
      const acc_t* __restrict__ arow = Ca + i * V;
      for (int64_t j = 0; j < V; ++j) row[j] = c * static_cast<acc_t>(vu[j]) + t * arow[j];
    }
    for (; j0 < j1; ++j0) {
      const int64_t b = p.in_arc[j0];
      const acc_t tb = static_cast<acc_t>(p.T[b * H + h]);
      const acc_t* __restrict__ Cb = p.C + (p.crow(p.arc_src[b]) * H + h) * KV;
      for (int64_t x = 0; x < KV; ++x) Ce[x] += tb * Cb[x];
    }
  }
  if (readout) {
    const int64_t w = p.edge_dst[e];
    const scalar_t* __restrict__ qw = p.q + (w * H + h) * K;
    const acc_t m = static_cast<acc_t>(p.M[eh]);
    acc_t* __restrict__ y = p.Y + (p.wrow(e) * H + h) * V;
    for (int64_t j = 0; j < V; ++j) y[j] = 0;
    for (int64_t i = 0; i < K; ++i) {
      const acc_t c = m * static_cast<acc_t>(qw[i]);
      const acc_t* __restrict__ row = Ce + i * V;
      for (int64_t j = 0; j < V; ++j) y[j] += c * row[j];
    }
  }
}

// Backward item: G_e (head h), dT of its out-arcs, dS_e, dM_e and the per-edge pieces
// W_e = [M_e C_e dy_w (K) | S_e G_e v_u (K) | S_e G_e^T k_u (V)].
template <typename scalar_t, typename acc_t>
PLSTM_TARGET inline void grad_item(const Ptrs<scalar_t, acc_t>& p, int64_t e, int64_t h) {
  const int64_t H = p.H, K = p.K, V = p.V, KV = p.KV;
  const int64_t eh = e * H + h;
  const int64_t u = p.edge_src[e], w = p.edge_dst[e];
  const int64_t wr = p.wrow(e) * H + h;
  acc_t* __restrict__ Ge = p.G + wr * KV;
  const acc_t* __restrict__ Ce = p.C + (p.crow(e) * H + h) * KV;
  const scalar_t* __restrict__ qw = p.q + (w * H + h) * K;
  const scalar_t* __restrict__ dyw = p.dy + (w * H + h) * V;
  const scalar_t* __restrict__ ku = p.k + (u * H + h) * K;
  const scalar_t* __restrict__ vu = p.v + (u * H + h) * V;
  const acc_t m = static_cast<acc_t>(p.M[eh]);
  const acc_t s = static_cast<acc_t>(p.S[eh]);
  for (int64_t i = 0; i < K; ++i) {
    const acc_t c = m * static_cast<acc_t>(qw[i]);
    acc_t* __restrict__ row = Ge + i * V;
    for (int64_t j = 0; j < V; ++j) row[j] = c * static_cast<acc_t>(dyw[j]);
  }
  for (int64_t j = p.out_ptr[e]; j < p.out_ptr[e + 1]; ++j) {
    const int64_t a = p.out_arc[j];
    const acc_t t = static_cast<acc_t>(p.T[a * H + h]);
    const acc_t* __restrict__ Gb = p.G + (p.wrow(p.arc_dst[a]) * H + h) * KV;
    p.dT[a * H + h] = static_cast<scalar_t>(axpy_dot(Ge, t, Gb, Ce, KV));
  }
  acc_t* __restrict__ wq = p.W + wr * (2 * K + V);
  acc_t* __restrict__ wk = wq + K;
  acc_t* __restrict__ wv = wk + K;
  for (int64_t j = 0; j < V; ++j) wv[j] = 0;
  // gv = G_e v_u and cdy = C_e dy_w (K each), then everything that needs them
  acc_t* tmp = item_scratch<acc_t, 0>(2 * K + 2 * V);
  acc_t* __restrict__ gv = tmp;
  acc_t* __restrict__ cdy = tmp + K;
  row_dots(Ge, as_acc(vu, V, tmp + 2 * K), K, V, gv);
  row_dots(Ce, as_acc(dyw, V, tmp + 2 * K + V), K, V, cdy);
  acc_t ds = 0, dm = 0;
  for (int64_t i = 0; i < K; ++i) {
    const acc_t ki = static_cast<acc_t>(ku[i]);
    ds += ki * gv[i];
    dm += static_cast<acc_t>(qw[i]) * cdy[i];
    wk[i] = s * gv[i];
    wq[i] = m * cdy[i];
    const acc_t c = s * ki;
    const acc_t* __restrict__ grow = Ge + i * V;
    for (int64_t j = 0; j < V; ++j) wv[j] += c * grow[j];
  }
  p.dS[eh] = static_cast<scalar_t>(ds);
  p.dM[eh] = static_cast<scalar_t>(dm);
}

// <a, b> of two input rows, in the accumulation type (short rows: K or V)
template <typename acc_t, typename scalar_t>
PLSTM_TARGET inline acc_t input_dot(const scalar_t* __restrict__ a,
                                    const scalar_t* __restrict__ b, int64_t n) {
  acc_t r = 0;
  for (int64_t i = 0; i < n; ++i) r += static_cast<acc_t>(a[i]) * static_cast<acc_t>(b[i]);
  return r;
}

// Forward readout of one (node, head): out[n, h] = sum of y_e over the node's in-edges plus
// the direct term D_n (q_n . k_n) v_n.
template <typename scalar_t, typename acc_t>
PLSTM_TARGET inline void node_out_item(const Ptrs<scalar_t, acc_t>& p, int64_t n, int64_t h,
                                       acc_t* acc) {
  const int64_t H = p.H, K = p.K, V = p.V;
  const int64_t nh = n * H + h;
  std::fill(acc, acc + V, acc_t(0));
  for (int64_t j = p.node_ptr[n]; j < p.node_ptr[n + 1]; ++j) {
    const acc_t* __restrict__ y = p.Y + (p.wrow(p.node_edge[j]) * H + h) * V;
    for (int64_t x = 0; x < V; ++x) acc[x] += y[x];
  }
  const scalar_t* __restrict__ vn = p.v + nh * V;
  const acc_t dqk = static_cast<acc_t>(p.D[nh]) * input_dot<acc_t>(p.q + nh * K, p.k + nh * K, K);
  scalar_t* __restrict__ o = p.out + nh * V;
  for (int64_t x = 0; x < V; ++x) o[x] = static_cast<scalar_t>(acc[x] + dqk * static_cast<acc_t>(vn[x]));
}

// Input gradients of one (node, head): dq over in-edges, dk and dv over out-edges, and the
// gradients of the direct term.
template <typename scalar_t, typename acc_t>
PLSTM_TARGET inline void node_grad_item(const Ptrs<scalar_t, acc_t>& p, int64_t n, int64_t h,
                                        acc_t* acc) {
  const int64_t H = p.H, K = p.K, V = p.V, width = 2 * K + V;
  const int64_t nh = n * H + h;
  std::fill(acc, acc + width, acc_t(0));
  for (int64_t j = p.node_ptr[n]; j < p.node_ptr[n + 1]; ++j) {
    const acc_t* __restrict__ piece = p.W + (p.wrow(p.node_edge[j]) * H + h) * width;
    for (int64_t x = 0; x < K; ++x) acc[x] += piece[x];
  }
  for (int64_t j = p.src_ptr[n]; j < p.src_ptr[n + 1]; ++j) {
    const acc_t* __restrict__ piece = p.W + (p.wrow(p.src_edge[j]) * H + h) * width;
    for (int64_t x = K; x < width; ++x) acc[x] += piece[x];
  }
  // the direct term D_n (q_n . k_n) v_n
  const scalar_t *__restrict__ qn = p.q + nh * K, *__restrict__ kn = p.k + nh * K,
                 *__restrict__ vn = p.v + nh * V, *__restrict__ dyn = p.dy + nh * V;
  const acc_t dn = static_cast<acc_t>(p.D[nh]);
  const acc_t qk = input_dot<acc_t>(qn, kn, K), vdy = input_dot<acc_t>(vn, dyn, V);
  const acc_t dvdy = dn * vdy, dqk = dn * qk;
  for (int64_t x = 0; x < K; ++x) {
    p.dq[nh * K + x] = static_cast<scalar_t>(acc[x] + dvdy * static_cast<acc_t>(kn[x]));
    p.dk[nh * K + x] = static_cast<scalar_t>(acc[K + x] + dvdy * static_cast<acc_t>(qn[x]));
  }
  for (int64_t x = 0; x < V; ++x) {
    p.dv[nh * V + x] = static_cast<scalar_t>(acc[2 * K + x] + dqk * static_cast<acc_t>(dyn[x]));
  }
  p.dD[nh] = static_cast<scalar_t>(qk * vdy);
}


// ---------------------------------------------------------------------------------------------
// ranges of items: what the drivers in scan_kernel.cpp call (through function pointers)
// ---------------------------------------------------------------------------------------------
// Items it in [b, end) of a level: edge edges[lo + it / H], head it % H.
template <typename scalar_t, typename acc_t>
PLSTM_TARGET void state_items(const Ptrs<scalar_t, acc_t>& p, const int64_t* edges, int64_t lo,
                              int64_t b, int64_t end, bool readout) {
  for (int64_t it = b; it < end; ++it) state_item(p, edges[lo + it / p.H], it % p.H, readout);
}

template <typename scalar_t, typename acc_t>
PLSTM_TARGET void grad_items(const Ptrs<scalar_t, acc_t>& p, const int64_t* edges, int64_t lo,
                             int64_t b, int64_t end) {
  for (int64_t it = b; it < end; ++it) grad_item(p, edges[lo + it / p.H], it % p.H);
}

// Items it in [b, end) over (node, head).
template <typename scalar_t, typename acc_t>
PLSTM_TARGET void node_out_items(const Ptrs<scalar_t, acc_t>& p, int64_t b, int64_t end) {
  acc_t* acc = item_scratch<acc_t, 1>(p.V);
  for (int64_t it = b; it < end; ++it) node_out_item(p, it / p.H, it % p.H, acc);
}

template <typename scalar_t, typename acc_t>
PLSTM_TARGET void node_grad_items(const Ptrs<scalar_t, acc_t>& p, int64_t b, int64_t end) {
  acc_t* acc = item_scratch<acc_t, 1>(2 * p.K + p.V);
  for (int64_t it = b; it < end; ++it) node_grad_item(p, it / p.H, it % p.H, acc);
}

// All components of bin b, one after the other: states (and readouts), then node sums.
template <typename scalar_t, typename acc_t>
PLSTM_TARGET void forward_bin(const Ptrs<scalar_t, acc_t>& p, const Plan& plan, int64_t b) {
  const int64_t H = p.H;
  acc_t* acc = item_scratch<acc_t, 1>(p.V);
  for (int64_t ci = plan.bin_off[b]; ci < plan.bin_off[b + 1]; ++ci) {
    const int64_t c = plan.bin_comps[ci];
    for (int64_t j = plan.comp_edge_off[c]; j < plan.comp_edge_off[c + 1]; ++j) {
      for (int64_t h = 0; h < H; ++h) state_item(p, plan.comp_edges[j], h, /*readout=*/true);
    }
    for (int64_t j = plan.comp_node_off[c]; j < plan.comp_node_off[c + 1]; ++j) {
      for (int64_t h = 0; h < H; ++h) node_out_item(p, plan.comp_nodes[j], h, acc);
    }
  }
}

// All components of bin b: (states again,) state gradients in reverse, then node sums.
template <typename scalar_t, typename acc_t>
PLSTM_TARGET void backward_bin(const Ptrs<scalar_t, acc_t>& p, const Plan& plan, int64_t b,
                               bool recompute) {
  const int64_t H = p.H;
  acc_t* acc = item_scratch<acc_t, 1>(2 * p.K + p.V);
  for (int64_t ci = plan.bin_off[b]; ci < plan.bin_off[b + 1]; ++ci) {
    const int64_t c = plan.bin_comps[ci];
    const int64_t j0 = plan.comp_edge_off[c], j1 = plan.comp_edge_off[c + 1];
    if (recompute) {
      for (int64_t j = j0; j < j1; ++j) {
        for (int64_t h = 0; h < H; ++h) state_item(p, plan.comp_edges[j], h, false);
      }
    }
    for (int64_t j = j1 - 1; j >= j0; --j) {
      for (int64_t h = 0; h < H; ++h) grad_item(p, plan.comp_edges[j], h);
    }
    for (int64_t j = plan.comp_node_off[c]; j < plan.comp_node_off[c + 1]; ++j) {
      for (int64_t h = 0; h < H; ++h) node_grad_item(p, plan.comp_nodes[j], h, acc);
    }
  }
}

}  // namespace PLSTM_ISA
