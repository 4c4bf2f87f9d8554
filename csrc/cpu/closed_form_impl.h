// The per-component work of the CPU closed form (all heads of a component in one task),
// compiled once per instruction set.
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

// The path weights and gates of a group of G heads at once, heads innermost: W [ec, np, G]
// and Gate [nc, np, G]. Element (m, h) of a row is at m * G + h, so one pass over a row serves
// every head of the group, and per head the arithmetic and its order are those of one head
// alone. A group is all heads of a component unless that would take its scratch out of the
// cache (cf_head_group).

// y[m, h] += a[h] x[m, h] for m < len; HF is H when known at compile time, else 0
template <typename acc_t, int64_t HF>
PLSTM_TARGET PLSTM_CF_INLINE void cf_axpy_heads(acc_t* __restrict__ y,
                                                const acc_t* __restrict__ a,
                                                const acc_t* __restrict__ x, int64_t len,
                                                int64_t H) {
  if constexpr (HF > 0) {
    acc_t coef[HF];
    for (int64_t h = 0; h < HF; ++h) coef[h] = a[h];
    for (int64_t m = 0; m < len; ++m) {
      for (int64_t h = 0; h < HF; ++h) y[m * HF + h] += coef[h] * x[m * HF + h];
    }
  } else {
    for (int64_t m = 0; m < len; ++m) {
      for (int64_t h = 0; h < H; ++h) y[m * H + h] += a[h] * x[m * H + h];
    }
  }
}

// y[m, h] = a[h] x[m, h] for m < len
template <typename acc_t, int64_t HF>
PLSTM_TARGET PLSTM_CF_INLINE void cf_scale_heads(acc_t* __restrict__ y,
                                                 const acc_t* __restrict__ a,
                                                 const acc_t* __restrict__ x, int64_t len,
                                                 int64_t H) {
  const int64_t Hn = HF > 0 ? HF : H;
  for (int64_t m = 0; m < len; ++m) {
    for (int64_t h = 0; h < Hn; ++h) y[m * Hn + h] = a[h] * x[m * Hn + h];
  }
}

// out[h] = sum_{m < len} a[m, h] b[m, h], len a multiple of kBlock, each head summed in the
// order of cf_dot_blocks (lane r takes the m = r mod kBlock); part holds kBlock * H values
template <typename acc_t, int64_t HF>
PLSTM_TARGET PLSTM_CF_INLINE void cf_dot_heads(const acc_t* __restrict__ a,
                                               const acc_t* __restrict__ b, int64_t len,
                                               int64_t H, acc_t* __restrict__ part,
                                               acc_t* __restrict__ out) {
  const int64_t Hn = HF > 0 ? HF : H;
  std::fill(part, part + kBlock * Hn, acc_t(0));
  for (int64_t i = 0; i < len; i += kBlock) {
    const acc_t* __restrict__ ai = a + i * Hn;
    const acc_t* __restrict__ bi = b + i * Hn;
    for (int64_t x = 0; x < kBlock * Hn; ++x) part[x] += ai[x] * bi[x];
  }
  for (int64_t h = 0; h < Hn; ++h) {
    acc_t lane[kBlock];
    for (int64_t r = 0; r < kBlock; ++r) lane[r] = part[r * Hn + h];
    out[h] = cf_sum_lanes(lane);
  }
}

