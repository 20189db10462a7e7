// Per-row math of the masked vocab-parallel cross-entropy, shared by the CUDA kernels (masked_cross_entropy.cu) and the
// host-side tests (tests/csrc/cross_entropy_math_test.cpp, compiled with g++). No CUDA or torch headers here.
//
// Notation for one row of the logits x_0..x_{V-1} (this rank's shard) and a target t:
//   row statistic   (m, s) with s = sum_j exp(x_j - m)         (online softmax: m is a running maximum)
//   shard lse       lse_r = m + log(s)
//   global lse      lse = log(sum_r exp(lse_r))                  (combined across TP ranks, in Python)
//   loss            (1 - eps) * (lse - x_t) + eps * (lse - sum_j x_j / V_full)   (torch's label smoothing)
//   d loss / d x_j  exp(x_j - lse) - (1 - eps) * [j == t] - eps / V_full
// Exponentials run in base 2 (exp(x - m) = exp2(x * log2e - m * log2e): one FFMA + one MUFU.EX2 per element).
#pragma once

#include <cfloat>
#include <cstdint>
#include <cstring>
#if !defined(__CUDA_ARCH__)
#include <cmath>
#endif

#if defined(__CUDACC__)
#define CROSS_ENTROPY_HD __host__ __device__ __forceinline__
#else
#define CROSS_ENTROPY_HD inline
#endif

namespace cross_entropy {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
// Start value of the running maximum: finite, and finite after scaling by log2e (-FLT_MAX * log2e would overflow to
// -inf and turn a group of -inf logits into -inf - (-inf) = NaN), so exp(-inf - m) = 0 and exp(m0 - m) is never NaN.
constexpr float kMaxInit = -0.5f * FLT_MAX;

// 2^x. Device: ex2.approx.ftz.f32 (max relative error 2^-22 per the PTX ISA); host: std::exp2.
CROSS_ENTROPY_HD float exp2_approx(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return std::exp2(x);
#endif
}

// log2(x). Device: lg2.approx.ftz.f32 (max absolute error 2^-22 for x in [0.5, 2], PTX ISA); host: std::log2.
CROSS_ENTROPY_HD float log2_approx(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return std::log2(x);
#endif
}

CROSS_ENTROPY_HD float fmax_(float a, float b) {
#if defined(__CUDA_ARCH__)
  return fmaxf(a, b);
#else
  return std::fmax(a, b);
#endif
}

struct RowStat {
  float m;  // running maximum (natural units)
  float s;  // sum of exp(x - m)
};

CROSS_ENTROPY_HD RowStat stat_init() { return RowStat{kMaxInit, 0.0f}; }

// Add K values: one rescale of the running sum per group (K + 1 exponentials for K values).
template <int K>
CROSS_ENTROPY_HD void stat_add(RowStat& st, const float (&x)[K]) {
  float mx = x[0];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int k = 1; k < K; ++k) mx = fmax_(mx, x[k]);
  const float m_new = fmax_(st.m, mx);
  const float mb = m_new * kLog2e;
  float acc = 0.0f;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int k = 0; k < K; ++k) acc += exp2_approx(x[k] * kLog2e - mb);
  st.s = st.s * exp2_approx((st.m - m_new) * kLog2e) + acc;
  st.m = m_new;
}

CROSS_ENTROPY_HD void stat_add1(RowStat& st, float x) {
  const float v[1] = {x};
  stat_add<1>(st, v);
}

// Merge two partial statistics of disjoint parts of a row (associative and commutative up to rounding).
CROSS_ENTROPY_HD RowStat stat_merge(RowStat a, RowStat b) {
  const float m = fmax_(a.m, b.m);
  return RowStat{m, a.s * exp2_approx((a.m - m) * kLog2e) + b.s * exp2_approx((b.m - m) * kLog2e)};
}

// log-sum-exp of the values summarised by st.
CROSS_ENTROPY_HD float stat_lse(RowStat st) { return st.m + log2_approx(st.s) * kLn2; }

