"""Training metrics: stdout lines, {save}/metrics.jsonl, a tqdm bar, optional TensorBoard / wandb, and MFU.

MFU (model FLOPs utilisation, PaLM: Chowdhery et al. 2022, appendix B):

    MFU = tokens/s x model_flops_per_token / (number of GPUs x peak FLOP/s per GPU)

model_flops_per_token = 3 x forward matmul FLOPs per token (megatron_tf/model/flops.py: Narayanan et al. 2021's
count, full s x s attention square, recomputation not counted). tokens/s counts every input position processed
(global batch x seq length / step time), masked or not: the compute is spent either way. Peak: dense bf16 tensor-core
FLOP/s from the vendors' datasheets (no sparsity), below; None on CPU, for fp32 runs and for unknown GPUs (set
MEGATRON_TF_PEAK_FLOPS to override).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field

import torch

from megatron_tf.config.cli import opt
from megatron_tf.utils.logging import get_logger

log = get_logger(__name__)

# Dense BF16 peak FLOP/s per GPU (NVIDIA datasheets; the sparsity figures are 2x these).
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),  # H100 PCIe: 756 TFLOPS
    ("H100 NVL", 835e12),  # H100 NVL: 835 TFLOPS
    ("GH200", 989e12),
    ("H200", 989e12),  # H200 SXM: 989 TFLOPS (same tensor cores as H100 SXM)
    ("H100", 989e12),  # H100 SXM5: 989 TFLOPS
    ("A100", 312e12),  # A100 SXM/PCIe: 312 TFLOPS
)


def peak_flops(device: torch.device, bf16: bool) -> float | None:
    env = os.environ.get("MEGATRON_TF_PEAK_FLOPS")
    if env:
        return float(env)
    if device.type != "cuda" or not bf16:
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS:
        if key in name:
            return value
    return None


def mfu(tokens_per_s: float, flops_per_token: float, num_devices: int, peak: float | None) -> float | None:
    if peak is None or not tokens_per_s:
        return None
    return tokens_per_s * flops_per_token / (num_devices * peak)


@dataclass
class LoggingConfig:
    """Logging (Megatron-LM's flags where Megatron has them)."""

    log_interval: int = field(default=10, metadata=opt("Report training metrics every N iterations."))
    tensorboard_dir: str | None = field(default=None, metadata=opt("Write TensorBoard events here (if installed)."))
    wandb_project: str | None = field(default=None, metadata=opt("Log to this wandb project (if installed)."))
    wandb_exp_name: str | None = field(default=None, metadata=opt("wandb run name."))
    progress_bar: bool = field(default=True, metadata=opt("Show a tqdm progress bar on rank 0 (stderr)."))
    metrics_file: str | None = field(default=None, metadata=opt(
        "JSON-lines metrics file (default {save}/metrics.jsonl when --save is given)."))

    def __post_init__(self):
        if self.log_interval < 1:
            raise ValueError(f"--log-interval must be >= 1, got {self.log_interval}")


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsWriter:
    """Rank 0's sinks. Every record is a flat dict with 'type' ('train' or 'eval') and 'iteration'."""

    def __init__(self, cfg: LoggingConfig, save_dir: str | None, enabled: bool, run_config: dict | None = None):
        self.enabled = enabled
        self.path = cfg.metrics_file or (os.path.join(save_dir, "metrics.jsonl") if save_dir else None)
        self.tb = None
        self.wandb = None
        if not enabled:
            return
        if self.path:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        if cfg.tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(cfg.tensorboard_dir)
            except Exception as e:  # tensorboard not installed
                log.warning("--tensorboard-dir given but TensorBoard is unavailable (%s): skipped", e)
        if cfg.wandb_project:
            try:
                import wandb

                self.wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_exp_name, config=run_config or {},
                                        dir=save_dir)
            except Exception as e:
                log.warning("--wandb-project given but wandb is unavailable (%s): skipped", e)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        rec = {k: _clean(v) for k, v in record.items()}
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
        step = rec["iteration"]
        prefix = "train" if rec["type"] == "train" else f"eval/{rec.get('name', 'valid')}"
        numeric = {k: v for k, v in rec.items() if isinstance(v, (int, float)) and k not in ("iteration",)}
        if self.tb is not None:
            for k, v in numeric.items():
                self.tb.add_scalar(f"{prefix}/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"{prefix}/{k}": v for k, v in numeric.items()}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def format_train(rec: dict) -> str:
    parts = [f"iteration {rec['iteration']:>8d}", f"loss {rec['loss']:.6f}", f"lr {rec['lr']:.3e}",
             f"grad norm {rec['grad_norm']:.4f}" if rec.get("grad_norm") is not None else "grad norm n/a",
             f"tokens seen {rec['tokens_seen']:,}", f"learned {rec['tokens_learned']:,}",
             f"masked {rec['masked_fraction']:.4f}", f"{rec['tokens_per_s']:,.0f} tok/s",
             f"{rec['step_time_s'] * 1e3:.1f} ms/step"]
    if rec.get("mfu") is not None:
        parts.append(f"MFU {rec['mfu'] * 100:.1f}%")
    return " | ".join(parts)


def format_eval(rec: dict) -> str:
    s = f"eval {rec['name']} at iteration {rec['iteration']}: loss {rec['loss']:.6f} over {rec['tokens']:,} tokens"
    if rec.get("loss_forget") is not None:
        s += f" (forget targets {rec['loss_forget']:.4f}, others {rec['loss_retain']:.4f})"
    return s


def progress_bar(total: int, unit: str, enabled: bool, initial: int = 0):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit=unit, unit_scale=unit == "tok", dynamic_ncols=True,
                file=sys.stderr, desc="train")
