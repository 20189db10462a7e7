// Python binding of the masked vocab-parallel cross-entropy kernels (module megatron_tf._C). Only this file includes
// torch; the kernels live in masked_cross_entropy.cu. Checks shapes, dtypes and devices, then calls the launchers on
// the current stream. Every function is asynchronous (no host synchronisation); outputs are fp32 except the gradient,
// which has the logits' dtype. megatron_tf/ops/cross_entropy.py is the Python front (the autograd Function lives
// there).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <cuda_runtime_api.h>

#include <vector>

#include "masked_cross_entropy.h"

namespace {

int dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kBFloat16:
      return cross_entropy::kBFloat16;
    case at::kHalf:
      return cross_entropy::kFloat16;
    case at::kFloat:
      return cross_entropy::kFloat32;
    default:
      TORCH_CHECK(false, "megatron_tf._C: logits must be bfloat16, float16 or float32, got ", t.scalar_type());
  }
  return -1;
}

void check_vec(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t n, const at::Tensor& logits) {
  TORCH_CHECK(t.device() == logits.device(), "megatron_tf._C: ", name, " is on ", t.device(), ", logits on ",
              logits.device());
  TORCH_CHECK(t.scalar_type() == dtype, "megatron_tf._C: ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n && t.is_contiguous(), "megatron_tf._C: ", name,
              " must be a contiguous 1-D tensor of ", n, " elements, got shape ", t.sizes());
}

// Common checks; fills the input part of the launcher arguments.
cross_entropy::CrossEntropyArgs make_args(const at::Tensor& logits, const at::Tensor& target,
                                          const at::Tensor& weights, int64_t vocab_start, double eps,
                                          int64_t vocab_full, int64_t threads) {
  TORCH_CHECK(logits.is_cuda(), "megatron_tf._C: logits must be a CUDA tensor, got device ", logits.device());
  TORCH_CHECK(logits.dim() == 2, "megatron_tf._C: logits must be 2-D [rows, vocab shard], got shape ",
              logits.sizes());
  TORCH_CHECK(logits.stride(1) == 1 || logits.size(1) <= 1,
              "megatron_tf._C: logits must be contiguous along the vocabulary, got strides ", logits.strides());
  const int64_t n = logits.size(0);
  check_vec(target, "target", at::kLong, n, logits);
  check_vec(weights, "weights", at::kFloat, n, logits);
  TORCH_CHECK(vocab_full >= logits.size(1) && vocab_full > 0, "megatron_tf._C: full vocabulary size ", vocab_full,
              " must be >= the shard size ", logits.size(1));
  TORCH_CHECK(eps >= 0.0 && eps < 1.0, "megatron_tf._C: label smoothing must be in [0, 1), got ", eps);
  cross_entropy::CrossEntropyArgs a;
  a.logits = logits.data_ptr();
  a.logits_stride = logits.size(0) > 1 ? logits.stride(0) : logits.size(1);
  a.target = target.data_ptr<int64_t>();
  a.weights = weights.data_ptr<float>();
  a.n_rows = n;
  a.n_cols = logits.size(1);
  a.vocab_start = vocab_start;
  a.eps = static_cast<float>(eps);
  a.inv_vocab_full = static_cast<float>(1.0 / static_cast<double>(vocab_full));
  a.dtype = dtype_code(logits);
  a.threads = static_cast<int>(threads);
  return a;
}

void check_grad_out(const at::Tensor& grad, const at::Tensor& logits) {
  TORCH_CHECK(grad.device() == logits.device() && grad.scalar_type() == logits.scalar_type() &&
                  grad.sizes() == logits.sizes(),
              "megatron_tf._C: grad buffer must match the logits (", logits.scalar_type(), " ", logits.sizes(),
              " on ", logits.device(), "), got ", grad.scalar_type(), " ", grad.sizes(), " on ", grad.device());
  TORCH_CHECK(grad.stride(1) == 1 || grad.size(1) <= 1,
              "megatron_tf._C: grad buffer must be contiguous along the vocabulary, got strides ", grad.strides());
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "megatron_tf._C: ", what, " launch failed: ", cudaGetErrorString(err));
}

