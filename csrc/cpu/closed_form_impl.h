// The per-(component, head) work of the CPU closed form, compiled once per instruction set.
//
// Compiled twice by closed_form_kernel.cpp through isa_variants.h (PLSTM_ISA, PLSTM_TARGET),
// like scan_impl.h; it relies on CfPtrs and the includes there.
// NOLINT(build/header_guard)
//
// Local layout of one component with nc nodes (positions in topological order) and ec edges
// (positions in level order), np = nc rounded up to a multiple of 8: path weights W [ec, np]
// and Gate [nc, np]. Row j of W holds, for every source node m,
// W[j, m] = sum_{e' out of m} P[j, e'] S_e', which is zero past the position u of the edge's
// tail (every path into j starts at an ancestor of u); Gate[n, m] = sum_{e into n} M_e W[e, m]
// is zero unless m is an ancestor of n. The W loops run over those supports rounded up to
// whole blocks of 8 (the padding holds zeros), so they vectorise without scalar tails; the
// attention part visits only the (node, ancestor) pairs, found as bit sets. In a batch of
// molecules that is about a fifth of all pairs m < n, and it is the structure, not the gate
// values, that decides (gradients are needed where a gate happens to be zero).
// Rows of q, k, v and dy are read in place (float, double) or converted once (half types).

namespace PLSTM_ISA {

constexpr int64_t kBlock = 8;

inline int64_t cf_round(int64_t n) { return (n + kBlock - 1) / kBlock * kBlock; }

// y[0:n] += a * x[0:n], n a multiple of kBlock
template <typename acc_t>
PLSTM_TARGET PLSTM_CF_INLINE void cf_axpy_blocks(acc_t* __restrict__ y, acc_t a,
                                        const acc_t* __restrict__ x, int64_t n) {
  for (int64_t i = 0; i < n; i += kBlock) {
    for (int64_t r = 0; r < kBlock; ++r) y[i + r] += a * x[i + r];
  }
}

// part[0] + ... + part[kBlock - 1] in a fixed tree order (deterministic, vectorisable)
template <typename acc_t>
PLSTM_TARGET PLSTM_CF_INLINE acc_t cf_sum_lanes(acc_t* part) {
  for (int64_t w = kBlock / 2; w > 0; w /= 2) {
    for (int64_t r = 0; r < w; ++r) part[r] += part[r + w];
  }
  return part[0];
}

// <a[0:n], b[0:n]>, n a multiple of kBlock, summed in a fixed order
template <typename acc_t>
PLSTM_TARGET PLSTM_CF_INLINE acc_t cf_dot_blocks(const acc_t* __restrict__ a,
                                        const acc_t* __restrict__ b, int64_t n) {
  acc_t part[kBlock] = {};
  for (int64_t i = 0; i < n; i += kBlock) {
    for (int64_t r = 0; r < kBlock; ++r) part[r] += a[i + r] * b[i + r];
  }
  return cf_sum_lanes(part);
}

// y[0:n] += a * x[0:n] for the short rows of width K or V; common widths get a loop of
// known length (unrolled, no remainder), the branch on n is the same for the whole call
template <typename acc_t, int64_t n>
PLSTM_TARGET PLSTM_CF_INLINE void cf_axpy_fixed(acc_t* __restrict__ y, acc_t a,
                                                const acc_t* __restrict__ x) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

template <typename acc_t>
PLSTM_TARGET PLSTM_CF_INLINE void cf_axpy(acc_t* __restrict__ y, acc_t a,
                                          const acc_t* __restrict__ x, int64_t n) {
  switch (n) {
    case 8: return cf_axpy_fixed<acc_t, 8>(y, a, x);
    case 16: return cf_axpy_fixed<acc_t, 16>(y, a, x);
    case 24: return cf_axpy_fixed<acc_t, 24>(y, a, x);
    case 32: return cf_axpy_fixed<acc_t, 32>(y, a, x);
    case 64: return cf_axpy_fixed<acc_t, 64>(y, a, x);
    default:
      for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
  }
}

// Row pointers rows[j] to the [width] vector of node nodes[j], head h, of a [N, H, width]
// tensor whose nodes are `stride` elements apart: in place for float/double, else converted
// into `buf` ([nc, width]).
template <typename scalar_t, typename acc_t>
PLSTM_TARGET PLSTM_CF_INLINE void cf_rows(const scalar_t* x, int64_t stride, const int64_t* nodes,
                                          int64_t nc, int64_t h, int64_t width,
                                          const acc_t** rows, acc_t* buf) {
  for (int64_t j = 0; j < nc; ++j) {
    const scalar_t* src = x + nodes[j] * stride + h * width;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      rows[j] = src;
    } else {
      acc_t* dst = buf + j * width;
      for (int64_t i = 0; i < width; ++i) dst[i] = static_cast<acc_t>(src[i]);
      rows[j] = dst;
    }
  }
}

