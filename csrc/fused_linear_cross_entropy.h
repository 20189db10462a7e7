// Fused LM head + masked cross-entropy kernels (fused_linear_cross_entropy.cu). Torch-free C ABI, loaded with ctypes by
// megatron_tf/ops/flce_cuda.py (the thin binding: tensors -> device pointers + the current stream). Every launcher
// is asynchronous on `stream` and never synchronises with the host, so a CUDA graph can capture all of them.
//
// Row compaction: the caller compacts unmasked rows with a prefix sum on the device (order[j] = original row of
// compact slot j, count[0] = number of unmasked rows, both device memory). Every kernel reads count[0] ON THE
// DEVICE and returns early from tiles past it, so the work scales with the unmasked rows while every grid and
// buffer keeps the fixed capacity n_rows (no host sync, graph-capturable).
//
// Shapes (row-major, leading dimension in elements): hidden [*, h] (ld_h), weight shard [V_local, h] (ld_w),
// dlogits chunk buffer D [n_rows, vc] (ld_d), fp32 hidden-gradient accumulator acc [n_rows, h] (dense), weight
// gradient [V_local, h] (ld_gw). dtype: 0 = bfloat16, 1 = float16 (fp32 inputs use the PyTorch reference path).
// Return value: 0, or a cudaError_t of the launch; flce_last_error() describes a rejected argument (-1).
#pragma once

#include <cstdint>

#ifdef __cplusplus
extern "C" {
#endif

int flce_abi_version(void);
const char* flce_last_error(void);

// part[s, j] = log-sum-exp of logits[j, v] over the vocabulary tiles of split s (-inf when the split is empty), for
// compact slots j < count; logits[j, v] = hidden[order[j]] . weight[v], fp32 accumulation.
int flce_forward_stats(const void* hidden, int64_t ld_h, const int64_t* order, const int64_t* count,
                       const void* weight, int64_t ld_w, int64_t n_rows, int64_t n_vocab, int64_t h, int dtype,
                       int n_splits, float* part, void* stream);

// x_t[j] = hidden[order[j]] . weight[target_c[j]] when 0 <= target_c[j] < n_vocab (shard-local id), else 0;
// sum_x[j] = hidden[order[j]] . wsum when wsum != NULL (label smoothing; wsum = fp32 column sums of the shard).
int flce_target_dot(const void* hidden, int64_t ld_h, const int64_t* order, const int64_t* count,
                    const void* weight, int64_t ld_w, const int64_t* target_c, const float* wsum, int64_t n_rows,
                    int64_t n_vocab, int64_t h, int dtype, float* x_t, float* sum_x, void* stream);

// D[j, c] = ((exp(logit[j, col0 + c] - lse[j]) - eps_over_v) * coef[j] - (col0 + c == target_c[j]) *
// one_minus_eps * coef[j]) rounded once to dtype, for j < count and c < vc; weight_chunk = weight + col0 * ld_w.
int flce_dlogits(const void* hidden, int64_t ld_h, const int64_t* order, const int64_t* count,
                 const void* weight_chunk, int64_t ld_w, int64_t col0, int64_t n_rows, int64_t vc, int64_t h,
                 int dtype, const float* lse, const float* coef, const int64_t* target_c, float eps_over_v,
                 float one_minus_eps, void* d, int64_t ld_d, void* stream);

// acc[j, :] += D[j, :vc] @ weight_chunk[:vc, :] (fp32), for j < count.
int flce_grad_hidden(const void* d, int64_t ld_d, const int64_t* count, const void* weight_chunk, int64_t ld_w,
                     int64_t n_rows, int64_t vc, int64_t h, int dtype, float* acc, void* stream);

// grad_w_chunk[v, :] = sum_{j < count} D[j, v] * hidden[order[j], :], fp32 accumulation, rounded once to dtype.
int flce_grad_weight(const void* d, int64_t ld_d, const int64_t* count, const void* hidden, int64_t ld_h,
                     const int64_t* order, int64_t n_rows, int64_t vc, int64_t h, int dtype, void* grad_w_chunk,
                     int64_t ld_gw, void* stream);

#ifdef __cplusplus
}
#endif
