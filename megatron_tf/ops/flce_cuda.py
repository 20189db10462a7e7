"""CUDA path of the fused LM-head + masked cross-entropy: csrc/fused_linear_cross_entropy.cu's kernels via ctypes.

The kernels are torch-free, so the binding is this file: it compiles csrc/fused_linear_cross_entropy.cu once with nvcc
into a shared library (`nvcc -shared -cudart shared`, about 5 s; cached under $MEGATRON_TF_CACHE or
~/.cache/megatron_tf, keyed by the source hash and the GPU's compute capability; written to a temporary name, then
renamed), loads it with ctypes and passes device pointers and the current CUDA stream. No torch headers are compiled (a
torch C++ extension takes minutes), and nothing here synchronises with the host: the compaction (order, pos, count) is
made by torch ops on the device (megatron_tf/ops/fused_linear_cross_entropy.py: compact_rows) and the kernels read
`count` on the device, so forward and backward can be captured in a CUDA graph.

Data flow (per TP rank, N = rows, h = hidden, V = this shard's vocabulary, Vc = MEGATRON_TF_FLCE_VOCAB_CHUNK):
  forward : flce_forward_stats (split log-sum-exp per row, [S, N] fp32) -> logsumexp over splits = lse_r;
            flce_target_dot (x_t[, sum_x]) -> (lse_r, x_t) -> one all-gather (row_stats) -> loss, lse
  backward: per vocabulary chunk: flce_dlogits (D [N, Vc] in bf16/fp16) -> flce_grad_hidden (fp32 [N, h]
            accumulator) and flce_grad_weight (grad_W rows of the chunk, one rounding)
Extra memory (N = 16384, h = 2048, Vc = 2048, bf16): accumulator 128 MiB + D 64 MiB + O(N) vectors.
Set MEGATRON_TF_FLCE=0 to force the PyTorch reference; MEGATRON_TF_FLCE_PIPELINE=0 selects the single-buffered
GEMM main loop (set_pipeline).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import torch

from megatron_tf.ops.fused_linear_cross_entropy import compact_rows, uncompact
from megatron_tf.ops.row_stats import combine_row_stats, gather_row_stats
from megatron_tf.utils.logging import get_logger
from megatron_tf.utils.native_build import build_once, cached_library_path

CSRC = Path(__file__).resolve().parents[2] / "csrc"
SOURCES = ("fused_linear_cross_entropy.cu", "fused_linear_cross_entropy.h")
DTYPES = {torch.bfloat16: 0, torch.float16: 1}
ABI_VERSION = 2
_lib: ctypes.CDLL | None = None
_lib_error: str | None = None
_tried = False

_P, _I64, _I32, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
_SIGNATURES = {
    "flce_forward_stats": [_P, _I64, _P, _P, _P, _I64, _I64, _I64, _I64, _I32, _I32, _P, _P],
    "flce_target_dot": [_P, _I64, _P, _P, _P, _I64, _P, _P, _I64, _I64, _I64, _I32, _P, _P, _P],
    "flce_dlogits": [_P, _I64, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _I32, _P, _P, _P, _F, _F, _P, _I64, _P],
    "flce_grad_hidden": [_P, _I64, _P, _P, _I64, _I64, _I64, _I64, _I32, _P, _P],
    "flce_grad_weight": [_P, _I64, _P, _P, _I64, _P, _I64, _I64, _I64, _I32, _P, _I64, _P],
}


def vocab_chunk() -> int:
    return max(64, int(os.environ.get("MEGATRON_TF_FLCE_VOCAB_CHUNK", "2048")))


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    cand = shutil.which("nvcc") or os.path.join(home, "bin", "nvcc")
    return cand if os.path.exists(cand) else None


def library_path(arch: str) -> Path:
    return cached_library_path("libflce", b"".join((CSRC / s).read_bytes() for s in SOURCES), f"_sm{arch}")


def build_library(arch: str, out: Path | None = None) -> Path:
    """Compile csrc/fused_linear_cross_entropy.cu for sm_<arch> into a shared library (atomic write); returns its
    path."""
    out = out or library_path(arch)
    nvcc = _nvcc()
    if nvcc is None and not out.exists():
        raise RuntimeError("nvcc not found (PATH, $CUDA_HOME/bin): cannot build csrc/fused_linear_cross_entropy.cu")

    def compile_into(directory: str, name: str) -> str:
        lib = os.path.join(directory, name)
        cmd = [nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-cudart", "shared",
               f"-gencode=arch=compute_{arch},code=sm_{arch}", f"-I{CSRC}",
               str(CSRC / "fused_linear_cross_entropy.cu"), "-o", lib]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc failed building {name} (rc {proc.returncode}): {proc.stderr[-2000:]}")
        return lib

    return build_once(out, compile_into)


def load_library() -> ctypes.CDLL | None:
    """The loaded kernel library (built on first use), or None; the reason is in library_error()."""
    global _lib, _lib_error, _tried
    if _tried:
        return _lib
    _tried = True
    try:
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device")
        major, minor = torch.cuda.get_device_capability()
        if major < 8:
            raise RuntimeError(f"compute capability {major}.{minor} < 8.0 (bf16 tensor cores)")
        torch.cuda.init()  # load torch's libcudart first: the library links the same libcudart.so by soname
        path = os.environ.get("MEGATRON_TF_FLCE_LIB") or str(build_library(f"{major}{minor}"))
        lib = ctypes.CDLL(path)
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
        lib.flce_last_error.restype = ctypes.c_char_p
        lib.flce_set_pipeline.argtypes, lib.flce_set_pipeline.restype = [ctypes.c_int], ctypes.c_int
        if lib.flce_abi_version() != ABI_VERSION:
            raise RuntimeError(f"{path}: ABI version {lib.flce_abi_version()}, expected {ABI_VERSION}")
        _lib = lib
        set_pipeline(os.environ.get("MEGATRON_TF_FLCE_PIPELINE", "1") != "0")
        get_logger("megatron_tf.ops.flce_cuda").info("fused-linear cross-entropy kernels loaded from %s", path)
    except Exception as e:  # the reference path stays available
        _lib_error = f"{type(e).__name__}: {e}"
    return _lib


def set_pipeline(on: bool) -> bool:
    """Select the GEMM main loop of later launches: cp.async double-buffered (True, default) or single-buffered
    (False; MEGATRON_TF_FLCE_PIPELINE=0). Returns the previous setting. Both give bitwise identical results (same
    accumulation order); the flag exists to measure one against the other."""
    lib = load_library()
    if lib is None:
        raise RuntimeError(f"fused-linear kernel library unavailable ({library_error()})")
    return bool(lib.flce_set_pipeline(1 if on else 0))


def library_error() -> str | None:
    load_library()
    return _lib_error


def supported(hidden: torch.Tensor) -> tuple[bool, str]:
    """(usable, reason) for the CUDA kernels on this hidden tensor."""
    if os.environ.get("MEGATRON_TF_FLCE", "1") == "0":
        return False, "disabled by MEGATRON_TF_FLCE=0"
    if hidden.device.type != "cuda":
        return False, f"hidden is on {hidden.device}, not CUDA"
    if hidden.dtype not in DTYPES:
        return False, f"the kernels take bfloat16/float16, got {hidden.dtype} (the PyTorch reference is used)"
    if load_library() is None:
        return False, f"kernel library unavailable ({library_error()})"
    return True, ""


def _check(rc: int, what: str) -> None:
    if rc != 0:
        msg = _lib.flce_last_error().decode() if rc == -1 else f"CUDA error {rc}"
        raise RuntimeError(f"fused-linear cross-entropy: {what} failed: {msg}")


def _ld(t: torch.Tensor) -> int:
    return t.stride(0) if t.shape[0] > 1 else t.shape[1]


def n_splits_for(n_rows: int, n_vocab: int, device: torch.device) -> int:
    """Vocabulary splits of the forward grid: about 4 blocks per SM in all, at most one split per 64-column tile."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    row_tiles = max(1, -(-n_rows // 128))
    return max(1, min(-(-n_vocab // 64), -(-4 * sms // row_tiles), 1024))


def forward_stats(hidden2d, weight, order, count, target_c, eps: float):
    """Per-slot (lse_r, x_t[, sum_x]) of this shard, [N, 2 or 3] fp32 (slots >= count: finite filler)."""
    n, h = hidden2d.shape
    v = weight.shape[0]
    dt, stream = DTYPES[hidden2d.dtype], torch.cuda.current_stream(hidden2d.device).cuda_stream
    splits = n_splits_for(n, v, hidden2d.device)
    part = torch.zeros(splits, n, dtype=torch.float32, device=hidden2d.device)
    _check(_lib.flce_forward_stats(hidden2d.data_ptr(), _ld(hidden2d), order.data_ptr(), count.data_ptr(),
                                   weight.data_ptr(), _ld(weight), n, v, h, dt, splits, part.data_ptr(), stream),
           "forward_stats")
    x_t = torch.zeros(n, dtype=torch.float32, device=hidden2d.device)
    sum_x = torch.zeros(n, dtype=torch.float32, device=hidden2d.device) if eps else None
    wsum = weight.float().sum(0) if eps else None
    _check(_lib.flce_target_dot(hidden2d.data_ptr(), _ld(hidden2d), order.data_ptr(), count.data_ptr(),
                                weight.data_ptr(), _ld(weight), target_c.data_ptr(),
                                wsum.data_ptr() if eps else None, n, v, h, dt, x_t.data_ptr(),
                                sum_x.data_ptr() if eps else None, stream), "target_dot")
    cols = [torch.logsumexp(part, 0), x_t] + ([sum_x] if eps else [])
    return torch.stack(cols, 1)


def backward_grads(hidden2d, weight, order, count, target_c, coef, lse, eps: float, vocab_full: int):
    """(grad_hc fp32 [N, h] in compact order, grad_weight [V, h] in the weight dtype)."""
    n, h = hidden2d.shape
    v = weight.shape[0]
    dt, stream = DTYPES[hidden2d.dtype], torch.cuda.current_stream(hidden2d.device).cuda_stream
    acc = torch.zeros(n, h, dtype=torch.float32, device=hidden2d.device)
    grad_w = torch.empty_like(weight)
    vcm = min(v, vocab_chunk())
    d = torch.empty(n, vcm, dtype=hidden2d.dtype, device=hidden2d.device)
    es, ld_w, ld_gw = weight.element_size(), _ld(weight), _ld(grad_w)
    for c0 in range(0, v, vcm):
        vc = min(vcm, v - c0)
        w_chunk = weight.data_ptr() + c0 * ld_w * es
        _check(_lib.flce_dlogits(hidden2d.data_ptr(), _ld(hidden2d), order.data_ptr(), count.data_ptr(), w_chunk,
                                 ld_w, c0, n, vc, h, dt, lse.data_ptr(), coef.data_ptr(), target_c.data_ptr(),
                                 eps / vocab_full, 1.0 - eps, d.data_ptr(), vcm, stream), "dlogits")
        _check(_lib.flce_grad_hidden(d.data_ptr(), vcm, count.data_ptr(), w_chunk, ld_w, n, vc, h, dt,
                                     acc.data_ptr(), stream), "grad_hidden")
        _check(_lib.flce_grad_weight(d.data_ptr(), vcm, count.data_ptr(), hidden2d.data_ptr(), _ld(hidden2d),
                                     order.data_ptr(), n, vc, h, dt, grad_w.data_ptr() + c0 * ld_gw * es, ld_gw,
                                     stream), "grad_weight")
    return acc, grad_w


def _contig_rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 and (t.shape[0] <= 1 or t.stride(0) >= t.shape[1]) else t.contiguous()


class CudaFusedLinearCrossEntropy(torch.autograd.Function):
    """The kernel path; same inputs and outputs as fused_linear_cross_entropy.ReferenceFusedLinearCrossEntropy
    (fp32 weights)."""

    @staticmethod
    def forward(ctx, hidden2d, weight, target, weights, group, eps, vocab_start, vocab_full):
        hidden2d, weight = _contig_rows(hidden2d), weight.contiguous()
        n = hidden2d.shape[0]
        order, pos, count, active = compact_rows(weights)
        target_c = target.index_select(0, order) - vocab_start
        stats = forward_stats(hidden2d, weight, order, count, target_c, eps)
        valid = torch.arange(n, device=order.device) < count
        w_c = weights.index_select(0, order) * valid
        loss_c, lse = combine_row_stats(gather_row_stats(stats, group), w_c, eps, vocab_full)
        ctx.save_for_backward(hidden2d, weight, weights, lse, order, pos, count, target_c)
        ctx.cfg = (eps, vocab_full)
        return uncompact(loss_c, pos, active)

    @staticmethod
    def backward(ctx, grad_loss):
        hidden2d, weight, weights, lse, order, pos, count, target_c = ctx.saved_tensors
        eps, vocab_full = ctx.cfg
        valid = torch.arange(hidden2d.shape[0], device=order.device) < count
        zero = torch.zeros((), dtype=torch.float32, device=order.device)
        coef = torch.where(valid, (grad_loss.float() * weights).index_select(0, order), zero).contiguous()
        lse = torch.where(valid, lse.float(), zero).contiguous()
        acc, grad_w = backward_grads(hidden2d, weight, order, count, target_c, coef, lse, eps, vocab_full)
        grad_h = uncompact(acc, pos, weights != 0).to(hidden2d.dtype)
        return grad_h, grad_w, None, None, None, None, None, None
