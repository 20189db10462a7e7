"""Pre-normalisation layers: RMSNorm (default) and LayerNorm without bias.

RMSNorm(x) = x / sqrt(mean(x^2) + eps) * g   (Zhang & Sennrich 2019), computed by torch.nn.functional.rms_norm, or on
CUDA by NVIDIA apex's fused kernel when `apex.normalization` imports (the PyPI package named 'apex' is unrelated and
has no such module, so it is never picked up). The choice is logged once per process and device type.

Under sequence parallelism each TP rank normalises its own sequence chunk, so the weight's gradient is partial:
the weight is marked `sequence_parallel = True` and the trainer sums it over the TP group
(megatron_tf.parallel.layers.allreduce_sequence_parallel_grads).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from megatron_tf.utils.logging import get_logger

log = get_logger(__name__)


@functools.cache
def _apex_rms_norm():
    try:
        from apex.normalization.fused_layer_norm import fused_rms_norm_affine
    except Exception:  # not installed, or not NVIDIA apex
        return None
    return fused_rms_norm_affine


@functools.cache
def _log_choice(kind: str, device_type: str, impl: str) -> None:
    log.info("%s on %s: %s", kind, device_type, impl)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-5, sequence_parallel: bool = False, device=None,
                 dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.weight.sequence_parallel = sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            fused = _apex_rms_norm()
            if fused is not None:
                _log_choice("RMSNorm", "cuda", "apex fused_rms_norm_affine")
                return fused(x, self.weight, self.weight.shape, self.eps)
        _log_choice("RMSNorm", x.device.type, "torch.nn.functional.rms_norm")
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class LayerNorm(nn.Module):
    """LayerNorm with a weight and no bias (torch.nn.functional.layer_norm)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, sequence_parallel: bool = False, device=None,
                 dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.weight.sequence_parallel = sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, None, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def build_norm(config, device=None) -> nn.Module:
    cls = RMSNorm if config.normalization == "RMSNorm" else LayerNorm
    return cls(config.hidden_size, config.norm_epsilon, sequence_parallel=config.sequence_parallel, device=device)
