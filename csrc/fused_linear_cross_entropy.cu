// Fused LM head + masked cross-entropy kernels: logits are computed tile by tile in registers/shared memory and never
// written out whole; unmasked rows are read through a device-side compaction (order, count) and tiles past count return
// before any load. Torch-free (CUDA headers only); the C ABI is declared in fused_linear_cross_entropy.h and loaded
// with ctypes by megatron_tf/ops/flce_cuda.py.
//
// One tensor-core GEMM kernel (nvcuda::wmma, 16x16x16 bf16/fp16 fragments, fp32 accumulation) with a 128 x 64 output
// tile per block of 8 warps (each warp 32 x 32), a K step of 32 and four epilogues:
//   kStats   : forward; the block walks a contiguous range of vocabulary tiles with an online log-sum-exp per row
//   kDlogits : backward; d = (softmax - eps/V - (1-eps) onehot) * coef, rounded once to the input dtype
//   kAccum   : fp32 accumulation of the hidden gradient over vocabulary chunks
//   kStore   : the weight gradient of a vocabulary chunk (the whole row reduction in one kernel: one rounding)
// A(m, k) and B(k, n) are read either along k (row-major hidden / weight rows) or across k (the dlogits buffer, the
// weight in hidden-gradient layout), optionally through a row index (the compaction). 16-byte loads are used when the
// base pointer and leading dimension allow it, with element loads at the tile edges.
//
// This is a first, simple version: single-buffered shared memory (no cp.async / TMA pipeline, no wgmma). Its
// speed is measured by benchmarks/bench_fused_linear_cross_entropy.py on the GPU; no number is claimed here.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <type_traits>

#include "fused_linear_cross_entropy.h"

