// Masked vocab-parallel cross-entropy kernels. Torch-free (only CUDA headers): compiles in seconds with nvcc, and
// binding.cpp (the only file that includes torch) calls the launchers declared in masked_cross_entropy.h.
//
// One block per row. Each row is split into an unaligned head, a body of 16-byte vectors (8 bf16/fp16 or 4 fp32
// values) and a tail, so any row length and row offset works; the body is read kUnroll vectors per thread at a time
// (several independent 16-byte loads in flight before the first use). Masked rows (weight == 0) return before any
// logits load; in the backward they get zeros written without reading the logits.
//
// Memory traffic per logit (bf16): forward 2 bytes read; backward 2 read + 2 written; forward_backward (TP = 1)
// 2 + 2 read (the second read of a row may hit L2) + 2 written.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "masked_cross_entropy.h"
#include "cross_entropy_math.h"

namespace cross_entropy {
namespace {

constexpr int kUnroll = 4;
constexpr int kMaxThreads = 512;

template <typename T>
struct Vec;
template <>
struct Vec<__nv_bfloat16> {
  static constexpr int n = 8;
};
template <>
struct Vec<__half> {
  static constexpr int n = 8;
};
template <>
struct Vec<float> {
  static constexpr int n = 4;
};

__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(float v) { return v; }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }

template <typename T>
__device__ __forceinline__ void unpack_vec(const uint4& r, float* x);
template <>
__device__ __forceinline__ void unpack_vec<__nv_bfloat16>(const uint4& r, float* x) {
  const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    x[2 * i] = __uint_as_float(w[i] << 16);
    x[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}
template <>
__device__ __forceinline__ void unpack_vec<__half>(const uint4& r, float* x) {
  const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __half2 h;
    memcpy(&h, &w[i], sizeof(h));
    const float2 f = __half22float2(h);
    x[2 * i] = f.x;
    x[2 * i + 1] = f.y;
  }
}
template <>
__device__ __forceinline__ void unpack_vec<float>(const uint4& r, float* x) {
  x[0] = __uint_as_float(r.x);
  x[1] = __uint_as_float(r.y);
  x[2] = __uint_as_float(r.z);
  x[3] = __uint_as_float(r.w);
}

template <typename T>
__device__ __forceinline__ uint4 pack_vec(const float* x);
template <>
__device__ __forceinline__ uint4 pack_vec<__nv_bfloat16>(const float* x) {
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(x[2 * i], x[2 * i + 1]);  // .x = low half = lower address
    memcpy(&w[i], &h, sizeof(uint32_t));
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}
template <>
__device__ __forceinline__ uint4 pack_vec<__half>(const float* x) {
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __half2 h = __floats2half2_rn(x[2 * i], x[2 * i + 1]);
    memcpy(&w[i], &h, sizeof(uint32_t));
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}
template <>
__device__ __forceinline__ uint4 pack_vec<float>(const float* x) {
  return make_uint4(__float_as_uint(x[0]), __float_as_uint(x[1]), __float_as_uint(x[2]), __float_as_uint(x[3]));
}

// Device row accessor for the loops in cross_entropy_math.h. kReadOnly: the buffer is not written by this kernel (loads
// go through the non-coherent path); otherwise plain loads, since the gradient may be written in place over the logits.
template <typename T, bool kReadOnly>
struct DevRow {
  using Raw = uint4;
  const T* p;     // row start
  const T* body;  // first 16-byte aligned element
  __device__ __forceinline__ Raw load(int64_t i) const {
    const uint4* v = reinterpret_cast<const uint4*>(body) + i;
    if constexpr (kReadOnly) {
      return __ldg(v);
    } else {
      return *v;
    }
  }
  __device__ __forceinline__ void unpack(const Raw& r, float* x) const { unpack_vec<T>(r, x); }
  __device__ __forceinline__ float scalar(int64_t j) const { return to_float(p[j]); }
};

template <typename T>
struct DevOut {
  T* p;
  T* body;
  __device__ __forceinline__ void store(int64_t j, float v) { p[j] = from_float<T>(v); }
  __device__ __forceinline__ void store_vec(int64_t i, const float* v) {
    reinterpret_cast<uint4*>(body)[i] = pack_vec<T>(v);
  }
  __device__ __forceinline__ void store_vec_zero(int64_t i) { reinterpret_cast<uint4*>(body)[i] = make_uint4(0, 0, 0, 0); }
};

template <typename T>
__device__ __forceinline__ RowSplit split_of(const void* p, int64_t n) {
  return split_row(static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)), n, static_cast<int>(sizeof(T)));
}