// Forward. finalize=true (TP = 1): returns [loss, lse]. finalize=false: returns [stats] of shape [rows, 2] or
// [rows, 3] (label smoothing) holding this shard's (lse_r, target logit or 0, sum of logits).
std::vector<at::Tensor> forward(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& weights,
                                int64_t vocab_start, double eps, int64_t vocab_full, bool finalize, int64_t threads) {
  cross_entropy::CrossEntropyArgs a = make_args(logits, target, weights, vocab_start, eps, vocab_full, threads);
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto f32 = logits.options().dtype(at::kFloat);
  std::vector<at::Tensor> out;
  if (finalize) {
    at::Tensor loss = at::empty({a.n_rows}, f32), lse = at::empty({a.n_rows}, f32);
    a.loss = loss.data_ptr<float>();
    a.lse = lse.data_ptr<float>();
    out = {loss, lse};
  } else {
    at::Tensor stats = at::empty({a.n_rows, a.eps != 0.0f ? 3 : 2}, f32);  // the kernel's layout (float eps)
    a.stats = stats.data_ptr<float>();
    out = {stats};
  }
  check_launch(cross_entropy::launch_forward(a, c10::cuda::getCurrentCUDAStream().stream()), "forward");
  return out;
}

// Backward into grad (which may be the logits tensor itself: in place).
void backward(const at::Tensor& logits, const at::Tensor& grad, const at::Tensor& target, const at::Tensor& weights,
              const at::Tensor& grad_loss, const at::Tensor& lse, int64_t vocab_start, double eps, int64_t vocab_full,
              int64_t threads) {
  cross_entropy::CrossEntropyArgs a = make_args(logits, target, weights, vocab_start, eps, vocab_full, threads);
  check_grad_out(grad, logits);
  check_vec(grad_loss, "grad_loss", at::kFloat, a.n_rows, logits);
  check_vec(lse, "lse", at::kFloat, a.n_rows, logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  a.grad = grad.data_ptr();
  a.grad_stride = grad.size(0) > 1 ? grad.stride(0) : grad.size(1);
  a.grad_loss = grad_loss.data_ptr<float>();
  a.lse_in = lse.data_ptr<float>();
  check_launch(cross_entropy::launch_backward(a, c10::cuda::getCurrentCUDAStream().stream()), "backward");
}

// TP = 1 one-pass forward + backward: returns [loss, lse]; grad = (softmax - one-hot) * scale * weight.
std::vector<at::Tensor> forward_backward(const at::Tensor& logits, const at::Tensor& grad, const at::Tensor& target,
                                         const at::Tensor& weights, const at::Tensor& scale, double eps,
                                         int64_t threads) {
  cross_entropy::CrossEntropyArgs a = make_args(logits, target, weights, 0, eps, logits.size(1), threads);
  check_grad_out(grad, logits);
  TORCH_CHECK(scale.device() == logits.device() && scale.scalar_type() == at::kFloat && scale.numel() == 1,
              "megatron_tf._C: scale must be a 1-element float32 tensor on ", logits.device(), ", got ",
              scale.scalar_type(), " with ", scale.numel(), " elements on ", scale.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor loss = at::empty({a.n_rows}, f32), lse = at::empty({a.n_rows}, f32);
  a.grad = grad.data_ptr();
  a.grad_stride = grad.size(0) > 1 ? grad.stride(0) : grad.size(1);
  a.scale = scale.data_ptr<float>();
  a.loss = loss.data_ptr<float>();
  a.lse = lse.data_ptr<float>();
  check_launch(cross_entropy::launch_forward_backward(a, c10::cuda::getCurrentCUDAStream().stream()),
               "forward_backward");
  return {loss, lse};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "megatron_tf fused masked vocab-parallel cross-entropy (see megatron_tf/ops/cross_entropy.py)";
  m.def("cross_entropy_forward", &forward, "forward: per-shard stats, or loss and lse when finalize", py::arg("logits"),
        py::arg("target"), py::arg("weights"), py::arg("vocab_start"), py::arg("eps"), py::arg("vocab_full"),
        py::arg("finalize"), py::arg("threads") = 0);
  m.def("cross_entropy_backward", &backward, "backward into grad (may alias logits)", py::arg("logits"),
        py::arg("grad"), py::arg("target"), py::arg("weights"), py::arg("grad_loss"), py::arg("lse"),
        py::arg("vocab_start"), py::arg("eps"), py::arg("vocab_full"), py::arg("threads") = 0);
  m.def("cross_entropy_forward_backward", &forward_backward, "TP=1 loss, lse and gradient in one kernel",
        py::arg("logits"), py::arg("grad"), py::arg("target"), py::arg("weights"), py::arg("scale"), py::arg("eps"),
        py::arg("threads") = 0);
  m.def("default_threads", &cross_entropy::default_threads, "heuristic threads per block", py::arg("n_cols"),
        py::arg("dtype"));
}