// W [ec, np] and Gate [nc, np] of component c, head h.
template <typename scalar_t, typename acc_t>
PLSTM_TARGET void cf_paths(const CfPtrs<scalar_t, acc_t>& p, int64_t c, int64_t h, int64_t np,
                           acc_t* __restrict__ W, acc_t* __restrict__ Gate) {
  const int64_t H = p.H;
  const int64_t e0 = p.comp_edge_ptr[c], ec = p.comp_edge_ptr[c + 1] - e0;
  const int64_t nc = p.comp_node_ptr[c + 1] - p.comp_node_ptr[c];
  std::fill(W, W + ec * np, acc_t(0));
  std::fill(Gate, Gate + nc * np, acc_t(0));
  for (int64_t j = 0; j < ec; ++j) {
    const int64_t e = p.comp_edge[e0 + j];
    const int64_t u = p.node_pos[p.edge_src[e]];
    acc_t* __restrict__ Wj = W + j * np;
    Wj[u] = static_cast<acc_t>(p.S[e * H + h]);
    for (int64_t r = p.in_ptr[e]; r < p.in_ptr[e + 1]; ++r) {
      const int64_t a = p.in_arc[r];
      const int64_t pe = p.arc_src[a];
      cf_axpy_blocks(Wj, static_cast<acc_t>(p.T[a * H + h]), W + p.edge_pos[pe] * np,
                     cf_round(p.node_pos[p.edge_src[pe]] + 1));
    }
    cf_axpy_blocks(Gate + p.node_pos[p.edge_dst[e]] * np, static_cast<acc_t>(p.M[e * H + h]),
                   Wj, cf_round(u + 1));
  }
}

// <a[0:n], b[0:n]> for the short rows of width K or V, summed in a fixed order (the same
// order for the fixed-length and the general loop, so results do not depend on the path)
template <typename acc_t, int64_t n>
PLSTM_TARGET PLSTM_CF_INLINE acc_t cf_dot_fixed(const acc_t* __restrict__ a,
                                                const acc_t* __restrict__ b) {
  acc_t part[kBlock] = {};
  for (int64_t i = 0; i < n; i += kBlock) {
    for (int64_t r = 0; r < kBlock; ++r) part[r] += a[i + r] * b[i + r];
  }
  return cf_sum_lanes(part);
}

template <typename acc_t>
PLSTM_TARGET PLSTM_CF_INLINE acc_t cf_dot(const acc_t* __restrict__ a,
                                          const acc_t* __restrict__ b, int64_t n) {
  switch (n) {
    case 8: return cf_dot_fixed<acc_t, 8>(a, b);
    case 16: return cf_dot_fixed<acc_t, 16>(a, b);
    case 24: return cf_dot_fixed<acc_t, 24>(a, b);
    case 32: return cf_dot_fixed<acc_t, 32>(a, b);
    case 64: return cf_dot_fixed<acc_t, 64>(a, b);
    default: break;
  }
  acc_t part[kBlock] = {};
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    for (int64_t r = 0; r < kBlock; ++r) part[r] += a[i + r] * b[i + r];
  }
  for (int64_t r = 0; i < n; ++i, ++r) part[r] += a[i] * b[i];
  return cf_sum_lanes(part);
}

