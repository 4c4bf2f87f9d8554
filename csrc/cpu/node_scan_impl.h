// The work items of the CPU node-level scan, compiled once per instruction set.
//
// Compiled twice by node_scan_kernel.cpp through isa_variants.h, with PLSTM_ISA (a namespace),
// PLSTM_TARGET (a function attribute) and PLSTM_VEC_BYTES (the width of one vector register)
// set for the baseline ISA and for AVX2+FMA. No include guard on purpose; it relies on the includes, P and
// thread_scratch of node_scan_kernel.cpp.
//
// Layout of the work (it is the whole cost): with K = V = 16 a row of a state is one or two
// registers, so a loop over the edges that loads and stores the accumulator rows for every
// edge spends its time on memory and loop overhead, not on the FMAs. Each item therefore
//   1. gathers what it needs per edge once (scalars, the converted rows of v or dy, the
//      products s k_u[i] or m q_w[i]) into thread-local buffers, and then
//   2. runs over column blocks of one register width (the math is column-separable up to the
//      dot products, which come from the gathered scalars or from per-edge column sums kept
//      in a buffer) and over blocks of IB rows, with the edges innermost: the accumulator rows
//      stay in registers over all edges of the node and are stored once.
// Every sum runs in a fixed order that does not depend on the thread (bitwise deterministic).
// NOLINT(build/header_guard)

namespace PLSTM_ISA {

constexpr int kNodeLanes = 8;

// The short dots run hundreds of thousands of times per call: a call each costs more than the
// dot (GCC does not inline them on its own here).
#ifndef PLSTM_NODE_INLINE
#if defined(__GNUC__) || defined(__clang__)
#define PLSTM_NODE_INLINE inline __attribute__((always_inline))
#else
#define PLSTM_NODE_INLINE inline
#endif
#endif

// One register of acc_t lanes. GCC and Clang keep vector-extension values in registers
// (an array of the same size may live on the stack); elsewhere a plain array does the same
// arithmetic.
#if defined(__GNUC__) || defined(__clang__)
template <typename T, int N>
struct VecOf {
  typedef T type __attribute__((vector_size(N * sizeof(T))));
};
#else
template <typename T, int N>
struct Lanes {
  T a[N];
  Lanes& operator+=(const Lanes& y) {
    for (int i = 0; i < N; ++i) a[i] += y.a[i];
    return *this;
  }
  friend Lanes operator+(Lanes x, const Lanes& y) { return x += y; }
  friend Lanes operator*(Lanes x, const Lanes& y) {
    for (int i = 0; i < N; ++i) x.a[i] *= y.a[i];
    return x;
  }
  friend Lanes operator*(T s, Lanes x) {
    for (int i = 0; i < N; ++i) x.a[i] *= s;
    return x;
  }
};
template <typename T, int N>
struct VecOf {
  typedef Lanes<T, N> type;
};
#endif

template <typename acc_t>
struct Block {
  static constexpr int W = PLSTM_VEC_BYTES / sizeof(acc_t) > 0
                               ? static_cast<int>(PLSTM_VEC_BYTES / sizeof(acc_t))
                               : 1;
  using vec = typename VecOf<acc_t, W>::type;