namespace flce {
namespace {

using namespace nvcuda;

constexpr int BM = 128, BN = 64, BK = 32, kThreads = 256, kPad = 8, kCPad = 4;
constexpr int kLdaK = BK + kPad, kLdaM = BM + kPad, kLdbK = BK + kPad, kLdbN = BN + kPad, kLdc = BN + kCPad;
constexpr int kSmemA = BM * kLdaK * 2 > BK * kLdaM * 2 ? BM * kLdaK * 2 : BK * kLdaM * 2;  // bytes
constexpr int kSmemB = BN * kLdbK * 2 > BK * kLdbN * 2 ? BN * kLdbK * 2 : BK * kLdbN * 2;
constexpr int kSmemC = BM * kLdc * 4;
constexpr int kSmem = 2 * (kSmemA + kSmemB) > kSmemC ? 2 * (kSmemA + kSmemB) : kSmemC;  // two stages | C tile
static_assert(kSmemA % 128 == 0 && kSmemB % 128 == 0, "stages must stay 128-byte aligned");
static_assert(kSmem <= 48 * 1024, "static shared memory limit");

enum Epi : int { kStats = 0, kDlogits = 1, kAccum = 2, kStore = 3 };

struct GemmArgs {
  const uint16_t* a = nullptr;  // A(m, k): a[rows(m) * lda + k] (k-contiguous) or a[k * lda + m]
  int64_t lda = 0;
  const int64_t* a_rows = nullptr;
  const uint16_t* b = nullptr;  // B(k, n): b[n * ldb + k] (k-contiguous) or b[rows(k) * ldb + n]
  int64_t ldb = 0;
  const int64_t* b_rows = nullptr;
  int64_t m = 0, n = 0, k = 0;
  const int64_t* m_count = nullptr;  // device bound on m (compaction count), or null
  const int64_t* k_count = nullptr;  // device bound on k, or null
  bool vec_a = false, vec_b = false;
  float* part = nullptr;  // kStats: part[split * m + row]
  int tiles_per_split = 1;
  const float* lse = nullptr;  // kDlogits
  const float* coef = nullptr;
  const int64_t* target_c = nullptr;
  int64_t col0 = 0;
  float eps_over_v = 0.0f, one_minus_eps = 1.0f;
  void* c = nullptr;  // kDlogits / kStore: dtype [m, ldc]; kAccum: float [m, ldc]
  int64_t ldc = 0;
};

__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

__device__ __forceinline__ int clamp8(int64_t v) { return v <= 0 ? 0 : (v >= 8 ? 8 : static_cast<int>(v)); }

__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem_src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Eight 16-bit values into shared memory: one 16-byte load when all are valid and aligned (asynchronous with
// cp.async in the pipelined variant), else element loads with zero fill (tile edges, rows past the compaction count).
template <bool PIPE>
__device__ __forceinline__ void load8(uint16_t* dst, const uint16_t* src, int valid, bool vec) {
  if (valid == 8 && vec) {
    if (PIPE)
      cp_async16(dst, src);
    else
      *reinterpret_cast<uint4*>(dst) = __ldg(reinterpret_cast<const uint4*>(src));
    return;
  }
  if (valid == 0) {
    *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
    return;
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) dst[i] = i < valid ? src[i] : static_cast<uint16_t>(0);
}

template <bool AK, bool BKc, bool PIPE>
__device__ __forceinline__ void load_tiles(const GemmArgs& g, uint16_t* As, uint16_t* Bs, const int64_t* a_off,
                                           int64_t m0, int64_t n0, int64_t k0, int64_t m_eff, int64_t k_eff) {
  const int tid = threadIdx.x;
  if (AK) {  // As[m][k]
    for (int c = tid; c < BM * (BK / 8); c += kThreads) {
      const int r = c / (BK / 8), kc = (c % (BK / 8)) * 8;
      const int64_t off = a_off[r];
      load8<PIPE>(As + r * kLdaK + kc, g.a + (off < 0 ? 0 : off + k0 + kc),
                  off < 0 ? 0 : clamp8(k_eff - k0 - kc), g.vec_a);
    }
  } else {  // As[k][m], A(m, k) at a[k * lda + m]
    for (int c = tid; c < BK * (BM / 8); c += kThreads) {
      const int kr = c / (BM / 8), mc = (c % (BM / 8)) * 8;
      const int64_t k = k0 + kr, m = m0 + mc;
      const bool ok = k < k_eff;
      load8<PIPE>(As + kr * kLdaM + mc, g.a + (ok ? k * g.lda + m : 0), ok ? clamp8(m_eff - m) : 0, g.vec_a);
    }
  }
  if (BKc) {  // Bs[n][k], B(k, n) at b[n * ldb + k]
    for (int c = tid; c < BN * (BK / 8); c += kThreads) {
      const int r = c / (BK / 8), kc = (c % (BK / 8)) * 8;
      const int64_t n = n0 + r, k = k0 + kc;
      const bool ok = n < g.n;
      load8<PIPE>(Bs + r * kLdbK + kc, g.b + (ok ? n * g.ldb + k : 0), ok ? clamp8(k_eff - k) : 0, g.vec_b);
    }
  } else {  // Bs[k][n], B(k, n) at b[rows(k) * ldb + n]
    for (int c = tid; c < BK * (BN / 8); c += kThreads) {
      const int kr = c / (BN / 8), nc = (c % (BN / 8)) * 8;
      const int64_t k = k0 + kr, n = n0 + nc;
      const bool ok = k < k_eff;
      const int64_t row = ok ? (g.b_rows ? g.b_rows[k] : k) : 0;
      load8<PIPE>(Bs + kr * kLdbN + nc, g.b + (ok ? row * g.ldb + n : 0), ok ? clamp8(g.n - n) : 0, g.vec_b);
    }
  }
}

using Acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// acc += the BK-deep product of the staged A and B tiles (each warp: a 32 x 32 block, 2 x 2 fragments).
template <typename T, bool AK, bool BKc>
__device__ __forceinline__ void mma_stage(const uint16_t* As, const uint16_t* Bs, Acc (&acc)[2][2]) {
  using ALayout = typename std::conditional<AK, wmma::row_major, wmma::col_major>::type;
  using BLayout = typename std::conditional<BKc, wmma::col_major, wmma::row_major>::type;
  const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
  const T* At = reinterpret_cast<const T*>(As);
  const T* Bt = reinterpret_cast<const T*>(Bs);
#pragma unroll
  for (int kk = 0; kk < BK; kk += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, ALayout> fa[2];
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, BLayout> fb[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int mr = wm * 32 + i * 16;
      wmma::load_matrix_sync(fa[i], AK ? At + mr * kLdaK + kk : At + kk * kLdaM + mr, AK ? kLdaK : kLdaM);
    }
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int nr = wn * 32 + j * 16;
      wmma::load_matrix_sync(fb[j], BKc ? Bt + nr * kLdbK + kk : Bt + kk * kLdbN + nr, BKc ? kLdbK : kLdbN);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
  }
}

// One 128 x 64 output tile into Cs (fp32, aliasing the operand buffers). PIPE: two shared-memory stages filled
// with cp.async, the loads of step k + 1 in flight during the MMAs of step k; otherwise one stage, load then compute.
template <typename T, bool AK, bool BKc, bool PIPE>
__device__ __forceinline__ void mma_tile(const GemmArgs& g, unsigned char* smem, const int64_t* a_off, int64_t m0,
                                         int64_t n0, int64_t m_eff, int64_t k_eff, float* Cs) {
  Acc acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  // stage st: A at smem + st * kSmemA, B at smem + 2 * kSmemA + st * kSmemB (arithmetic, not an indexed array:
  // a dynamically indexed pointer array would live in local memory)
  auto a_st = [smem](int st) { return reinterpret_cast<uint16_t*>(smem + st * kSmemA); };
  auto b_st = [smem](int st) { return reinterpret_cast<uint16_t*>(smem + 2 * kSmemA + st * kSmemB); };
  const int64_t nk = (k_eff + BK - 1) / BK;
  if (PIPE) {
    if (nk > 0) {
      load_tiles<AK, BKc, true>(g, a_st(0), b_st(0), a_off, m0, n0, 0, m_eff, k_eff);
      cp_async_commit();
    }
    for (int64_t it = 0; it < nk; ++it) {
      const int cur = static_cast<int>(it & 1);
      if (it + 1 < nk) {
        load_tiles<AK, BKc, true>(g, a_st(cur ^ 1), b_st(cur ^ 1), a_off, m0, n0, (it + 1) * BK, m_eff, k_eff);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      mma_stage<T, AK, BKc>(a_st(cur), b_st(cur), acc);
      __syncthreads();  // the stage computed here is refilled in the next iteration
    }
  } else {
    for (int64_t it = 0; it < nk; ++it) {
      load_tiles<AK, BKc, false>(g, a_st(0), b_st(0), a_off, m0, n0, it * BK, m_eff, k_eff);
      __syncthreads();
      mma_stage<T, AK, BKc>(a_st(0), b_st(0), acc);
      __syncthreads();
    }
  }
  const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * kLdc + wn * 32 + j * 16, acc[i][j], kLdc,
                              wmma::mem_row_major);
  __syncthreads();
}

template <typename T, bool AK, bool BKc, int EPI, bool PIPE>
__global__ void __launch_bounds__(kThreads) gemm_kernel(const GemmArgs g) {
  __shared__ __align__(128) unsigned char smem[kSmem];
  __shared__ int64_t a_off[BM];
  float* Cs = reinterpret_cast<float*>(smem);
  const int64_t m_eff = g.m_count ? (*g.m_count < g.m ? *g.m_count : g.m) : g.m;
  const int64_t k_eff = g.k_count ? (*g.k_count < g.k ? *g.k_count : g.k) : g.k;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM;
  if (m0 >= m_eff) return;  // past the compaction count: no load, no math
  const int tid = threadIdx.x;
  if (AK) {
    for (int r = tid; r < BM; r += kThreads) {
      const int64_t m = m0 + r;
      a_off[r] = m < m_eff ? (g.a_rows ? g.a_rows[m] : m) * g.lda : -1;
    }
    __syncthreads();
  }
  const int64_t n_tiles = (g.n + BN - 1) / BN;
  int64_t t_begin = blockIdx.y, t_end = blockIdx.y + 1;
  if (EPI == kStats) {
    t_begin = static_cast<int64_t>(blockIdx.y) * g.tiles_per_split;
    t_end = t_begin + g.tiles_per_split < n_tiles ? t_begin + g.tiles_per_split : n_tiles;
  }
  float m_run = -INFINITY, s_run = 0.0f;  // kStats: row tid / 2, identical in both threads of a pair
  const int sr = tid >> 1, half = tid & 1;
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t n0 = t * BN;
    mma_tile<T, AK, BKc, PIPE>(g, smem, a_off, m0, n0, m_eff, k_eff, Cs);
    if (EPI == kStats) {
      const int cw = BN / 2;
      float mx = -INFINITY;
      for (int c = half * cw; c < (half + 1) * cw; ++c)
        if (n0 + c < g.n) mx = fmaxf(mx, Cs[sr * kLdc + c]);
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      float s = 0.0f;
      if (mx > -INFINITY)
        for (int c = half * cw; c < (half + 1) * cw; ++c)
          if (n0 + c < g.n) s += expf(Cs[sr * kLdc + c] - mx);
      s += __shfl_xor_sync(0xffffffffu, s, 1);
      if (mx > -INFINITY) {
        const float mn = fmaxf(m_run, mx);
        s_run = s_run * expf(m_run - mn) + s * expf(mx - mn);
        m_run = mn;
      }
    } else {
      for (int e = tid; e < BM * BN; e += kThreads) {
        const int r = e / BN, c = e % BN;
        const int64_t j = m0 + r, col = n0 + c;
        if (j >= m_eff || col >= g.n) continue;
        const float x = Cs[r * kLdc + c];
        if (EPI == kDlogits) {
          const float cf = g.coef[j];
          float d = (expf(x - g.lse[j]) - g.eps_over_v) * cf;
          if (g.col0 + col == g.target_c[j]) d -= g.one_minus_eps * cf;
          reinterpret_cast<T*>(g.c)[j * g.ldc + col] = from_float<T>(d);
        } else if (EPI == kAccum) {
          reinterpret_cast<float*>(g.c)[j * g.ldc + col] += x;
        } else {
          reinterpret_cast<T*>(g.c)[j * g.ldc + col] = from_float<T>(x);
        }
      }
    }
    __syncthreads();  // Cs aliases the operand tiles of the next tile
  }
  if (EPI == kStats && half == 0 && m0 + sr < m_eff)
    g.part[static_cast<int64_t>(blockIdx.y) * g.m + m0 + sr] = s_run > 0.0f ? m_run + logf(s_run) : -INFINITY;
}

template <typename T>
__global__ void target_dot_kernel(const T* hidden, int64_t ld_h, const int64_t* order, const int64_t* count,
                                  const T* weight, int64_t ld_w, const int64_t* target_c, const float* wsum,
                                  int64_t n_rows, int64_t n_vocab, int64_t h, float* x_t, float* sum_x) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (j >= n_rows || j >= *count) return;
  const T* hr = hidden + order[j] * ld_h;
  const int64_t t = target_c[j];
  const bool in = t >= 0 && t < n_vocab;
  float acc = 0.0f, accs = 0.0f;
  for (int64_t k = lane; k < h; k += 32) {
    const float hv = to_float(hr[k]);
    if (in) acc += hv * to_float(weight[t * ld_w + k]);
    if (wsum) accs += hv * wsum[k];
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    acc += __shfl_xor_sync(0xffffffffu, acc, o);
    accs += __shfl_xor_sync(0xffffffffu, accs, o);
  }
  if (lane == 0) {
    x_t[j] = in ? acc : 0.0f;
    if (sum_x) sum_x[j] = accs;
  }
}

thread_local char g_error[512] = "";
int g_pipeline = 1;  // flce_set_pipeline: 1 = cp.async double-buffered GEMM main loop, 0 = single-buffered

int reject(const char* what) {
  snprintf(g_error, sizeof(g_error), "%s", what);
  return -1;
}

bool aligned16(const void* p, int64_t ld) {
  return (reinterpret_cast<uintptr_t>(p) % 16 == 0) && ld % 8 == 0;
}

template <bool AK, bool BKc, int EPI>
int launch(const GemmArgs& g, int dtype, dim3 grid, void* stream) {
  if (dtype != 0 && dtype != 1) return reject("dtype must be 0 (bfloat16) or 1 (float16)");
  if (g.m < 0 || g.n < 0 || g.k < 0) return reject("negative size");
  if (grid.x == 0 || grid.y == 0) return 0;
  if (grid.y > 65535) return reject("too many column tiles for grid.y (at most 65535)");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (dtype == 0 && g_pipeline)
    gemm_kernel<__nv_bfloat16, AK, BKc, EPI, true><<<grid, kThreads, 0, s>>>(g);
  else if (dtype == 0)
    gemm_kernel<__nv_bfloat16, AK, BKc, EPI, false><<<grid, kThreads, 0, s>>>(g);
  else if (g_pipeline)
    gemm_kernel<__half, AK, BKc, EPI, true><<<grid, kThreads, 0, s>>>(g);
  else
    gemm_kernel<__half, AK, BKc, EPI, false><<<grid, kThreads, 0, s>>>(g);
  return static_cast<int>(cudaGetLastError());
}

unsigned blocks(int64_t n, int64_t b) { return static_cast<unsigned>((n + b - 1) / b); }

}  // namespace
}  // namespace flce