// Position of the lowest set bit of a non-zero word.
PLSTM_TARGET PLSTM_CF_INLINE int cf_lowest_bit(uint64_t bits) {
#if defined(_MSC_VER) && !defined(__clang__)
  unsigned long index;
  _BitScanForward64(&index, bits);
  return static_cast<int>(index);
#else
  return __builtin_ctzll(bits);
#endif
}

// Ancestors of every node of component c as bit sets, anc [nc, words], and then as lists:
// list[off[n]:off[n + 1]] are the ancestors of node n in increasing position.
template <typename scalar_t, typename acc_t>
PLSTM_TARGET void cf_ancestors(const CfPtrs<scalar_t, acc_t>& p, int64_t c,
                                      uint64_t* __restrict__ anc, int32_t* __restrict__ off,
                                      int32_t* __restrict__ list) {
  const int64_t e0 = p.comp_edge_ptr[c], ec = p.comp_edge_ptr[c + 1] - e0;
  const int64_t nc = p.comp_node_ptr[c + 1] - p.comp_node_ptr[c];
  const int64_t words = (nc + 63) / 64;
  std::fill(anc, anc + nc * words, uint64_t(0));
  // edges in level order: a tail's set is complete before its out-edges are visited
  for (int64_t j = 0; j < ec; ++j) {
    const int64_t e = p.comp_edge[e0 + j];
    const int64_t u = p.node_pos[p.edge_src[e]], w = p.node_pos[p.edge_dst[e]];
    uint64_t* __restrict__ aw = anc + w * words;
    const uint64_t* __restrict__ au = anc + u * words;
    for (int64_t x = 0; x < words; ++x) aw[x] |= au[x];
    aw[u / 64] |= uint64_t(1) << (u % 64);
  }
  int32_t count = 0;
  off[0] = 0;
  for (int64_t n = 0; n < nc; ++n) {
    const uint64_t* an = anc + n * words;
    for (int64_t x = 0; x < words; ++x) {
      for (uint64_t bits = an[x]; bits != 0; bits &= bits - 1) {
        list[count++] = static_cast<int32_t>(x * 64 + cf_lowest_bit(bits));
      }
    }
    off[n + 1] = count;
  }
}

// Scratch of one task: acc_t elements, then 64-bit words, then 32-bit ints.
struct CfScratch {
  int64_t acc, words, ints;
};

inline CfScratch cf_forward_scratch(int64_t nc, int64_t ec, int64_t K, int64_t V) {
  const int64_t np = cf_round(std::max<int64_t>(nc, 1));
  return {nc * (2 * K + V) + ec * np + nc * np + V, nc * ((nc + 63) / 64),
          nc + 1 + nc * (nc - 1) / 2};
}
inline CfScratch cf_backward_scratch(int64_t nc, int64_t ec, int64_t K, int64_t V) {
  const int64_t np = cf_round(std::max<int64_t>(nc, 1));
  return {nc * (3 * K + 3 * V) + 2 * ec * np + 2 * nc * np + K, nc * ((nc + 63) / 64),
          nc + 1 + nc * (nc - 1) / 2};
}