// W and Gate of component c for the heads hs (HF: their count when known at compile time,
// else 0); gbuf holds hs.n values.
// False where an arc does not come from an earlier edge whose tail lies in the component (its
// W row would be out of bounds or not computed yet); the edges were checked by cf_ancestors.
template <typename scalar_t, typename acc_t, int64_t HF>
PLSTM_TARGET bool cf_paths(const CfPtrs<scalar_t, acc_t>& p, int64_t c, CfHeads hs, int64_t np,
                           acc_t* __restrict__ W, acc_t* __restrict__ Gate, acc_t* gbuf) {
  const int64_t G = HF > 0 ? HF : hs.n, H = p.H, h0 = hs.h0, row = np * G;
  const int64_t e0 = p.comp_edge_ptr[c], ec = p.comp_edge_ptr[c + 1] - e0;
  const int64_t nc = p.comp_node_ptr[c + 1] - p.comp_node_ptr[c];
  std::fill(W, W + ec * row, acc_t(0));
  std::fill(Gate, Gate + nc * row, acc_t(0));
  for (int64_t j = 0; j < ec; ++j) {
    const int64_t e = p.comp_edge[e0 + j];
    const int64_t u = p.node_pos[p.edge_src[e]];
    acc_t* __restrict__ Wj = W + j * row;
    for (int64_t h = 0; h < G; ++h) Wj[u * G + h] = static_cast<acc_t>(p.S[e * H + h0 + h]);
    for (int64_t r = p.in_ptr[e]; r < p.in_ptr[e + 1]; ++r) {
      const int64_t a = p.in_arc[r];
      const int64_t pe = p.arc_src[a];
      const int64_t pj = p.edge_pos[pe], pu = p.node_pos[p.edge_src[pe]];
      if (!(pj < j && pu < nc)) return false;
      cf_axpy_heads<acc_t, HF>(Wj, as_acc(p.T + a * H + h0, G, gbuf), W + pj * row,
                               cf_round(pu + 1), G);
    }
    cf_axpy_heads<acc_t, HF>(Gate + p.node_pos[p.edge_dst[e]] * row,
                             as_acc(p.M + e * H + h0, G, gbuf), Wj, cf_round(u + 1), G);
  }
  return true;
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
// False (and nothing listed) where an edge does not join two positions u < w of the component:
// that keeps every bit set and every list inside its scratch (at most nc (nc - 1) / 2 pairs).
template <typename scalar_t, typename acc_t>
PLSTM_TARGET bool cf_ancestors(const CfPtrs<scalar_t, acc_t>& p, int64_t c,
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
    if (!(u < w && w < nc)) return false;
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
  return true;
}

// Scratch of one task: acc_t elements, then 64-bit words, then 32-bit ints.
struct CfScratch {
  int64_t acc, words, ints;
};

// A task is one component with a group of G of its H heads: the ancestor lists are the same
// for every head, and a node's rows of all heads are contiguous, so one visit of a (node,
// ancestor) pair does the work of every head of the group. Per head the arithmetic, and its
// order, is that of a task per head, whatever G.
inline CfScratch cf_forward_scratch(int64_t nc, int64_t ec, int64_t H, int64_t G, int64_t K,
                                    int64_t V) {
  const int64_t np = cf_round(std::max<int64_t>(nc, 1));
  return {nc * H * (2 * K + V) + G * (ec * np + nc * np) + G * V + G, nc * ((nc + 63) / 64),
          nc + 1 + nc * (nc - 1) / 2};
}
inline CfScratch cf_backward_scratch(int64_t nc, int64_t ec, int64_t H, int64_t G, int64_t K,
                                     int64_t V) {
  const int64_t np = cf_round(std::max<int64_t>(nc, 1));
  return {nc * H * (2 * K + 2 * V) + 2 * G * ec * np + 2 * G * nc * np + nc * G * (K + V) +
              G * K + (kBlock + 2) * G,
          nc * ((nc + 63) / 64), nc + 1 + nc * (nc - 1) / 2};
}

// Heads per task: all H while their W and Gate (twice in backward: with their gradients) stay
// within kGroupBytes, else one (a dense component of a few hundred nodes has megabytes per
// head, which then stream through the cache one head at a time). Measured with
// benchmarks/bench_algorithms.py: all four heads at once win up to about 2 MB (128-node dense
// DAGs, 1.2x), one at a time from about 8 MB (256 nodes); groups of other sizes would run the
// generic (not unrolled) head loops.
constexpr int64_t kGroupBytes = int64_t(4) << 20;
template <typename acc_t>
inline int64_t cf_head_group(int64_t nc, int64_t ec, int64_t H, bool backward) {
  const int64_t per_head = (ec + nc) * cf_round(std::max<int64_t>(nc, 1)) *
                           static_cast<int64_t>(sizeof(acc_t)) * (backward ? 2 : 1);
  return H * per_head <= kGroupBytes ? H : 1;
}

// <a[0:n], b[0:n]> and y += a x for head rows whose width is KF (0: known at run time only)
template <typename acc_t, int64_t KF>
PLSTM_TARGET PLSTM_CF_INLINE acc_t cf_dot_w(const acc_t* __restrict__ a,
                                            const acc_t* __restrict__ b, int64_t n) {
  if constexpr (KF > 0) {
    return cf_dot_fixed<acc_t, KF>(a, b);
  } else {
    return cf_dot(a, b, n);
  }
}
template <typename acc_t, int64_t VF>
PLSTM_TARGET PLSTM_CF_INLINE void cf_axpy_w(acc_t* __restrict__ y, acc_t a,
                                            const acc_t* __restrict__ x, int64_t n) {
  if constexpr (VF > 0) {
    cf_axpy_fixed<acc_t, VF>(y, a, x);
  } else {
    cf_axpy(y, a, x, n);
  }
}

// Rows of every head of the component's nodes (cf_rows over the [H * width] node rows).
template <typename scalar_t, typename acc_t>
struct CfRows {
  const acc_t **q, **k, **v, **dy;
};

template <typename scalar_t, typename acc_t, int64_t KF, int64_t VF>
PLSTM_TARGET void cf_forward_nodes(const CfPtrs<scalar_t, acc_t>& p, CfHeads hs,
                                   const int64_t* nodes, int64_t nc, int64_t np,
                                   const CfRows<scalar_t, acc_t>& r,
                                   const acc_t* __restrict__ Gate, acc_t* __restrict__ y,
                                   const int32_t* off, const int32_t* list) {
  const int64_t H = p.H, G = hs.n, K = KF > 0 ? KF : p.K, V = VF > 0 ? VF : p.V;
  for (int64_t n = 0; n < nc; ++n) {
    // the rows from the group's first head on
    const acc_t* __restrict__ qn = r.q[n] + hs.h0 * K;
    const acc_t* __restrict__ kn = r.k[n] + hs.h0 * K;
    const acc_t* __restrict__ vn = r.v[n] + hs.h0 * V;
    for (int64_t h = 0; h < G; ++h) {
      const acc_t ann = static_cast<acc_t>(p.D[nodes[n] * H + hs.h0 + h]) *
                        cf_dot_w<acc_t, KF>(qn + h * K, kn + h * K, K);
      for (int64_t x = 0; x < V; ++x) y[h * V + x] = ann * vn[h * V + x];
    }
    for (int32_t t = off[n]; t < off[n + 1]; ++t) {
      const int64_t m = list[t];
      const acc_t* __restrict__ km = r.k[m] + hs.h0 * K;
      const acc_t* __restrict__ vm = r.v[m] + hs.h0 * V;
      const acc_t* __restrict__ g = Gate + (n * np + m) * G;
      for (int64_t h = 0; h < G; ++h) {
        const acc_t a = g[h] * cf_dot_w<acc_t, KF>(qn + h * K, km + h * K, K);
        cf_axpy_w<acc_t, VF>(y + h * V, a, vm + h * V, V);
      }
    }
    scalar_t* __restrict__ out = p.out + (nodes[n] * H + hs.h0) * V;
    for (int64_t x = 0; x < G * V; ++x) out[x] = static_cast<scalar_t>(y[x]);
  }
}

template <typename scalar_t, typename acc_t>
PLSTM_TARGET bool cf_forward_task(const CfPtrs<scalar_t, acc_t>& p, int64_t c, CfHeads hs,
                                  acc_t* buf, const int32_t* ints, const acc_t** rowbuf) {
  const int64_t H = p.H, K = p.K, V = p.V;
  const int64_t n0 = p.comp_node_ptr[c], nc = p.comp_node_ptr[c + 1] - n0;
  const int64_t ec = p.comp_edge_ptr[c + 1] - p.comp_edge_ptr[c];
  const int64_t np = cf_round(nc);
  const int64_t* nodes = p.comp_node + n0;
  const CfRows<scalar_t, acc_t> r{rowbuf, rowbuf + nc, rowbuf + 2 * nc, nullptr};
  const int64_t G = hs.n;
  acc_t* conv = buf;  // [nc, H (2K + V)] converted rows (half types only)
  acc_t* W = conv + nc * H * (2 * K + V);  // [ec, np, G]
  acc_t* Gate = W + G * ec * np;            // [nc, np, G]
  acc_t* y = Gate + G * nc * np;            // [G * V]
  acc_t* gbuf = y + G * V;                  // [G]
  const int32_t* off = ints;  // the ancestor lists of cf_ancestors
  const int32_t* list = off + nc + 1;
  cf_rows(p.q, p.q_stride, nodes, nc, 0, H * K, r.q, conv);
  cf_rows(p.k, p.k_stride, nodes, nc, 0, H * K, r.k, conv + nc * H * K);
  cf_rows(p.v, p.v_stride, nodes, nc, 0, H * V, r.v, conv + 2 * nc * H * K);
  const bool paths_ok = G == 4   ? cf_paths<scalar_t, acc_t, 4>(p, c, hs, np, W, Gate, gbuf)
                        : G == 1 ? cf_paths<scalar_t, acc_t, 1>(p, c, hs, np, W, Gate, gbuf)
                                 : cf_paths<scalar_t, acc_t, 0>(p, c, hs, np, W, Gate, gbuf);
  if (!paths_ok) return false;
  if (K == 24 && V == 24) {
    cf_forward_nodes<scalar_t, acc_t, 24, 24>(p, hs, nodes, nc, np, r, Gate, y, off, list);
  } else if (K == 16 && V == 16) {
    cf_forward_nodes<scalar_t, acc_t, 16, 16>(p, hs, nodes, nc, np, r, Gate, y, off, list);
  } else if (K == 32 && V == 32) {
    cf_forward_nodes<scalar_t, acc_t, 32, 32>(p, hs, nodes, nc, np, r, Gate, y, off, list);
  } else {
    cf_forward_nodes<scalar_t, acc_t, 0, 0>(p, hs, nodes, nc, np, r, Gate, y, off, list);
  }
  return true;
}

// The attention part of the backward pass: dD, dq, and the key, value and Gate gradients
// of the heads hs (dK [nc, G K], dV [nc, G V] by position, dGate [nc, np, G]).
template <typename scalar_t, typename acc_t, int64_t KF, int64_t VF>
PLSTM_TARGET void cf_backward_nodes(const CfPtrs<scalar_t, acc_t>& p, CfHeads hs,
                                    const int64_t* nodes,
                                    int64_t nc, int64_t np, const CfRows<scalar_t, acc_t>& r,
                                    const acc_t* __restrict__ Gate, acc_t* __restrict__ dGate,
                                    acc_t* __restrict__ dK, acc_t* __restrict__ dV,
                                    acc_t* __restrict__ dq, const int32_t* off,
                                    const int32_t* list) {
  const int64_t H = p.H, G = hs.n, K = KF > 0 ? KF : p.K, V = VF > 0 ? VF : p.V;
  const int64_t HK = G * K, HV = G * V;  // the local rows of dK and dV
  for (int64_t n = 0; n < nc; ++n) {
    const int64_t node = nodes[n];
    const acc_t* __restrict__ qn = r.q[n] + hs.h0 * K;
    const acc_t* __restrict__ kn = r.k[n] + hs.h0 * K;
    const acc_t* __restrict__ vn = r.v[n] + hs.h0 * V;
    const acc_t* __restrict__ dyn = r.dy[n] + hs.h0 * V;
    for (int64_t h = 0; h < G; ++h) {
      const acc_t direct = static_cast<acc_t>(p.D[node * H + hs.h0 + h]);
      const acc_t qk_nn = cf_dot_w<acc_t, KF>(qn + h * K, kn + h * K, K);
      const acc_t da_nn = cf_dot_w<acc_t, VF>(dyn + h * V, vn + h * V, V);
      p.dD[node * H + hs.h0 + h] = static_cast<scalar_t>(da_nn * qk_nn);
      const acc_t dqk_nn = da_nn * direct;
      for (int64_t i = 0; i < K; ++i) dq[h * K + i] = dqk_nn * kn[h * K + i];
      cf_axpy_w<acc_t, KF>(dK + n * HK + h * K, dqk_nn, qn + h * K, K);
      cf_axpy_w<acc_t, VF>(dV + n * HV + h * V, direct * qk_nn, dyn + h * V, V);
    }
    for (int32_t t = off[n]; t < off[n + 1]; ++t) {
      const int64_t m = list[t];
      const acc_t* __restrict__ km = r.k[m] + hs.h0 * K;
      const acc_t* __restrict__ vm = r.v[m] + hs.h0 * V;
      const acc_t* __restrict__ gm = Gate + (n * np + m) * G;
      acc_t* __restrict__ dgm = dGate + (n * np + m) * G;
      for (int64_t h = 0; h < G; ++h) {
        // qk = q_n . k_m, da = dy_n . v_m (the gradient of the attention weight)
        const acc_t g = gm[h];
        const acc_t qk = cf_dot_w<acc_t, KF>(qn + h * K, km + h * K, K);
        const acc_t da = cf_dot_w<acc_t, VF>(dyn + h * V, vm + h * V, V);
        dgm[h] = da * qk;
        const acc_t dqk = da * g;
        cf_axpy_w<acc_t, KF>(dq + h * K, dqk, km + h * K, K);
        cf_axpy_w<acc_t, KF>(dK + m * HK + h * K, dqk, qn + h * K, K);
        cf_axpy_w<acc_t, VF>(dV + m * HV + h * V, g * qk, dyn + h * V, V);
      }
    }
    scalar_t* __restrict__ out = p.dq + (node * H + hs.h0) * K;
    for (int64_t i = 0; i < HK; ++i) out[i] = static_cast<scalar_t>(dq[i]);
  }
}

// The gate gradients of component c from dGate: the mark gates, then back along the arcs.
template <typename scalar_t, typename acc_t, int64_t HF>
PLSTM_TARGET void cf_gate_grads(const CfPtrs<scalar_t, acc_t>& p, int64_t c, CfHeads hs,
                                int64_t np, const acc_t* __restrict__ W,
                                const acc_t* __restrict__ dGate, acc_t* __restrict__ dW,
                                acc_t* gbuf) {
  const int64_t G = HF > 0 ? HF : hs.n, H = p.H, h0 = hs.h0, row = np * G;
  const int64_t e0 = p.comp_edge_ptr[c], ec = p.comp_edge_ptr[c + 1] - e0;
  acc_t* part = gbuf + G;          // [kBlock, G]
  acc_t* dot = part + kBlock * G;  // [G]
  // Mark gates, and dW[j] = M_e dGate[dst e] over W's support (rounded up to the block end:
  // past the support W is zero, so whatever dW holds there is multiplied by zero below).
  for (int64_t j = 0; j < ec; ++j) {
    const int64_t e = p.comp_edge[e0 + j];
    const int64_t len = cf_round(p.node_pos[p.edge_src[e]] + 1);
    const acc_t* __restrict__ dg = dGate + p.node_pos[p.edge_dst[e]] * row;
    cf_dot_heads<acc_t, HF>(dg, W + j * row, len, G, part, dot);
    for (int64_t h = 0; h < G; ++h) p.dM[e * H + h0 + h] = static_cast<scalar_t>(dot[h]);
    cf_scale_heads<acc_t, HF>(dW + j * row, as_acc(p.M + e * H + h0, G, gbuf), dg, len, G);
  }
  // back along the arcs, successors first (level order reversed)
  for (int64_t j = ec - 1; j >= 0; --j) {
    const int64_t e = p.comp_edge[e0 + j];
    const acc_t* __restrict__ dWj = dW + j * row;
    const int64_t u = p.node_pos[p.edge_src[e]];
    for (int64_t h = 0; h < G; ++h) {
      p.dS[e * H + h0 + h] = static_cast<scalar_t>(dWj[u * G + h]);
    }
    for (int64_t r = p.in_ptr[e]; r < p.in_ptr[e + 1]; ++r) {
      const int64_t a = p.in_arc[r];
      const int64_t pe = p.arc_src[a];
      const int64_t pj = p.edge_pos[pe];
      const int64_t len = cf_round(p.node_pos[p.edge_src[pe]] + 1);
      cf_dot_heads<acc_t, HF>(dWj, W + pj * row, len, G, part, dot);
      for (int64_t h = 0; h < G; ++h) p.dT[a * H + h0 + h] = static_cast<scalar_t>(dot[h]);
      cf_axpy_heads<acc_t, HF>(dW + pj * row, as_acc(p.T + a * H + h0, G, gbuf), dWj, len,
                               G);
    }
  }
}

template <typename scalar_t, typename acc_t>
PLSTM_TARGET bool cf_backward_task(const CfPtrs<scalar_t, acc_t>& p, int64_t c, CfHeads hs,
                                   acc_t* buf, const int32_t* ints, const acc_t** rowbuf) {
  const int64_t H = p.H, K = p.K, V = p.V;
  const int64_t n0 = p.comp_node_ptr[c], nc = p.comp_node_ptr[c + 1] - n0;
  const int64_t e0 = p.comp_edge_ptr[c], ec = p.comp_edge_ptr[c + 1] - e0;
  const int64_t np = cf_round(nc);
  const int64_t* nodes = p.comp_node + n0;
  const CfRows<scalar_t, acc_t> r{rowbuf, rowbuf + nc, rowbuf + 2 * nc, rowbuf + 3 * nc};
  const int64_t G = hs.n;
  acc_t* conv = buf;  // [nc, H (2K + 2V)] converted rows (half types only)
  acc_t* W = conv + nc * H * (2 * K + 2 * V);  // [ec, np, G]
  acc_t* dW = W + G * ec * np;                  // [ec, np, G]
  acc_t* Gate = dW + G * ec * np;               // [nc, np, G]
  acc_t* dGate = Gate + G * nc * np;            // [nc, np, G]
  acc_t* dK = dGate + G * nc * np;              // [nc, G K]
  acc_t* dV = dK + nc * G * K;                  // [nc, G V]
  acc_t* dq = dV + nc * G * V;                  // [G K]
  acc_t* gbuf = dq + G * K;                     // [(kBlock + 2) G]
  const int32_t* off = ints;  // the ancestor lists of cf_ancestors
  const int32_t* list = off + nc + 1;
  cf_rows(p.q, p.q_stride, nodes, nc, 0, H * K, r.q, conv);
  cf_rows(p.k, p.k_stride, nodes, nc, 0, H * K, r.k, conv + nc * H * K);
  cf_rows(p.v, p.v_stride, nodes, nc, 0, H * V, r.v, conv + 2 * nc * H * K);
  cf_rows(p.dy, H * V, nodes, nc, 0, H * V, r.dy, conv + 2 * nc * H * K + nc * H * V);
  const bool paths_ok = G == 4   ? cf_paths<scalar_t, acc_t, 4>(p, c, hs, np, W, Gate, gbuf)
                        : G == 1 ? cf_paths<scalar_t, acc_t, 1>(p, c, hs, np, W, Gate, gbuf)
                                 : cf_paths<scalar_t, acc_t, 0>(p, c, hs, np, W, Gate, gbuf);
  if (!paths_ok) return false;
  std::fill(dGate, dGate + G * nc * np, acc_t(0));
  std::fill(dK, dK + nc * G * K, acc_t(0));
  std::fill(dV, dV + nc * G * V, acc_t(0));
  if (K == 24 && V == 24) {
    cf_backward_nodes<scalar_t, acc_t, 24, 24>(p, hs, nodes, nc, np, r, Gate, dGate, dK, dV,
                                               dq, off, list);
  } else if (K == 16 && V == 16) {
    cf_backward_nodes<scalar_t, acc_t, 16, 16>(p, hs, nodes, nc, np, r, Gate, dGate, dK, dV,
                                               dq, off, list);
  } else if (K == 32 && V == 32) {
    cf_backward_nodes<scalar_t, acc_t, 32, 32>(p, hs, nodes, nc, np, r, Gate, dGate, dK, dV,
                                               dq, off, list);
  } else {
    cf_backward_nodes<scalar_t, acc_t, 0, 0>(p, hs, nodes, nc, np, r, Gate, dGate, dK, dV,
                                             dq, off, list);
  }
  for (int64_t n = 0; n < nc; ++n) {
    const int64_t node = nodes[n];
    scalar_t* __restrict__ ok = p.dk + (node * H + hs.h0) * K;
    scalar_t* __restrict__ ov = p.dv + (node * H + hs.h0) * V;
    for (int64_t i = 0; i < G * K; ++i) ok[i] = static_cast<scalar_t>(dK[n * G * K + i]);
    for (int64_t x = 0; x < G * V; ++x) ov[x] = static_cast<scalar_t>(dV[n * G * V + x]);
  }
  if (G == 4) {
    cf_gate_grads<scalar_t, acc_t, 4>(p, c, hs, np, W, dGate, dW, gbuf);
  } else if (G == 1) {
    cf_gate_grads<scalar_t, acc_t, 1>(p, c, hs, np, W, dGate, dW, gbuf);
  } else {
    cf_gate_grads<scalar_t, acc_t, 0>(p, c, hs, np, W, dGate, dW, gbuf);
  }
  return true;
}

}  // namespace PLSTM_ISA
