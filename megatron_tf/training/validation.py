"""Periodic evaluation: the valid split and named extra datasets (--eval-data-path NAME=PREFIX ...).

Every evaluation reads the SAME first n = min(eval_iters x global batch, one epoch) samples of each set (rounded
down to whole micro batches x data-parallel size), so losses are comparable across iterations and runs (Megatron
instead continues its validation iterator). The loss is sum(w CE) / sum(w) over those samples, all ranks.

Named sets use --eval-token-filter (default none: the point is to measure what the model knows, including the
forget domain). When the set has forget sidecars, the loss is also reported separately on forget targets and on the
other targets (`loss_forget`, `loss_retain`). The valid split of --data-path uses the training filter (the data
layer's rule: valid loss is then the loss on the tokens the model is meant to learn).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_tf.config.cli import opt
from megatron_tf.data.builder import build_gpt_datasets
from megatron_tf.data.config import FilterConfig, GPTDatasetConfig


@dataclass
class EvalConfig:
    """Validation (Megatron-LM's flags) and extra named evaluation sets."""

    eval_interval: int = field(default=1000, metadata=opt("Evaluate every N iterations (and at the end)."))
    eval_iters: int = field(default=10, metadata=opt(
        "Global batches per evaluation and set (0 disables evaluation)."))
    eval_data_path: list[str] | None = field(default=None, metadata=opt(
        "Extra evaluation sets NAME=PREFIX (e.g. forget=out/heldout_medical_text_document), reported per name.",
        metavar="NAME=PREFIX"))
    eval_token_filter: str = field(default="none", metadata=opt(
        "Token filter of the named evaluation sets.", choices=("none", "mask", "remove")))

    def __post_init__(self):
        if self.eval_interval < 1 or self.eval_iters < 0:
            raise ValueError(f"--eval-interval must be >= 1 and --eval-iters >= 0, got {self.eval_interval}, "
                             f"{self.eval_iters}")
        parse_named_paths(self.eval_data_path or [])


def parse_named_paths(items: list[str]) -> list[tuple[str, str]]:
    out, seen = [], set()
    for item in items:
        name, sep, prefix = item.partition("=")
        if not sep or not name or not prefix:
            raise ValueError(f"--eval-data-path expects NAME=PREFIX, got {item!r}")
        if name in seen or name == "valid":
            raise ValueError(f"--eval-data-path: name {name!r} is used twice (or is the reserved 'valid')")
        seen.add(name)
        out.append((name, prefix))
    return out


def build_eval_datasets(cfg: EvalConfig, data_cfg: GPTDatasetConfig, filter_cfg: FilterConfig, tokenizer,
                        rank: int = 0, barrier=None) -> dict:
    """{name: dataset (one epoch)} for the named sets."""
    out = {}
    for name, prefix in parse_named_paths(cfg.eval_data_path or []):
        dcfg = GPTDatasetConfig(valid_data_path=[prefix], seq_length=data_cfg.seq_length, seed=data_cfg.seed,
                                data_cache_path=data_cfg.data_cache_path, eod_mask_loss=data_cfg.eod_mask_loss,
                                reset_position_ids=data_cfg.reset_position_ids, num_workers=0)
        fcfg = FilterConfig(token_filter=cfg.eval_token_filter, forget_threshold=filter_cfg.forget_threshold,
                            forget_sidecar_name=filter_cfg.forget_sidecar_name)
        out[name] = build_gpt_datasets(dcfg, fcfg, tokenizer, [None, None, None], rank=rank, barrier=barrier).valid
    return out


def eval_num_samples(dataset_len: int, eval_iters: int, global_batch_size: int, per_step: int) -> int:
    """Samples read per evaluation: min(eval_iters x gbs, len) rounded down to a multiple of mbs x dp."""
    n = min(eval_iters * global_batch_size, dataset_len)
    return (n // per_step) * per_step
