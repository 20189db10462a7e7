"""CUDA path of the fused LM-head cross-entropy (kernels in csrc/fused_linear_xent.cu): not wired yet."""

from __future__ import annotations


def supported(hidden) -> tuple[bool, str]:
    return False, "the CUDA kernels of the fused-linear cross-entropy are not available in this build"