// Reduce (st, sum_x) over the block; every thread gets the result. Called at most once per kernel.
template <bool kSmooth>
__device__ __forceinline__ void block_reduce(RowStat& st, float& sum_x) {
  __shared__ float sm_m[32], sm_s[32], sm_x[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const RowStat o{__shfl_xor_sync(0xffffffffu, st.m, off), __shfl_xor_sync(0xffffffffu, st.s, off)};
    st = stat_merge(st, o);
    if (kSmooth) sum_x += __shfl_xor_sync(0xffffffffu, sum_x, off);
  }
  if (lane == 0) {
    sm_m[warp] = st.m;
    sm_s[warp] = st.s;
    sm_x[warp] = sum_x;
  }
  __syncthreads();
  if (warp == 0) {
    st = lane < nwarps ? RowStat{sm_m[lane], sm_s[lane]} : stat_init();
    sum_x = lane < nwarps ? sm_x[lane] : 0.0f;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const RowStat o{__shfl_xor_sync(0xffffffffu, st.m, off), __shfl_xor_sync(0xffffffffu, st.s, off)};
      st = stat_merge(st, o);
      if (kSmooth) sum_x += __shfl_xor_sync(0xffffffffu, sum_x, off);
    }
    if (lane == 0) {
      sm_m[0] = st.m;
      sm_s[0] = st.s;
      sm_x[0] = sum_x;
    }
  }
  __syncthreads();
  st = RowStat{sm_m[0], sm_s[0]};
  sum_x = sm_x[0];
}

// Row statistics of one row, reduced over the block.
template <typename T, bool kSmooth, bool kReadOnly>
__device__ __forceinline__ void block_row_stats(const T* x, int64_t n, RowStat& st, float& sum_x) {
  const RowSplit sp = split_of<T>(x, n);
  const DevRow<T, kReadOnly> row{x, x + sp.head};
  st = stat_init();
  sum_x = 0.0f;
  thread_row_stats<Vec<T>::n, kUnroll, kSmooth>(row, sp, n, threadIdx.x, blockDim.x, st, sum_x);
  block_reduce<kSmooth>(st, sum_x);
}

template <typename T, bool kSmooth>
__device__ __forceinline__ void block_row_grad(const T* x, T* g, int64_t n, int64_t t, float lse_b, float eps,
                                               float eps_v, float coef) {
  if (!kSmooth) {
    eps = 0.0f;
    eps_v = 0.0f;
  }
  const RowSplit sp = split_of<T>(x, n);
  const DevRow<T, false> row{x, x + sp.head};
  DevOut<T> out{g, g + sp.head};
  if ((reinterpret_cast<uintptr_t>(x) & 15u) == (reinterpret_cast<uintptr_t>(g) & 15u)) {
    thread_row_grad<Vec<T>::n, kUnroll>(row, out, sp, n, t, lse_b, eps, eps_v, coef, threadIdx.x, blockDim.x);
  } else {  // logits and gradient rows aligned differently: scalar path (correct, slower; not the common case)
    thread_row_grad_scalar(row, out, n, t, lse_b, eps, eps_v, coef, threadIdx.x, blockDim.x);
  }
}

template <typename T>
__device__ __forceinline__ void block_row_zero(T* g, int64_t n) {
  const RowSplit sp = split_of<T>(g, n);
  DevOut<T> out{g, g + sp.head};
  thread_row_zero(out, sp, n, threadIdx.x, blockDim.x);
}

template <typename T, bool kSmooth>
__global__ void __launch_bounds__(kMaxThreads) forward_kernel(const CrossEntropyArgs a) {
  const int64_t row = blockIdx.x;
  const float w = a.weights[row];
  constexpr int K = kSmooth ? 3 : 2;
  if (w == 0.0f) {  // masked: no logits load; neutral statistics (the caller zeroes the loss)
    if (threadIdx.x == 0) {
      if (a.stats != nullptr) {
#pragma unroll
        for (int k = 0; k < K; ++k) a.stats[row * K + k] = 0.0f;
      }
      if (a.loss != nullptr) {
        a.loss[row] = 0.0f;
        a.lse[row] = 0.0f;
      }
    }
    return;
  }
  const T* x = static_cast<const T*>(a.logits) + row * a.logits_stride;
  const int64_t t = a.target[row] - a.vocab_start;
  float x_t = 0.0f;
  if (threadIdx.x == 0 && t >= 0 && t < a.n_cols) x_t = to_float(x[t]);
  RowStat st;
  float sum_x;
  block_row_stats<T, kSmooth, true>(x, a.n_cols, st, sum_x);
  if (threadIdx.x == 0) {
    const float lse = stat_lse(st);
    if (a.stats != nullptr) {
      a.stats[row * K] = lse;
      a.stats[row * K + 1] = x_t;
      if (kSmooth) a.stats[row * K + 2] = sum_x;
    }
    if (a.loss != nullptr) {
      a.loss[row] = token_loss(lse, x_t, sum_x, kSmooth ? a.eps : 0.0f, a.inv_vocab_full) * w;
      a.lse[row] = lse;
    }
  }
}