template <typename scalar_t, typename acc_t>
PLSTM_TARGET void cf_forward_task(const CfPtrs<scalar_t, acc_t>& p, int64_t c, int64_t h,
                                  acc_t* buf, const int32_t* ints, const acc_t** rowbuf) {
  const int64_t H = p.H, K = p.K, V = p.V;
  const int64_t n0 = p.comp_node_ptr[c], nc = p.comp_node_ptr[c + 1] - n0;
  const int64_t ec = p.comp_edge_ptr[c + 1] - p.comp_edge_ptr[c];
  const int64_t np = cf_round(nc);
  const int64_t* nodes = p.comp_node + n0;
  const acc_t** qr = rowbuf;
  const acc_t** kr = qr + nc;
  const acc_t** vr = kr + nc;
  acc_t* conv = buf;  // [nc, 2K + V] converted rows (half types only)
  acc_t* W = conv + nc * (2 * K + V);
  acc_t* Gate = W + ec * np;
  acc_t* __restrict__ y = Gate + nc * np;
  const int32_t* off = ints;  // the ancestor lists of cf_ancestors
  const int32_t* list = off + nc + 1;
  cf_rows(p.q, p.q_stride, nodes, nc, h, K, qr, conv);
  cf_rows(p.k, p.k_stride, nodes, nc, h, K, kr, conv + nc * K);
  cf_rows(p.v, p.v_stride, nodes, nc, h, V, vr, conv + 2 * nc * K);
  cf_paths(p, c, h, np, W, Gate);
  for (int64_t n = 0; n < nc; ++n) {
    const acc_t* __restrict__ qn = qr[n];
    const acc_t direct = static_cast<acc_t>(p.D[nodes[n] * H + h]);
    const acc_t ann = direct * cf_dot(qn, kr[n], K);
    const acc_t* __restrict__ vn = vr[n];
    for (int64_t x = 0; x < V; ++x) y[x] = ann * vn[x];
    const acc_t* __restrict__ g = Gate + n * np;
    for (int32_t t = off[n]; t < off[n + 1]; ++t) {
      const int64_t m = list[t];
      cf_axpy(y, g[m] * cf_dot(qn, kr[m], K), vr[m], V);
    }
    scalar_t* __restrict__ out = p.out + (nodes[n] * H + h) * V;
    for (int64_t x = 0; x < V; ++x) out[x] = static_cast<scalar_t>(y[x]);
  }
}

