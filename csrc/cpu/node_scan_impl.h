// The work items of the CPU node-level scan, compiled once per instruction set.
//
// Included twice by node_scan_kernel.cpp, with PLSTM_ISA (a namespace) and PLSTM_TARGET (a
// function attribute) set for the baseline ISA and for AVX2+FMA. No include guard on purpose;
// it relies on the includes, P and thread_scratch of node_scan_kernel.cpp. The loops over V
// run on __restrict__ rows so that the compiler vectorises them (they are the whole cost).
// NOLINT(build/header_guard)

namespace PLSTM_ISA {

constexpr int kNodeLanes = 8;

// sum_x a[x] b[x] with kNodeLanes independent partial sums added in a fixed tree: vectorised
// without reassociation, so deterministic.
template <typename acc_t, typename a_t, typename b_t>
PLSTM_TARGET inline acc_t lane_dot(const a_t* __restrict__ a, const b_t* __restrict__ b,
                                   int64_t n) {
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

template <typename scalar_t, typename acc_t>
PLSTM_TARGET inline acc_t dot(const scalar_t* a, const scalar_t* b, int64_t n) {
  return lane_dot<acc_t>(a, b, n);
}

// forward: row += c v_u + t h, y += r h for the row h of H_u
template <typename acc_t, typename scalar_t>
PLSTM_TARGET inline void forward_row(const acc_t* __restrict__ hrow,
                                     const scalar_t* __restrict__ vu, acc_t* __restrict__ row,
                                     acc_t* __restrict__ y, acc_t c, acc_t t, acc_t r,
                                     int64_t V) {
  for (int64_t x = 0; x < V; ++x) {
    const acc_t hv = hrow[x];
    row[x] += c * static_cast<acc_t>(vu[x]) + t * hv;
    y[x] += r * hv;
  }
}

// forward item: node w, head h
template <typename scalar_t, typename acc_t>
PLSTM_TARGET inline void forward_item(const P<scalar_t, acc_t>& p, int64_t w, int64_t h,
                                      acc_t* __restrict__ y) {
  const int64_t H = p.H, K = p.K, V = p.V, KV = p.KV;
  acc_t* __restrict__ Hw = p.Hs + (w * H + h) * KV;
  std::fill(Hw, Hw + KV, acc_t(0));
  std::fill(y, y + V, acc_t(0));
  const scalar_t* __restrict__ qw = p.q + (w * H + h) * K;
  for (int64_t j = p.in_ptr[w]; j < p.in_ptr[w + 1]; ++j) {
    const int64_t b = p.in_edge[j], u = p.edge_src[b];
    const acc_t s = static_cast<acc_t>(p.S[b * H + h]);
    const acc_t m = static_cast<acc_t>(p.M[b * H + h]);
    const acc_t t = static_cast<acc_t>(p.T[u * H + h]) * p.carry_of(b, h);
    const scalar_t* __restrict__ ku = p.k + (u * H + h) * K;
    const scalar_t* __restrict__ vu = p.v + (u * H + h) * V;
    const acc_t* __restrict__ Hu = p.Hs + (u * H + h) * KV;
    const acc_t msqk = m * s * dot<scalar_t, acc_t>(qw, ku, K);
    for (int64_t x = 0; x < V; ++x) y[x] += msqk * static_cast<acc_t>(vu[x]);
    for (int64_t i = 0; i < K; ++i) {
      forward_row(Hu + i * V, vu, Hw + i * V, y, s * static_cast<acc_t>(ku[i]), t,
                  m * t * static_cast<acc_t>(qw[i]), V);
    }
  }
  // the direct term D_w (q_w . k_w) v_w
  const scalar_t* __restrict__ vw = p.v + (w * H + h) * V;
  const acc_t dqk = static_cast<acc_t>(p.D[w * H + h]) *
                    dot<scalar_t, acc_t>(qw, p.k + (w * H + h) * K, K);
  scalar_t* __restrict__ o = p.out + (w * H + h) * V;
  for (int64_t x = 0; x < V; ++x) {
    o[x] = static_cast<scalar_t>(y[x] + dqk * static_cast<acc_t>(vw[x]));
  }
}

// sum of the lanes of part in a fixed tree
template <typename acc_t>
PLSTM_TARGET inline acc_t lane_sum(acc_t* part) {
  for (int w = kNodeLanes / 2; w > 0; w /= 2) {
    for (int r = 0; r < w; ++r) part[r] += part[r + w];
  }
  return part[0];
}

// The inner loops over one row of V, as functions of __restrict__ parameters (which GCC
// honours where it may ignore restrict on local pointers) so that they vectorise without
// run-time alias checks.
// readout: z += q_i h, r += mt h for the row h of H_u
template <typename acc_t>
PLSTM_TARGET inline void readout_row(const acc_t* __restrict__ hrow, acc_t* __restrict__ z,
                                     acc_t* __restrict__ rrow, acc_t qi, acc_t mt, int64_t V) {
  for (int64_t x = 0; x < V; ++x) {
    const acc_t hv = hrow[x];
    z[x] += qi * hv;
    rrow[x] += mt * hv;
  }
}

// carry: d = tw f + mq dy (row of dC_b); F_u += d, A_u += s d, z += d kv
template <typename acc_t, typename scalar_t>
PLSTM_TARGET inline void carry_row(const acc_t* __restrict__ frow,
                                   const scalar_t* __restrict__ dy,
                                   const acc_t* __restrict__ kvrow, acc_t* __restrict__ urow,
                                   acc_t* __restrict__ arow, acc_t* __restrict__ z, acc_t tw,
                                   acc_t mq, acc_t s, int64_t V) {
  for (int64_t x = 0; x < V; ++x) {
    const acc_t d = tw * frow[x] + mq * static_cast<acc_t>(dy[x]);
    urow[x] += d;
    arow[x] += s * d;
    z[x] += d * kvrow[x];
  }
}

// the same with a carry factor g_b: F_u += g d, and zh += d h for dg_b = T_u <dC_b, H_u>
template <typename acc_t, typename scalar_t>
PLSTM_TARGET inline void carry_row_scaled(
    const acc_t* __restrict__ frow, const scalar_t* __restrict__ dy,
    const acc_t* __restrict__ kvrow, const acc_t* __restrict__ hrow, acc_t* __restrict__ urow,
    acc_t* __restrict__ arow, acc_t* __restrict__ z, acc_t* __restrict__ zh, acc_t tw, acc_t mq,
    acc_t s, acc_t g, int64_t V) {
  for (int64_t x = 0; x < V; ++x) {
    const acc_t d = tw * frow[x] + mq * static_cast<acc_t>(dy[x]);
    urow[x] += g * d;
    arow[x] += s * d;
    z[x] += d * kvrow[x];
    zh[x] += d * hrow[x];
  }
}

// sum of z[0:n] in a fixed order (lanes, then a tree)
template <typename acc_t>
PLSTM_TARGET inline acc_t fixed_sum(const acc_t* __restrict__ z, int64_t n) {
  acc_t part[kNodeLanes] = {};
  int64_t x = 0;
  for (; x + kNodeLanes <= n; x += kNodeLanes) {
    for (int r = 0; r < kNodeLanes; ++r) part[r] += z[x + r];
  }
  for (int r = 0; x < n; ++x, ++r) part[r] += z[x];
  return lane_sum(part);
}

// backward pass (a): node w, head h, over its in-edges. The per-edge reduction
// q_w^T H_u dy_w goes through the column sums z = H_u^T q_w (no reduction per row); the
// H_u dy_w part of dq_w is one matrix-vector product per node, of R_w = sum_b M_b T_u H_u.
template <typename scalar_t, typename acc_t>
PLSTM_TARGET inline void readout_grad_item(const P<scalar_t, acc_t>& p, int64_t w, int64_t h,
                                           acc_t* buf) {
  const int64_t H = p.H, K = p.K, V = p.V, KV = p.KV;
  acc_t* __restrict__ dq = buf;
  acc_t* __restrict__ R = buf + K;
  acc_t* __restrict__ z = buf + K + KV;
  std::fill(buf, buf + K + KV, acc_t(0));
  const scalar_t* __restrict__ qw = p.q + (w * H + h) * K;
  const scalar_t* __restrict__ dyw = p.dy + (w * H + h) * V;
  for (int64_t j = p.in_ptr[w]; j < p.in_ptr[w + 1]; ++j) {
    const int64_t b = p.in_edge[j], u = p.edge_src[b];
    const acc_t s = static_cast<acc_t>(p.S[b * H + h]);
    const acc_t m = static_cast<acc_t>(p.M[b * H + h]);
    const acc_t t = static_cast<acc_t>(p.T[u * H + h]) * p.carry_of(b, h);
    const scalar_t* __restrict__ ku = p.k + (u * H + h) * K;
    const scalar_t* __restrict__ vu = p.v + (u * H + h) * V;
    const acc_t* __restrict__ Hu = p.Hs + (u * H + h) * KV;
    const acc_t vdy = dot<scalar_t, acc_t>(vu, dyw, V);
    const acc_t mt = m * t;
    std::fill(z, z + V, acc_t(0));  // z = H_u^T q_w, then q_w^T H_u dy_w = z . dy_w
    for (int64_t i = 0; i < K; ++i) {
      readout_row(Hu + i * V, z, R + i * V, static_cast<acc_t>(qw[i]), mt, V);
    }
    p.dM[b * H + h] =
        static_cast<scalar_t>(s * dot<scalar_t, acc_t>(qw, ku, K) * vdy +
                               t * lane_dot<acc_t>(z, dyw, V));
    const acc_t msv = m * s * vdy;
    for (int64_t i = 0; i < K; ++i) dq[i] += msv * static_cast<acc_t>(ku[i]);
  }
  // the direct term D_w (q_w . k_w) v_w: its share of dq_w, and dD_w
  const scalar_t* __restrict__ kw = p.k + (w * H + h) * K;
  const acc_t vdy_w = dot<scalar_t, acc_t>(p.v + (w * H + h) * V, dyw, V);
  const acc_t dvdy = static_cast<acc_t>(p.D[w * H + h]) * vdy_w;
  p.dD[w * H + h] = static_cast<scalar_t>(dot<scalar_t, acc_t>(qw, kw, K) * vdy_w);
  scalar_t* __restrict__ o = p.dq + (w * H + h) * K;
  for (int64_t i = 0; i < K; ++i) {
    o[i] = static_cast<scalar_t>(dq[i] + lane_dot<acc_t>(R + i * V, dyw, V) +
                                 dvdy * static_cast<acc_t>(kw[i]));
  }
}

// backward pass (b): node u, head h, over its out-edges. dS_b = <dC_b, k_u v_u^T> goes
// through column sums; dk_u and dv_u are products of A_u = sum_b S_b dC_b, once per node.
template <typename scalar_t, typename acc_t>
PLSTM_TARGET inline void carry_grad_item(const P<scalar_t, acc_t>& p, int64_t u, int64_t h,
                                         acc_t* buf) {
  const int64_t H = p.H, K = p.K, V = p.V, KV = p.KV;
  acc_t* __restrict__ A = buf;
  acc_t* __restrict__ kv = buf + KV;
  acc_t* __restrict__ z = buf + 2 * KV + V;
  acc_t* __restrict__ zh = buf + 2 * KV + 2 * V;
  const acc_t* __restrict__ Hu = p.Hs + (u * H + h) * KV;
  const acc_t tu = static_cast<acc_t>(p.T[u * H + h]);
  acc_t* __restrict__ Fu = p.F + (u * H + h) * KV;
  std::fill(Fu, Fu + KV, acc_t(0));
  std::fill(A, A + KV, acc_t(0));
  const scalar_t* __restrict__ ku = p.k + (u * H + h) * K;
  const scalar_t* __restrict__ vu = p.v + (u * H + h) * V;
  for (int64_t i = 0; i < K; ++i) {
    const acc_t ki = static_cast<acc_t>(ku[i]);
    for (int64_t x = 0; x < V; ++x) kv[i * V + x] = ki * static_cast<acc_t>(vu[x]);
  }
  for (int64_t j = p.out_ptr[u]; j < p.out_ptr[u + 1]; ++j) {
    const int64_t b = p.out_edge[j], w = p.edge_dst[b];
    const acc_t s = static_cast<acc_t>(p.S[b * H + h]);
    const acc_t m = static_cast<acc_t>(p.M[b * H + h]);
    const acc_t tw = static_cast<acc_t>(p.T[w * H + h]);
    const acc_t* __restrict__ Fw = p.F + (w * H + h) * KV;
    const scalar_t* __restrict__ qw = p.q + (w * H + h) * K;
    const scalar_t* __restrict__ dyw = p.dy + (w * H + h) * V;
    std::fill(z, z + V, acc_t(0));  // column sums of dC_b * k_u v_u^T
    if (p.carry == nullptr) {
      for (int64_t i = 0; i < K; ++i) {  // row i of dC_b = T_w F_w + M_b q_w dy_w^T
        carry_row(Fw + i * V, dyw, kv + i * V, Fu + i * V, A + i * V, z, tw,
                  m * static_cast<acc_t>(qw[i]), s, V);
      }
    } else {
      const acc_t g = static_cast<acc_t>(p.carry[b * H + h]);
      std::fill(zh, zh + V, acc_t(0));
      for (int64_t i = 0; i < K; ++i) {
        carry_row_scaled(Fw + i * V, dyw, kv + i * V, Hu + i * V, Fu + i * V, A + i * V, z,
                         zh, tw, m * static_cast<acc_t>(qw[i]), s, g, V);
      }
      p.dcarry[b * H + h] = static_cast<scalar_t>(tu * fixed_sum(zh, V));
    }
    p.dS[b * H + h] = static_cast<scalar_t>(fixed_sum(z, V));
  }
  p.dT[u * H + h] = static_cast<scalar_t>(lane_dot<acc_t>(Fu, Hu, KV));
  scalar_t* __restrict__ dk = p.dk + (u * H + h) * K;
  scalar_t* __restrict__ dv = p.dv + (u * H + h) * V;
  acc_t* __restrict__ gk = buf + 2 * KV;  // A^T k_u
  std::fill(gk, gk + V, acc_t(0));
  // with the direct term's shares: D_u (v_u . dy_u) q_u and D_u (q_u . k_u) dy_u
  const scalar_t* __restrict__ qu = p.q + (u * H + h) * K;
  const scalar_t* __restrict__ dyu = p.dy + (u * H + h) * V;
  const acc_t du = static_cast<acc_t>(p.D[u * H + h]);
  const acc_t dvdy = du * dot<scalar_t, acc_t>(vu, dyu, V);
  const acc_t dqk = du * dot<scalar_t, acc_t>(qu, ku, K);
  for (int64_t i = 0; i < K; ++i) {
    dk[i] = static_cast<scalar_t>(lane_dot<acc_t>(A + i * V, vu, V) +
                                  dvdy * static_cast<acc_t>(qu[i]));
    const acc_t ki = static_cast<acc_t>(ku[i]);
    for (int64_t x = 0; x < V; ++x) gk[x] += ki * A[i * V + x];
  }
  for (int64_t x = 0; x < V; ++x) {
    dv[x] = static_cast<scalar_t>(gk[x] + dqk * static_cast<acc_t>(dyu[x]));
  }
}

// ranges of items (what the drivers call through function pointers): items it in [b, end)
// are (node node_order[lo + it / H], head it % H) of one level, or (node it / H, head it % H)
template <typename scalar_t, typename acc_t>
PLSTM_TARGET void forward_items(const P<scalar_t, acc_t>& p, int64_t lo, int64_t b,
                                int64_t end) {
  acc_t* y = thread_scratch<acc_t>(p.V);
  for (int64_t it = b; it < end; ++it) forward_item(p, p.node_order[lo + it / p.H], it % p.H, y);
}

template <typename scalar_t, typename acc_t>
PLSTM_TARGET void readout_grad_items(const P<scalar_t, acc_t>& p, int64_t b, int64_t end) {
  acc_t* buf = thread_scratch<acc_t>(p.K + p.KV + p.V);
  for (int64_t it = b; it < end; ++it) readout_grad_item(p, it / p.H, it % p.H, buf);
}

template <typename scalar_t, typename acc_t>
PLSTM_TARGET void carry_grad_items(const P<scalar_t, acc_t>& p, int64_t lo, int64_t b,
                                   int64_t end) {
  acc_t* buf = thread_scratch<acc_t>(2 * p.KV + 3 * p.V);
  for (int64_t it = b; it < end; ++it) {
    carry_grad_item(p, p.node_order[lo + it / p.H], it % p.H, buf);
  }
}

}  // namespace PLSTM_ISA