template <typename T, bool kSmooth>
__global__ void __launch_bounds__(kMaxThreads) backward_kernel(const CrossEntropyArgs a) {
  const int64_t row = blockIdx.x;
  const float w = a.weights[row];
  T* g = static_cast<T*>(a.grad) + row * a.grad_stride;
  if (w == 0.0f) {
    block_row_zero<T>(g, a.n_cols);
    return;
  }
  const T* x = static_cast<const T*>(a.logits) + row * a.logits_stride;
  const float coef = a.grad_loss[row] * w;
  const float lse_b = a.lse_in[row] * kLog2e;
  const int64_t t = a.target[row] - a.vocab_start;
  block_row_grad<T, kSmooth>(x, g, a.n_cols, t, lse_b, a.eps, a.eps * a.inv_vocab_full, coef);
}

template <typename T, bool kSmooth>
__global__ void __launch_bounds__(kMaxThreads) forward_backward_kernel(const CrossEntropyArgs a) {
  const int64_t row = blockIdx.x;
  const float w = a.weights[row];
  T* g = static_cast<T*>(a.grad) + row * a.grad_stride;
  if (w == 0.0f) {
    block_row_zero<T>(g, a.n_cols);
    if (threadIdx.x == 0) {
      a.loss[row] = 0.0f;
      a.lse[row] = 0.0f;
    }
    return;
  }
  const T* x = static_cast<const T*>(a.logits) + row * a.logits_stride;
  const int64_t t = a.target[row] - a.vocab_start;
  float x_t = 0.0f;
  if (threadIdx.x == 0 && t >= 0 && t < a.n_cols) x_t = to_float(x[t]);
  RowStat st;
  float sum_x;
  // The block reduction's barriers also order every read of pass 1 before the in-place writes of pass 2.
  block_row_stats<T, kSmooth, false>(x, a.n_cols, st, sum_x);
  const float lse = stat_lse(st);
  if (threadIdx.x == 0) {
    a.loss[row] = token_loss(lse, x_t, sum_x, kSmooth ? a.eps : 0.0f, a.inv_vocab_full) * w;
    a.lse[row] = lse;
  }
  const float coef = *a.scale * w;
  block_row_grad<T, kSmooth>(x, g, a.n_cols, t, lse * kLog2e, a.eps, a.eps * a.inv_vocab_full, coef);
}

template <template <typename, bool> class Launch>
cudaError_t dispatch(const CrossEntropyArgs& a, cudaStream_t stream) {
  if (a.n_rows == 0) return cudaSuccess;
  const int threads = a.threads > 0 ? a.threads : default_threads(a.n_cols, a.dtype);
  if (threads % 32 != 0 || threads > kMaxThreads || a.n_rows > 0x7fffffffLL) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(a.n_rows));
  const bool smooth = a.eps != 0.0f;
  switch (a.dtype) {
    case kBFloat16:
      smooth ? Launch<__nv_bfloat16, true>::run(a, grid, threads, stream)
             : Launch<__nv_bfloat16, false>::run(a, grid, threads, stream);
      break;
    case kFloat16:
      smooth ? Launch<__half, true>::run(a, grid, threads, stream) : Launch<__half, false>::run(a, grid, threads, stream);
      break;
    case kFloat32:
      smooth ? Launch<float, true>::run(a, grid, threads, stream) : Launch<float, false>::run(a, grid, threads, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template <typename T, bool S>
struct LaunchForward {
  static void run(const CrossEntropyArgs& a, dim3 grid, int threads, cudaStream_t s) {
    forward_kernel<T, S><<<grid, threads, 0, s>>>(a);
  }
};
template <typename T, bool S>
struct LaunchBackward {
  static void run(const CrossEntropyArgs& a, dim3 grid, int threads, cudaStream_t s) {
    backward_kernel<T, S><<<grid, threads, 0, s>>>(a);
  }
};
template <typename T, bool S>
struct LaunchForwardBackward {
  static void run(const CrossEntropyArgs& a, dim3 grid, int threads, cudaStream_t s) {
    forward_backward_kernel<T, S><<<grid, threads, 0, s>>>(a);
  }
};

}  // namespace

int default_threads(int64_t n_cols, int dtype) {
  const int64_t nvec = n_cols / (dtype == kFloat32 ? 4 : 8);
  if (nvec >= 2048) return 512;
  if (nvec >= 512) return 256;
  return 128;
}

cudaError_t launch_forward(const CrossEntropyArgs& a, cudaStream_t stream) {
  return dispatch<LaunchForward>(a, stream);
}
cudaError_t launch_backward(const CrossEntropyArgs& a, cudaStream_t stream) {
  return dispatch<LaunchBackward>(a, stream);
}
cudaError_t launch_forward_backward(const CrossEntropyArgs& a, cudaStream_t stream) {
  return dispatch<LaunchForwardBackward>(a, stream);
}

}  // namespace cross_entropy