template <typename scalar_t, typename acc_t>
PLSTM_TARGET void cf_backward_task(const CfPtrs<scalar_t, acc_t>& p, int64_t c, int64_t h,
                                   acc_t* buf, const int32_t* ints, const acc_t** rowbuf) {
  const int64_t H = p.H, K = p.K, V = p.V;
  const int64_t n0 = p.comp_node_ptr[c], nc = p.comp_node_ptr[c + 1] - n0;
  const int64_t e0 = p.comp_edge_ptr[c], ec = p.comp_edge_ptr[c + 1] - e0;
  const int64_t np = cf_round(nc);
  const int64_t* nodes = p.comp_node + n0;
  const acc_t** qr = rowbuf;
  const acc_t** kr = qr + nc;
  const acc_t** vr = kr + nc;
  const acc_t** dyr = vr + nc;
  acc_t* conv = buf;  // [nc, 2K + 2V] converted rows (half types only)
  acc_t* W = conv + nc * (2 * K + 2 * V);
  acc_t* dW = W + ec * np;
  acc_t* Gate = dW + ec * np;
  acc_t* dGate = Gate + nc * np;
  acc_t* __restrict__ dK = dGate + nc * np;  // [nc, K]
  acc_t* __restrict__ dV = dK + nc * K;      // [nc, V]
  acc_t* __restrict__ dq = dV + nc * V;      // [K]
  const int32_t* off = ints;  // the ancestor lists of cf_ancestors
  const int32_t* list = off + nc + 1;
  cf_rows(p.q, p.q_stride, nodes, nc, h, K, qr, conv);
  cf_rows(p.k, p.k_stride, nodes, nc, h, K, kr, conv + nc * K);
  cf_rows(p.v, p.v_stride, nodes, nc, h, V, vr, conv + 2 * nc * K);
  cf_rows(p.dy, H * V, nodes, nc, h, V, dyr, conv + 2 * nc * K + nc * V);
  cf_paths(p, c, h, np, W, Gate);
  std::fill(dGate, dGate + nc * np, acc_t(0));
  std::fill(dK, dK + nc * K, acc_t(0));
  std::fill(dV, dV + nc * V, acc_t(0));
  for (int64_t n = 0; n < nc; ++n) {
    const int64_t node = nodes[n];
    const acc_t* __restrict__ qn = qr[n];
    const acc_t* __restrict__ kn = kr[n];
    const acc_t* __restrict__ dyn = dyr[n];
    const acc_t direct = static_cast<acc_t>(p.D[node * H + h]);
    const acc_t qk_nn = cf_dot(qn, kn, K), da_nn = cf_dot(dyn, vr[n], V);
    p.dD[node * H + h] = static_cast<scalar_t>(da_nn * qk_nn);
    const acc_t dqk_nn = da_nn * direct;
    for (int64_t i = 0; i < K; ++i) dq[i] = dqk_nn * kn[i];
    cf_axpy(dK + n * K, dqk_nn, qn, K);
    cf_axpy(dV + n * V, direct * qk_nn, dyn, V);
    const acc_t* __restrict__ g = Gate + n * np;
    acc_t* __restrict__ dg = dGate + n * np;
    for (int32_t t = off[n]; t < off[n + 1]; ++t) {
      const int64_t m = list[t];
      // qk = q_n . k_m, da = dy_n . v_m (the gradient of the attention weight)
      const acc_t qk = cf_dot(qn, kr[m], K), da = cf_dot(dyn, vr[m], V);
      dg[m] = da * qk;
      const acc_t dqk = da * g[m];
      cf_axpy(dq, dqk, kr[m], K);
      cf_axpy(dK + m * K, dqk, qn, K);
      cf_axpy(dV + m * V, g[m] * qk, dyn, V);
    }
    scalar_t* __restrict__ out = p.dq + (node * H + h) * K;
    for (int64_t i = 0; i < K; ++i) out[i] = static_cast<scalar_t>(dq[i]);
  }
  for (int64_t n = 0; n < nc; ++n) {
    const int64_t node = nodes[n];
    scalar_t* __restrict__ ok = p.dk + (node * H + h) * K;
    scalar_t* __restrict__ ov = p.dv + (node * H + h) * V;
    for (int64_t i = 0; i < K; ++i) ok[i] = static_cast<scalar_t>(dK[n * K + i]);
    for (int64_t x = 0; x < V; ++x) ov[x] = static_cast<scalar_t>(dV[n * V + x]);
  }
  // Mark gates, and dW[j] = M_e dGate[dst e] over W's support (rounded up to the block end:
  // past the support W is zero, so whatever dW holds there is multiplied by zero below).
  for (int64_t j = 0; j < ec; ++j) {
    const int64_t e = p.comp_edge[e0 + j];
    const int64_t len = cf_round(p.node_pos[p.edge_src[e]] + 1);
    const acc_t* __restrict__ dg = dGate + p.node_pos[p.edge_dst[e]] * np;
    const acc_t mark = static_cast<acc_t>(p.M[e * H + h]);
    p.dM[e * H + h] = static_cast<scalar_t>(cf_dot_blocks(dg, W + j * np, len));
    acc_t* __restrict__ dWj = dW + j * np;
    for (int64_t m = 0; m < len; ++m) dWj[m] = mark * dg[m];
  }
  // back along the arcs, successors first (level order reversed)
  for (int64_t j = ec - 1; j >= 0; --j) {
    const int64_t e = p.comp_edge[e0 + j];
    const acc_t* __restrict__ dWj = dW + j * np;
    p.dS[e * H + h] = static_cast<scalar_t>(dWj[p.node_pos[p.edge_src[e]]]);
    for (int64_t r = p.in_ptr[e]; r < p.in_ptr[e + 1]; ++r) {
      const int64_t a = p.in_arc[r];
      const int64_t pe = p.arc_src[a];
      const int64_t pj = p.edge_pos[pe];
      const int64_t len = cf_round(p.node_pos[p.edge_src[pe]] + 1);
      p.dT[a * H + h] = static_cast<scalar_t>(cf_dot_blocks(dWj, W + pj * np, len));
      cf_axpy_blocks(dW + pj * np, static_cast<acc_t>(p.T[a * H + h]), dWj, len);
    }
  }
}

}  // namespace PLSTM_ISA