  // n lanes at p (all W when Full); the other lanes are zero and never stored
  template <bool Full>
  PLSTM_TARGET static PLSTM_NODE_INLINE vec load(const acc_t* p, int64_t n) {
    vec x = {};
    std::memcpy(&x, p, Full ? sizeof(vec) : static_cast<size_t>(n) * sizeof(acc_t));
    return x;
  }
  template <bool Full>
  PLSTM_TARGET static PLSTM_NODE_INLINE void store(acc_t* p, const vec& x, int64_t n) {
    std::memcpy(p, &x, Full ? sizeof(vec) : static_cast<size_t>(n) * sizeof(acc_t));
  }
};

// sum_x a[x] b[x] of two acc_t rows in registers, the lanes added in a fixed tree
template <typename acc_t>
PLSTM_TARGET PLSTM_NODE_INLINE acc_t vec_dot(const acc_t* a, const acc_t* b, int64_t n) {
  using B = Block<acc_t>;
  using vec = typename B::vec;
  constexpr int W = B::W;
  vec s0 = {}, s1 = {};
  int64_t x = 0;
  for (; x + 2 * W <= n; x += 2 * W) {
    s0 += B::template load<true>(a + x, W) * B::template load<true>(b + x, W);
    s1 += B::template load<true>(a + x + W, W) * B::template load<true>(b + x + W, W);
  }
  if (x + W <= n) {
    s0 += B::template load<true>(a + x, W) * B::template load<true>(b + x, W);
    x += W;
  }
  if (x < n) s1 += B::template load<false>(a + x, n - x) * B::template load<false>(b + x, n - x);
  s0 += s1;
  acc_t t[W];
  std::memcpy(t, &s0, sizeof(t));
  for (int w = W / 2; w > 0; w /= 2) {
    for (int r = 0; r < w; ++r) t[r] += t[r + w];
  }
  return t[0];
}

// sum_x a[x] b[x] with kNodeLanes independent partial sums added in a fixed tree: vectorised
// without reassociation, so deterministic (rows already in acc_t: vec_dot).
template <typename acc_t, typename a_t, typename b_t>
PLSTM_TARGET PLSTM_NODE_INLINE acc_t lane_dot(const a_t* __restrict__ a, const b_t* __restrict__ b,
                                   int64_t n) {
  if constexpr (std::is_same_v<a_t, acc_t> && std::is_same_v<b_t, acc_t>) {
    return vec_dot<acc_t>(a, b, n);
  }
  acc_t part[kNodeLanes] = {};
  int64_t x = 0;
  for (; x + kNodeLanes <= n; x += kNodeLanes) {
    for (int r = 0; r < kNodeLanes; ++r) {
      part[r] += static_cast<acc_t>(a[x + r]) * static_cast<acc_t>(b[x + r]);
    }
  }
  for (int r = 0; x < n; ++x, ++r) part[r] += static_cast<acc_t>(a[x]) * static_cast<acc_t>(b[x]);
  for (int w = kNodeLanes / 2; w > 0; w /= 2) {
    for (int r = 0; r < w; ++r) part[r] += part[r + w];
  }
  return part[0];
}

// Runs f.template operator()<Full, IB>(c, n, i) over the column blocks [c, c + n) of width W
// (a last narrower one with Full = false) and, within each, the row blocks [i, i + IB) of K
// rows (blocks of one row for the rest).
template <int W, int IB, typename F>
PLSTM_TARGET inline void for_blocks(int64_t K, int64_t V, const F& f) {
  int64_t c = 0;
  for (; c + W <= V; c += W) {
    int64_t i = 0;
    for (; i + IB <= K; i += IB) f.template run<true, IB>(c, W, i);
    for (; i < K; ++i) f.template run<true, 1>(c, W, i);
  }
  if (c < V) {
    int64_t i = 0;
    for (; i + IB <= K; i += IB) f.template run<false, IB>(c, V - c, i);
    for (; i < K; ++i) f.template run<false, 1>(c, V - c, i);
  }
}

// Prefetches of what an item reads of other nodes (their states, scalars and rows are spread
// over a few MB, so each item would start with a run of cache misses; issued ahead they
// overlap instead of stalling the gather loop one by one).
#ifndef PLSTM_NODE_PREFETCH
#if defined(__GNUC__) || defined(__clang__)
#define PLSTM_NODE_PREFETCH(p) __builtin_prefetch(p)
#else
#define PLSTM_NODE_PREFETCH(p) ((void)(p))
#endif
#endif

template <typename T>
PLSTM_TARGET inline void prefetch_span(const T* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  const int64_t bytes = n * static_cast<int64_t>(sizeof(T));
  for (int64_t o = 0; o < bytes; o += 64) PLSTM_NODE_PREFETCH(c + o);
  if (bytes > 0) PLSTM_NODE_PREFETCH(c + bytes - 1);
}

// per-item scratch: n accumulator values and d pointers, carved in order by take()
template <typename acc_t>
struct Scratch {
  acc_t* cur;
  const acc_t** ptr;
  Scratch(int64_t n, int64_t d)
      : cur(thread_scratch<acc_t>(n)), ptr(thread_scratch<const acc_t*>(d)) {}
  acc_t* take(int64_t n) {
    acc_t* r = cur;
    cur += n;
    return r;
  }
};

// ---------------------------------------------------------------------------------------------
// forward item: node w, head h. Per row block, over the in-edges j:
//   row_i += (s_j k_u[i]) v_u + t_j H_u[i],  mrow_i += (m_j t_j) H_u[i]
// then H_w[i] = row_i and y += q_w[i] mrow_i; y += sum_j m_j s_j (q_w . k_u) v_u.
template <typename acc_t>
struct ForwardRows {
  using B = Block<acc_t>;
  using vec = typename B::vec;
  const acc_t* const* hu;  // H_u of each in-edge
  const acc_t *vb, *sk, *tt, *mt, *qa;
  acc_t* Hw;
  vec* y;  // the readout of the current column block
  int64_t d, K, V;