using flce::GemmArgs;

extern "C" {

int flce_abi_version(void) { return 2; }

int flce_set_pipeline(int on) {
  const int old = flce::g_pipeline;
  flce::g_pipeline = on ? 1 : 0;
  return old;
}

const char* flce_last_error(void) { return flce::g_error; }

int flce_forward_stats(const void* hidden, int64_t ld_h, const int64_t* order, const int64_t* count,
                       const void* weight, int64_t ld_w, int64_t n_rows, int64_t n_vocab, int64_t h, int dtype,
                       int n_splits, float* part, void* stream) {
  if (n_splits < 1) return flce::reject("n_splits must be >= 1");
  GemmArgs g;
  g.a = static_cast<const uint16_t*>(hidden), g.lda = ld_h, g.a_rows = order;
  g.b = static_cast<const uint16_t*>(weight), g.ldb = ld_w;
  g.m = n_rows, g.n = n_vocab, g.k = h, g.m_count = count;
  g.vec_a = flce::aligned16(hidden, ld_h), g.vec_b = flce::aligned16(weight, ld_w);
  const int64_t tiles = (n_vocab + flce::BN - 1) / flce::BN;
  g.tiles_per_split = static_cast<int>((tiles + n_splits - 1) / n_splits);
  g.part = part;
  return flce::launch<true, true, flce::kStats>(g, dtype, dim3(flce::blocks(n_rows, flce::BM), n_splits), stream);
}

int flce_target_dot(const void* hidden, int64_t ld_h, const int64_t* order, const int64_t* count,
                    const void* weight, int64_t ld_w, const int64_t* target_c, const float* wsum, int64_t n_rows,
                    int64_t n_vocab, int64_t h, int dtype, float* x_t, float* sum_x, void* stream) {
  if (n_rows <= 0) return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const unsigned grid = flce::blocks(n_rows, 8);
  if (dtype == 0)
    flce::target_dot_kernel<__nv_bfloat16><<<grid, 256, 0, s>>>(
        static_cast<const __nv_bfloat16*>(hidden), ld_h, order, count, static_cast<const __nv_bfloat16*>(weight),
        ld_w, target_c, wsum, n_rows, n_vocab, h, x_t, sum_x);
  else if (dtype == 1)
    flce::target_dot_kernel<__half><<<grid, 256, 0, s>>>(static_cast<const __half*>(hidden), ld_h, order, count,
                                                           static_cast<const __half*>(weight), ld_w, target_c, wsum,
                                                           n_rows, n_vocab, h, x_t, sum_x);
  else
    return flce::reject("dtype must be 0 (bfloat16) or 1 (float16)");
  return static_cast<int>(cudaGetLastError());
}

int flce_dlogits(const void* hidden, int64_t ld_h, const int64_t* order, const int64_t* count,
                 const void* weight_chunk, int64_t ld_w, int64_t col0, int64_t n_rows, int64_t vc, int64_t h,
                 int dtype, const float* lse, const float* coef, const int64_t* target_c, float eps_over_v,
                 float one_minus_eps, void* d, int64_t ld_d, void* stream) {
  GemmArgs g;
  g.a = static_cast<const uint16_t*>(hidden), g.lda = ld_h, g.a_rows = order;
  g.b = static_cast<const uint16_t*>(weight_chunk), g.ldb = ld_w;
  g.m = n_rows, g.n = vc, g.k = h, g.m_count = count;
  g.vec_a = flce::aligned16(hidden, ld_h), g.vec_b = flce::aligned16(weight_chunk, ld_w);
  g.lse = lse, g.coef = coef, g.target_c = target_c, g.col0 = col0;
  g.eps_over_v = eps_over_v, g.one_minus_eps = one_minus_eps;
  g.c = d, g.ldc = ld_d;
  return flce::launch<true, true, flce::kDlogits>(g, dtype, dim3(flce::blocks(n_rows, flce::BM),
                                                                  flce::blocks(vc, flce::BN)), stream);
}

int flce_grad_hidden(const void* d, int64_t ld_d, const int64_t* count, const void* weight_chunk, int64_t ld_w,
                     int64_t n_rows, int64_t vc, int64_t h, int dtype, float* acc, void* stream) {
  GemmArgs g;
  g.a = static_cast<const uint16_t*>(d), g.lda = ld_d;  // A(j, v) = D[j, v]: k-contiguous, no row index
  g.b = static_cast<const uint16_t*>(weight_chunk), g.ldb = ld_w;  // B(v, c) = W[v, c]: across k
  g.m = n_rows, g.n = h, g.k = vc, g.m_count = count;
  g.vec_a = flce::aligned16(d, ld_d), g.vec_b = flce::aligned16(weight_chunk, ld_w);
  g.c = acc, g.ldc = h;
  return flce::launch<true, false, flce::kAccum>(g, dtype, dim3(flce::blocks(n_rows, flce::BM),
                                                                 flce::blocks(h, flce::BN)), stream);
}

int flce_grad_weight(const void* d, int64_t ld_d, const int64_t* count, const void* hidden, int64_t ld_h,
                     const int64_t* order, int64_t n_rows, int64_t vc, int64_t h, int dtype, void* grad_w_chunk,
                     int64_t ld_gw, void* stream) {
  GemmArgs g;
  g.a = static_cast<const uint16_t*>(d), g.lda = ld_d;  // A(v, j) = D[j, v]: across k
  g.b = static_cast<const uint16_t*>(hidden), g.ldb = ld_h, g.b_rows = order;  // B(j, c) = hidden[order[j], c]
  g.m = vc, g.n = h, g.k = n_rows, g.k_count = count;
  g.vec_a = flce::aligned16(d, ld_d), g.vec_b = flce::aligned16(hidden, ld_h);
  g.c = grad_w_chunk, g.ldc = ld_gw;
  return flce::launch<false, false, flce::kStore>(g, dtype, dim3(flce::blocks(vc, flce::BM),
                                                                  flce::blocks(h, flce::BN)), stream);
}

}  // extern "C"
