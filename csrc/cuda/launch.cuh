// Launch shapes and the deterministic block reduction shared by the CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>

namespace plstm_graph {
namespace cuda {

constexpr int64_t kMaxGrid = 1 << 20;  // blocks per launch; kernels loop over the rest

// threads per block: the smallest power of two >= n, within [32, cap]
inline int pow2_threads(int64_t n, int cap = 256) {
  int t = 32;
  while (t < n && t < cap) t *= 2;
  return t;
}

inline unsigned grid_for(int64_t items) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(items, kMaxGrid)));
}

// Tree sum over the block (blockDim.x a power of two, sh holding blockDim.x values): fixed
// shape, so deterministic. Every thread of the block must call it.
template <typename acc_t>
__device__ acc_t block_sum(acc_t v, acc_t* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  const acc_t r = sh[0];
  __syncthreads();
  return r;
}

template <typename T>
const T* cptr(const at::Tensor& t) {
  return t.data_ptr<T>();
}
inline const int64_t* iptr(const at::Tensor& t) { return t.data_ptr<int64_t>(); }

}  // namespace cuda
}  // namespace plstm_graph