  template <bool Full, int IB>
  PLSTM_TARGET inline void run(int64_t c, int64_t n, int64_t i) const {
    // (locals: the stores below go through memcpy, which could alias the members)
    const acc_t* const* hu = this->hu;
    const acc_t *vb = this->vb, *sk = this->sk, *tt = this->tt, *mt = this->mt;
    const int64_t d = this->d, K = this->K, V = this->V;
    vec row[IB] = {}, mrow[IB] = {};
    for (int64_t j = 0; j < d; ++j) {
      const acc_t* __restrict__ h = hu[j] + i * V + c;
      const vec v = B::template load<Full>(vb + j * V + c, n);
      const acc_t t = tt[j], m = mt[j];
      const acc_t* __restrict__ s = sk + j * K + i;
      for (int r = 0; r < IB; ++r) {
        const vec hr = B::template load<Full>(h + r * V, n);
        row[r] += s[r] * v + t * hr;
        mrow[r] += m * hr;
      }
    }
    for (int r = 0; r < IB; ++r) {
      B::template store<Full>(Hw + (i + r) * V + c, row[r], n);
      *y += qa[i + r] * mrow[r];
    }
  }
};

template <typename scalar_t, typename acc_t>
PLSTM_TARGET inline void forward_item(const P<scalar_t, acc_t>& p, int64_t w, int64_t h,
                                  const int64_t* eb, const int64_t* en, int64_t d) {
  using B = Block<acc_t>;
  using vec = typename B::vec;
  constexpr int W = B::W;
  const int64_t H = p.H, K = p.K, V = p.V, KV = p.KV;
  Scratch<acc_t> sc(d * (V + K + 3) + K + W, d);
  acc_t* __restrict__ vb = sc.take(d * V);
  acc_t* __restrict__ sk = sc.take(d * K);
  acc_t* __restrict__ tt = sc.take(d);
  acc_t* __restrict__ mt = sc.take(d);
  acc_t* __restrict__ msqk = sc.take(d);
  acc_t* __restrict__ qa = sc.take(K);
  acc_t* __restrict__ ytmp = sc.take(W);
  const scalar_t* __restrict__ qw = p.q + (w * H + h) * K;
  for (int64_t i = 0; i < K; ++i) qa[i] = static_cast<acc_t>(qw[i]);
  for (int64_t j = 0; j < d; ++j) {
    const int64_t b = eb[j], u = en[j];
    const acc_t s = static_cast<acc_t>(p.S[b * H + h]);
    const acc_t m = static_cast<acc_t>(p.M[b * H + h]);
    const acc_t t = static_cast<acc_t>(p.T[u * H + h]) * p.carry_of(b, h);
    const scalar_t* __restrict__ ku = p.k + (u * H + h) * K;
    const scalar_t* __restrict__ vu = p.v + (u * H + h) * V;
    sc.ptr[j] = p.Hs + (u * H + h) * KV;
    for (int64_t x = 0; x < V; ++x) vb[j * V + x] = static_cast<acc_t>(vu[x]);
    for (int64_t i = 0; i < K; ++i) sk[j * K + i] = s * static_cast<acc_t>(ku[i]);
    tt[j] = t;
    mt[j] = m * t;
    msqk[j] = m * s * lane_dot<acc_t>(qa, ku, K);
  }
  // the direct term D_w (q_w . k_w) v_w
  const scalar_t* __restrict__ vw = p.v + (w * H + h) * V;
  const acc_t dqk = static_cast<acc_t>(p.D[w * H + h]) *
                    lane_dot<acc_t>(qa, p.k + (w * H + h) * K, K);
  scalar_t* __restrict__ o = p.out + (w * H + h) * V;
  vec y = {};
  ForwardRows<acc_t> f{sc.ptr, vb, sk, tt, mt, qa, p.Hs + (w * H + h) * KV, &y, d, K, V};
  // column blocks outermost, so that y of one block is finished before the next
  for (int64_t c = 0; c < V; c += W) {
    const int64_t n = std::min<int64_t>(W, V - c);
    y = vec{};
    int64_t i = 0;
    if (n == W) {
      for (; i + 4 <= K; i += 4) f.template run<true, 4>(c, n, i);
      for (; i < K; ++i) f.template run<true, 1>(c, n, i);
      for (int64_t j = 0; j < d; ++j) y += msqk[j] * B::template load<true>(vb + j * V + c, n);
    } else {
      for (; i + 4 <= K; i += 4) f.template run<false, 4>(c, n, i);
      for (; i < K; ++i) f.template run<false, 1>(c, n, i);
      for (int64_t j = 0; j < d; ++j) y += msqk[j] * B::template load<false>(vb + j * V + c, n);
    }
    std::memcpy(ytmp, &y, sizeof(vec));
    for (int64_t x = 0; x < n; ++x) {
      o[c + x] = static_cast<scalar_t>(ytmp[x] + dqk * static_cast<acc_t>(vw[c + x]));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// backward, the carried pass (levels in reverse): node u, head h, over its out-edges j
// (b = u -> w), with dC_b = T_w F_w + M_b q_w dy_w^T. Per row block, over the edges:
//   F_u[i] += g_b (T_w F_w[i] + M_b q_w[i] dy_w),  A[i] += S_b T_w F_w[i],
//   Z_j += k_u[i] F_w[i]                                   (Z_j = F_w^T k_u, per edge)
// and then, the rank-one parts of dC_b entering through per-edge scalars,
//   dS_b = T_w Z_j . v_u + M_b (q_w . k_u)(dy_w . v_u),
//   dk_u = A v_u + sum_b S_b M_b (dy_w . v_u) q_w,  dv_u = sum_b S_b (T_w Z_j + M_b (q_w . k_u) dy_w),
//   dT_u = <F_u, H_u>, dg_b = T_u <dC_b, H_u>.
// The readout gradients of the edges go here too, where H_u is the item's own state (a pass
// of their own would read H_u once per edge): with G_j = H_u dy_w and t_b = g_b T_u,
//   dM_b = S_b (q_w . k_u)(v_u . dy_w) + t_b q_w . G_j,
//   DQ_b = M_b (S_b (v_u . dy_w) k_u + t_b G_j)            (edge b's share of dq_w)
// and the readout pass sums the DQ_b into dq_w.
template <typename acc_t>
struct CarryRows {
  using B = Block<acc_t>;
  using vec = typename B::vec;
  const acc_t* const* fw;  // F_w of each out-edge
  const acc_t *dyb, *gmq, *gt, *st, *ka;
  acc_t *Z, *Fu, *A;
  int64_t d, K, V;

  template <bool Full, int IB>
  PLSTM_TARGET inline void run(int64_t c, int64_t n, int64_t i) const {
    const acc_t* const* fw = this->fw;
    const acc_t *dyb = this->dyb, *gmq = this->gmq, *gt = this->gt, *st = this->st;
    acc_t* Z = this->Z;
    const int64_t d = this->d, K = this->K, V = this->V;
    vec facc[IB] = {}, aacc[IB] = {};
    acc_t ki[IB];
    for (int r = 0; r < IB; ++r) ki[r] = ka[i + r];
    for (int64_t j = 0; j < d; ++j) {
      const acc_t* __restrict__ f = fw[j] + i * V + c;
      acc_t* __restrict__ zj = Z + j * V + c;
      vec z = B::template load<Full>(zj, n);
      const vec dy = B::template load<Full>(dyb + j * V + c, n);
      const acc_t t = gt[j], s = st[j];
      const acc_t* __restrict__ mq = gmq + j * K + i;
      for (int r = 0; r < IB; ++r) {
        const vec fr = B::template load<Full>(f + r * V, n);
        facc[r] += t * fr + mq[r] * dy;
        aacc[r] += s * fr;
        z += ki[r] * fr;
      }
      B::template store<Full>(zj, z, n);
    }
    for (int r = 0; r < IB; ++r) {
      B::template store<Full>(Fu + (i + r) * V + c, facc[r], n);
      B::template store<Full>(A + (i + r) * V + c, aacc[r], n);
    }
  }
};

// G_j = H_u dy_j for the d rows dy_j of dyb, from HuT = H_u^T ([V, K]): K-wide columns of
// HuT times broadcast dy_j[x], four edges at a time (no horizontal sums)
template <bool Full, typename acc_t>
PLSTM_TARGET inline void edge_products_block(const acc_t* __restrict__ HuT,
                                             const acc_t* __restrict__ dyb,
                                             acc_t* __restrict__ G, int64_t d, int64_t K,
                                             int64_t V, int64_t c, int64_t n) {
  using B = Block<acc_t>;
  using vec = typename B::vec;
  int64_t j = 0;
  for (; j + 4 <= d; j += 4) {
    vec g[4] = {};
    for (int64_t x = 0; x < V; ++x) {
      const vec hx = B::template load<Full>(HuT + x * K + c, n);
      for (int r = 0; r < 4; ++r) g[r] += dyb[(j + r) * V + x] * hx;
    }
    for (int r = 0; r < 4; ++r) B::template store<Full>(G + (j + r) * K + c, g[r], n);
  }
  for (; j < d; ++j) {
    vec g = {};
    for (int64_t x = 0; x < V; ++x) {
      g += dyb[j * V + x] * B::template load<Full>(HuT + x * K + c, n);
    }
    B::template store<Full>(G + j * K + c, g, n);
  }
}

template <typename acc_t>
PLSTM_TARGET inline void edge_products(const acc_t* HuT, const acc_t* dyb, acc_t* G, int64_t d,
                                       int64_t K, int64_t V) {
  constexpr int W = Block<acc_t>::W;
  int64_t c = 0;
  for (; c + W <= K; c += W) edge_products_block<true>(HuT, dyb, G, d, K, V, c, W);
  if (c < K) edge_products_block<false>(HuT, dyb, G, d, K, V, c, K - c);
}

template <typename scalar_t, typename acc_t>
PLSTM_TARGET inline void carry_grad_item(const P<scalar_t, acc_t>& p, int64_t u, int64_t h,
                                  const int64_t* eb, const int64_t* en, int64_t d) {
  const int64_t H = p.H, K = p.K, V = p.V, KV = p.KV;
  Scratch<acc_t> sc(d * (2 * V + 3 * K + 5) + 2 * KV + 2 * K + 2 * V, d);
  acc_t* __restrict__ dyb = sc.take(d * V);
  acc_t* __restrict__ Z = sc.take(d * V);
  acc_t* __restrict__ qb = sc.take(d * K);   // q_w
  acc_t* __restrict__ G = sc.take(d * K);    // H_u dy_w
  acc_t* __restrict__ gmq = sc.take(d * K);  // g_b M_b q_w
  acc_t* __restrict__ gt = sc.take(d);       // g_b T_w
  acc_t* __restrict__ st = sc.take(d);       // S_b T_w
  acc_t* __restrict__ dsr = sc.take(d);      // M_b (q_w . k_u)(dy_w . v_u)
  acc_t* __restrict__ kqb = sc.take(d);      // q_w . k_u
  acc_t* __restrict__ dyvb = sc.take(d);     // dy_w . v_u
  acc_t* __restrict__ A = sc.take(KV);
  acc_t* __restrict__ HuT = sc.take(KV);
  acc_t* __restrict__ ka = sc.take(K);
  acc_t* __restrict__ dk = sc.take(K);
  acc_t* __restrict__ va = sc.take(V);
  acc_t* __restrict__ dv = sc.take(V);
  const acc_t* __restrict__ Hu = p.Hs + (u * H + h) * KV;
  const acc_t tu = static_cast<acc_t>(p.T[u * H + h]);
  acc_t* __restrict__ Fu = p.F + (u * H + h) * KV;
  const scalar_t* __restrict__ ku = p.k + (u * H + h) * K;
  const scalar_t* __restrict__ vu = p.v + (u * H + h) * V;
  for (int64_t i = 0; i < K; ++i) ka[i] = static_cast<acc_t>(ku[i]);
  for (int64_t x = 0; x < V; ++x) va[x] = static_cast<acc_t>(vu[x]);
  for (int64_t i = 0; i < K; ++i) {
    for (int64_t x = 0; x < V; ++x) HuT[x * K + i] = Hu[i * V + x];
  }
  std::fill(dk, dk + K, acc_t(0));
  std::fill(dv, dv + V, acc_t(0));
  std::fill(Z, Z + d * V, acc_t(0));
  for (int64_t j = 0; j < d; ++j) {
    const int64_t b = eb[j], w = en[j];
    const acc_t s = static_cast<acc_t>(p.S[b * H + h]);
    const acc_t m = static_cast<acc_t>(p.M[b * H + h]);
    const acc_t tw = static_cast<acc_t>(p.T[w * H + h]);
    const acc_t g = p.carry_of(b, h);
    const scalar_t* __restrict__ qw = p.q + (w * H + h) * K;
    const scalar_t* __restrict__ dyw = p.dy + (w * H + h) * V;
    sc.ptr[j] = p.F + (w * H + h) * KV;
    acc_t* __restrict__ dyj = dyb + j * V;
    for (int64_t x = 0; x < V; ++x) dyj[x] = static_cast<acc_t>(dyw[x]);
    acc_t* __restrict__ qj = qb + j * K;
    for (int64_t i = 0; i < K; ++i) qj[i] = static_cast<acc_t>(qw[i]);
    const acc_t gm = g * m;
    for (int64_t i = 0; i < K; ++i) gmq[j * K + i] = gm * qj[i];
    gt[j] = g * tw;
    st[j] = s * tw;
    const acc_t kq = lane_dot<acc_t>(ka, qj, K), dyv = lane_dot<acc_t>(dyj, va, V);
    kqb[j] = kq;
    dyvb[j] = dyv;
    dsr[j] = m * kq * dyv;
    const acc_t smdyv = s * m * dyv, smkq = s * m * kq;
    for (int64_t i = 0; i < K; ++i) dk[i] += smdyv * qj[i];
    for (int64_t x = 0; x < V; ++x) dv[x] += smkq * dyj[x];
  }
  edge_products(HuT, dyb, G, d, K, V);
  for_blocks<Block<acc_t>::W, 2>(K, V,
                                 CarryRows<acc_t>{sc.ptr, dyb, gmq, gt, st, ka, Z, Fu, A, d, K, V});
  for (int64_t j = 0; j < d; ++j) {
    const int64_t b = eb[j], w = en[j];
    const acc_t tw = static_cast<acc_t>(p.T[w * H + h]);
    p.dS[b * H + h] = static_cast<scalar_t>(tw * lane_dot<acc_t>(Z + j * V, va, V) + dsr[j]);
    const acc_t stj = st[j];
    for (int64_t x = 0; x < V; ++x) dv[x] += stj * Z[j * V + x];
    // the readout gradients of edge b
    const acc_t s = static_cast<acc_t>(p.S[b * H + h]);
    const acc_t m = static_cast<acc_t>(p.M[b * H + h]);
    const acc_t t = tu * p.carry_of(b, h);
    const acc_t* __restrict__ Gj = G + j * K;
    const acc_t qG = lane_dot<acc_t>(qb + j * K, Gj, K);  // q_w^T H_u dy_w
    const acc_t dyv = dyvb[j];
    p.dM[b * H + h] = static_cast<scalar_t>(s * kqb[j] * dyv + t * qG);
    const acc_t msv = m * s * dyv, mt = m * t;
    acc_t* __restrict__ e = p.DQ + (b * H + h) * K;
    for (int64_t i = 0; i < K; ++i) e[i] = msv * ka[i] + mt * Gj[i];
    if (p.carry != nullptr) {
      // <dC_b, H_u> = T_w <F_w, H_u> + M_b q_w^T H_u dy_w
      const acc_t inner = tw * lane_dot<acc_t>(sc.ptr[j], Hu, KV) + m * qG;
      p.dcarry[b * H + h] = static_cast<scalar_t>(tu * inner);
    }
  }
  p.dT[u * H + h] = static_cast<scalar_t>(lane_dot<acc_t>(Fu, Hu, KV));
  // with the direct term's shares: D_u (v_u . dy_u) q_u and D_u (q_u . k_u) dy_u
  const scalar_t* __restrict__ qu = p.q + (u * H + h) * K;
  const scalar_t* __restrict__ dyu = p.dy + (u * H + h) * V;
  const acc_t du = static_cast<acc_t>(p.D[u * H + h]);
  const acc_t dvdy = du * lane_dot<acc_t>(va, dyu, V);
  const acc_t dqk = du * lane_dot<acc_t>(qu, ka, K);
  scalar_t* __restrict__ odk = p.dk + (u * H + h) * K;
  scalar_t* __restrict__ odv = p.dv + (u * H + h) * V;
  for (int64_t i = 0; i < K; ++i) {
    odk[i] = static_cast<scalar_t>(lane_dot<acc_t>(A + i * V, va, V) + dk[i] +
                                   dvdy * static_cast<acc_t>(qu[i]));
  }
  for (int64_t x = 0; x < V; ++x) {
    odv[x] = static_cast<scalar_t>(dv[x] + dqk * static_cast<acc_t>(dyu[x]));
  }
}

// What the item of head h reads of the edges (eb) of a node and of their other ends (en): the
// edge gates, the other end's transition, its two rows a [K] and b [V] and its state [K, V]
// (forward: k, v, H; carried pass: q, dy, F). Issued one head ahead, so that the misses overlap
// the work of the head before.
template <typename scalar_t, typename acc_t>
PLSTM_TARGET inline void prefetch_edges(const P<scalar_t, acc_t>& p, int64_t h,
                                        const int64_t* eb, const int64_t* en, int64_t d,
                                        const scalar_t* a, const scalar_t* b,
                                        const acc_t* state) {
  const int64_t H = p.H, K = p.K, V = p.V, KV = p.KV;
  for (int64_t j = 0; j < d; ++j) {
    const int64_t e = eb[j], n = en[j];
    PLSTM_NODE_PREFETCH(p.S + e * H + h);
    PLSTM_NODE_PREFETCH(p.M + e * H + h);
    PLSTM_NODE_PREFETCH(p.T + n * H + h);
    if (p.carry != nullptr) PLSTM_NODE_PREFETCH(p.carry + e * H + h);
    prefetch_span(a + (n * H + h) * K, K);
    prefetch_span(b + (n * H + h) * V, V);
    prefetch_span(state + (n * H + h) * KV, KV);
  }
}

// the prefetches of the item of node n, head h, in the forward (its in-edges' tails: k, v, H)
// or the carried pass (its own H_n and its out-edges' heads: q, dy, F)
template <bool Forward, typename scalar_t, typename acc_t>
PLSTM_TARGET inline void prefetch_item(const P<scalar_t, acc_t>& p, int64_t n, int64_t h,
                                       const int64_t* eb, const int64_t* en, int64_t d) {
  if constexpr (Forward) {
    prefetch_edges(p, h, eb, en, d, p.k, p.v, p.Hs);
  } else {
    prefetch_span(p.Hs + (n * p.H + h) * p.KV, p.KV);
    prefetch_edges(p, h, eb, en, d, p.q, p.dy, p.F);
  }
}

// backward, the readout pass (any order, after the carried one): node w, head h,
// dq_w = sum_{b into w} DQ_b + D_w (v_w . dy_w) k_w and dD_w = (q_w . k_w)(v_w . dy_w)
template <typename scalar_t, typename acc_t>
PLSTM_TARGET inline void readout_grad_item(const P<scalar_t, acc_t>& p, int64_t w, int64_t h,
                                           const int64_t* eb, int64_t d) {
  const int64_t H = p.H, K = p.K, V = p.V;
  acc_t* __restrict__ dq = thread_scratch<acc_t>(K);
  std::fill(dq, dq + K, acc_t(0));
  for (int64_t j = 0; j < d; ++j) {
    const acc_t* __restrict__ e = p.DQ + (eb[j] * H + h) * K;
    for (int64_t i = 0; i < K; ++i) dq[i] += e[i];
  }
  const scalar_t* __restrict__ qw = p.q + (w * H + h) * K;
  const scalar_t* __restrict__ kw = p.k + (w * H + h) * K;
  const acc_t vdy_w = lane_dot<acc_t>(p.v + (w * H + h) * V, p.dy + (w * H + h) * V, V);
  const acc_t dvdy = static_cast<acc_t>(p.D[w * H + h]) * vdy_w;
  p.dD[w * H + h] = static_cast<scalar_t>(lane_dot<acc_t>(qw, kw, K) * vdy_w);
  scalar_t* __restrict__ o = p.dq + (w * H + h) * K;
  for (int64_t i = 0; i < K; ++i) {
    o[i] = static_cast<scalar_t>(dq[i] + dvdy * static_cast<acc_t>(kw[i]));
  }
}

// The edges of node x in ptr / edge and their other ends (end_of[b]), gathered once for all
// heads: 2 deg indices in thread-local scratch, the ends after the edges.
PLSTM_TARGET inline const int64_t* edge_ends(const int64_t* ptr, const int64_t* edge,
                                             const int64_t* end_of, int64_t x) {
  const int64_t j0 = ptr[x], d = ptr[x + 1] - j0;
  int64_t* ix = thread_scratch<int64_t>(2 * d);
  for (int64_t j = 0; j < d; ++j) ix[j] = edge[j0 + j];
  for (int64_t j = 0; j < d; ++j) ix[d + j] = end_of[ix[j]];
  return ix;
}

// ranges of items (what the drivers call through function pointers). Items share a node's
// edge indices and cache lines across its heads: in a level pass, item it in [b, end) is node
// node_order[lo + it / groups] with the heads of group it % groups (groups > 1 only to give
// the threads of a narrow level enough items; the results do not depend on it); in the
// readout pass item w is node w with all heads.
PLSTM_TARGET inline void head_range(int64_t H, int64_t groups, int64_t g, int64_t* h0,
                                    int64_t* h1) {
  *h0 = g * H / groups;
  *h1 = (g + 1) * H / groups;
}

// The two level passes: the forward pulls over each node's in-edges, the carried backward
// pass over its out-edges; the data of each next head is prefetched while a head computes.
template <bool Forward, typename scalar_t, typename acc_t>
PLSTM_TARGET void level_items(const P<scalar_t, acc_t>& p, int64_t lo, int64_t groups,
                              int64_t b, int64_t end) {
  const int64_t* ptr = Forward ? p.in_ptr : p.out_ptr;
  const int64_t* edge = Forward ? p.in_edge : p.out_edge;
  const int64_t* end_of = Forward ? p.edge_src : p.edge_dst;
  for (int64_t it = b; it < end; ++it) {
    const int64_t n = p.node_order[lo + it / groups], d = ptr[n + 1] - ptr[n];
    int64_t h0, h1;
    head_range(p.H, groups, it % groups, &h0, &h1);
    const int64_t* ix = edge_ends(ptr, edge, end_of, n);
    prefetch_item<Forward>(p, n, h0, ix, ix + d, d);
    for (int64_t h = h0; h < h1; ++h) {
      if (h + 1 < h1) prefetch_item<Forward>(p, n, h + 1, ix, ix + d, d);
      if constexpr (Forward) {
        forward_item(p, n, h, ix, ix + d, d);
      } else {
        carry_grad_item(p, n, h, ix, ix + d, d);
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
PLSTM_TARGET void readout_grad_items(const P<scalar_t, acc_t>& p, int64_t b, int64_t end) {
  for (int64_t w = b; w < end; ++w) {
    const int64_t j0 = p.in_ptr[w], d = p.in_ptr[w + 1] - j0;
    for (int64_t j = 0; j < d; ++j) prefetch_span(p.DQ + p.in_edge[j0 + j] * p.H * p.K, p.H * p.K);
    for (int64_t h = 0; h < p.H; ++h) readout_grad_item(p, w, h, p.in_edge + j0, d);
  }
}

}  // namespace PLSTM_ISA
