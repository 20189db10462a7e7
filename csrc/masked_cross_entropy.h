// Launchers of the masked vocab-parallel cross-entropy kernels (masked_cross_entropy.cu). Torch-free: binding.cpp turns
// tensors into this struct. All pointers are device pointers; logits/grad rows are contiguous (stride 1 along the
// vocabulary) with a row stride in elements. One CUDA block handles one row.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace cross_entropy {

enum DType : int { kBFloat16 = 0, kFloat16 = 1, kFloat32 = 2 };

struct CrossEntropyArgs {
  const void* logits = nullptr;    // [n_rows, n_cols] of dtype, row stride logits_stride
  int64_t logits_stride = 0;
  void* grad = nullptr;            // [n_rows, n_cols] of dtype, row stride grad_stride (may equal logits: in place)
  int64_t grad_stride = 0;
  const int64_t* target = nullptr;  // [n_rows] global vocabulary ids
  const float* weights = nullptr;   // [n_rows] loss weights; 0 = masked row (skipped before any logits load)
  const float* grad_loss = nullptr;  // [n_rows] upstream gradient of the per-token loss (backward)
  const float* scale = nullptr;      // [1] gradient scale (forward_backward: upstream gradient of every token)
  const float* lse_in = nullptr;     // [n_rows] global log-sum-exp (backward)
  float* stats = nullptr;            // [n_rows, 2 or 3] per-shard (lse_r, x_target[, sum_x]) (forward, TP > 1)
  float* loss = nullptr;             // [n_rows] per-token loss (forward with TP = 1, forward_backward)
  float* lse = nullptr;              // [n_rows] log-sum-exp (forward with TP = 1, forward_backward)
  int64_t n_rows = 0;
  int64_t n_cols = 0;                // this shard's vocabulary size
  int64_t vocab_start = 0;           // first global vocabulary id of this shard
  float eps = 0.0f;                  // label smoothing
  float inv_vocab_full = 0.0f;       // 1 / full (all-shard) vocabulary size
  int dtype = kBFloat16;
  int threads = 0;                   // threads per block; 0 = heuristic
};

// Forward: with stats set, writes per-shard statistics; with loss/lse set (TP = 1), writes the final loss and lse.
cudaError_t launch_forward(const CrossEntropyArgs& a, cudaStream_t stream);
// Backward: grad = (softmax - one-hot) * grad_loss * weight, rounded once to dtype; zeros on masked rows.
cudaError_t launch_backward(const CrossEntropyArgs& a, cudaStream_t stream);
// TP = 1 one-pass: loss, lse and grad = (softmax - one-hot) * scale * weight in one kernel.
cudaError_t launch_forward_backward(const CrossEntropyArgs& a, cudaStream_t stream);
// The heuristic block size for a row of n_cols elements of dtype.
int default_threads(int64_t n_cols, int dtype);

}  // namespace cross_entropy