// Combine per-rank shard lse values into the global lse (what Python does after the all-gather).
CROSS_ENTROPY_HD float combine_lse(const float* lse_r, int n) {
  float m = kMaxInit;
  for (int r = 0; r < n; ++r) m = fmax_(m, lse_r[r]);
  float s = 0.0f;
  for (int r = 0; r < n; ++r) s += exp2_approx((lse_r[r] - m) * kLog2e);
  return m + log2_approx(s) * kLn2;
}

// Per-token loss from the global lse, the target logit and (for label smoothing) the sum of all logits of the row.
CROSS_ENTROPY_HD float token_loss(float lse, float x_target, float sum_x, float eps, float inv_vocab) {
  return lse - (1.0f - eps) * x_target - eps * sum_x * inv_vocab;
}

// Gradient of coef * loss with respect to one logit. lse_b = lse * log2e; eps_v = eps / V_full.
CROSS_ENTROPY_HD float token_grad(float x, float lse_b, bool is_target, float eps, float eps_v, float coef) {
  const float p = exp2_approx(x * kLog2e - lse_b);
  return (p - (is_target ? 1.0f - eps : 0.0f) - eps_v) * coef;
}

// ---------------------------------------------------------------------------------------------------------------
// Row partition and the per-thread loops of a block (one block per row). Templated on a Row accessor so the same code
// runs in the kernels (Row = 16-byte global loads of bf16/fp16/fp32) and in the host tests, which emulate a block by
// calling these for every thread id and merging the thread statistics.
//   Row: using Raw = <16-byte vector>; Raw load(int64_t i) const (vector i of the aligned body);
//        void unpack(const Raw&, float* x) const (kV floats); float scalar(int64_t j) const (element j of the row).
//   Out: void store(int64_t j, float v) (element j); void store_vec(int64_t i, const float* v) (body vector i);
//        void store_vec_zero(int64_t i).
// ---------------------------------------------------------------------------------------------------------------
constexpr int kVecBytes = 16;

// A row of n elements of elem_bytes each, starting at byte address addr (a multiple of elem_bytes):
// [0, head) scalars up to the first 16-byte boundary, nvec 16-byte vectors, then [tail0, n) scalars.
struct RowSplit {
  int64_t head;
  int64_t nvec;
  int64_t tail0;
};

CROSS_ENTROPY_HD RowSplit split_row(uint64_t addr, int64_t n, int elem_bytes) {
  const uint64_t mis = addr % kVecBytes;
  int64_t head = static_cast<int64_t>(((kVecBytes - mis) % kVecBytes) / static_cast<uint64_t>(elem_bytes));
  if (head > n) head = n;
  const int64_t per = kVecBytes / elem_bytes;
  const int64_t nvec = (n - head) / per;
  return RowSplit{head, nvec, head + nvec * per};
}

// This thread's share (tid of nt threads) of the row statistics and, with kSmooth, of the sum of the logits.
// The body is read kUnroll vectors at a time, all loads issued before the first use.
template <int kV, int kUnroll, bool kSmooth, class Row>
CROSS_ENTROPY_HD void thread_row_stats(const Row& row, const RowSplit& sp, int64_t n, int64_t tid, int64_t nt,
                                       RowStat& st, float& sum_x) {
  for (int64_t j = tid; j < sp.head; j += nt) {
    const float x = row.scalar(j);
    stat_add1(st, x);
    if (kSmooth) sum_x += x;
  }
  for (int64_t j = sp.tail0 + tid; j < n; j += nt) {
    const float x = row.scalar(j);
    stat_add1(st, x);
    if (kSmooth) sum_x += x;
  }
  int64_t i = tid;
  for (; i + (kUnroll - 1) * nt < sp.nvec; i += kUnroll * nt) {
    typename Row::Raw r[kUnroll];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int u = 0; u < kUnroll; ++u) r[u] = row.load(i + u * nt);
    float x[kUnroll * kV];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int u = 0; u < kUnroll; ++u) row.unpack(r[u], x + u * kV);
    stat_add<kUnroll * kV>(st, x);
    if (kSmooth) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
      for (int k = 0; k < kUnroll * kV; ++k) sum_x += x[k];
    }
  }
  for (; i < sp.nvec; i += nt) {
    float x[kV];
    row.unpack(row.load(i), x);
    stat_add<kV>(st, x);
    if (kSmooth) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
      for (int k = 0; k < kV; ++k) sum_x += x[k];
    }
  }
}

// This thread's share of out[j] = token_grad(x[j]) for the row; t is the target's index in this shard (may lie
// outside [0, n)). sp must describe both the logits row and the output row (same misalignment); otherwise use
// thread_row_grad_scalar. Each element is read, then written, by the same thread (safe in place).
template <int kV, int kUnroll, class Row, class Out>
CROSS_ENTROPY_HD void thread_row_grad(const Row& row, Out& out, const RowSplit& sp, int64_t n, int64_t t,
                                      float lse_b, float eps, float eps_v, float coef, int64_t tid, int64_t nt) {
  for (int64_t j = tid; j < sp.head; j += nt) out.store(j, token_grad(row.scalar(j), lse_b, j == t, eps, eps_v, coef));
  for (int64_t j = sp.tail0 + tid; j < n; j += nt)
    out.store(j, token_grad(row.scalar(j), lse_b, j == t, eps, eps_v, coef));
  const int64_t t_rel = t - sp.head;  // target index relative to the vector body
  int64_t i = tid;
  for (; i + (kUnroll - 1) * nt < sp.nvec; i += kUnroll * nt) {
    typename Row::Raw r[kUnroll];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int u = 0; u < kUnroll; ++u) r[u] = row.load(i + u * nt);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int u = 0; u < kUnroll; ++u) {
      float v[kV];
      row.unpack(r[u], v);
      const int64_t d = t_rel - (i + u * nt) * kV;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
      for (int k = 0; k < kV; ++k) v[k] = token_grad(v[k], lse_b, d == k, eps, eps_v, coef);
      out.store_vec(i + u * nt, v);
    }
  }
  for (; i < sp.nvec; i += nt) {
    float v[kV];
    row.unpack(row.load(i), v);
    const int64_t d = t_rel - i * kV;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int k = 0; k < kV; ++k) v[k] = token_grad(v[k], lse_b, d == k, eps, eps_v, coef);
    out.store_vec(i, v);
  }
}

template <class Row, class Out>
CROSS_ENTROPY_HD void thread_row_grad_scalar(const Row& row, Out& out, int64_t n, int64_t t, float lse_b, float eps,
                                             float eps_v, float coef, int64_t tid, int64_t nt) {
  for (int64_t j = tid; j < n; j += nt) out.store(j, token_grad(row.scalar(j), lse_b, j == t, eps, eps_v, coef));
}

// Zeros for a masked row, written without reading the logits. sp describes the output row.
template <class Out>
CROSS_ENTROPY_HD void thread_row_zero(Out& out, const RowSplit& sp, int64_t n, int64_t tid, int64_t nt) {
  for (int64_t j = tid; j < sp.head; j += nt) out.store(j, 0.0f);
  for (int64_t j = sp.tail0 + tid; j < n; j += nt) out.store(j, 0.0f);
  for (int64_t i = tid; i < sp.nvec; i += nt) out.store_vec_zero(i);
}

// bfloat16 <-> float on the host (round to nearest even, NaN kept quiet). The kernels use the CUDA intrinsics
// (__floats2bfloat162_rn), which round the same way; the host tests pin this rounding against torch's.
CROSS_ENTROPY_HD uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // NaN
  const uint32_t lsb = (u >> 16) & 1u;
  u += 0x7fffu + lsb;
  return static_cast<uint16_t>(u >> 16);
}

CROSS_ENTROPY_HD float bf16_bits_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

}  // namespace cross_entropy
