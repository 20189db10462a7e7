"""What the trainer checks and flags when it saves and resumes (Megatron-LM's flags): CheckpointConfig, the same
TP/PP layout and architecture, data/filter config changes refused unless overridden, metrics.jsonl truncated to
the resumed iteration. The files themselves are megatron_tf/checkpoint/ (format.py, docs/training.md).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field

from megatron_tf.checkpoint.integrity import CheckpointError
from megatron_tf.config.cli import opt
from megatron_tf.utils.io import atomic_write
from megatron_tf.utils.logging import get_logger

log = get_logger(__name__)


@dataclass
class CheckpointConfig:
    """Saving and resuming (Megatron-LM's flags)."""

    save: str | None = field(default=None, metadata=opt("Checkpoint (and metrics.jsonl) directory."))
    load: str | None = field(default=None, metadata=opt(
        "Resume from this checkpoint directory (its `latest`), or an iter_* directory inside it. "
        "Nothing to load there is fine for a fresh start when --load equals --save; iter_* directories without a "
        "`latest` file are refused (name one with --ckpt-step)."))
    save_interval: int | None = field(default=None, metadata=opt("Save every N iterations (and at the end)."))
    ckpt_step: int | None = field(default=None, metadata=opt(
        "Load this iteration (iter_N) instead of `latest`; also how to resume a directory that lost `latest`."))
    override_data_config: bool = field(default=False, metadata=opt(
        "Resume although the data (--data-path, --split, --seq-length, ...) or the token/document filter "
        "(--token-filter, --forget-threshold, ...) differ from the checkpoint's (the differences are logged)."))
    no_load_optim: bool = field(default=False, metadata=opt("Do not load the optimizer state."))
    no_load_rng: bool = field(default=False, metadata=opt("Do not load the RNG states."))
    finetune: bool = field(default=False, metadata=opt(
        "Load the weights only: iteration, data position, token counters, optimizer and RNG start fresh."))
    no_save_optim: bool = field(default=False, metadata=opt("Do not save the optimizer state."))

    def __post_init__(self):
        if self.save_interval is not None and self.save_interval < 1:
            raise ValueError(f"--save-interval must be >= 1, got {self.save_interval}")



def check_layout(ckpt_dir: str, config: dict, tp: int, pp: int) -> None:
    par = config["parallel"]
    if par["tensor_model_parallel_size"] != tp or par["pipeline_model_parallel_size"] != pp:
        raise CheckpointError(
            f"{ckpt_dir} was saved with tensor-parallel size {par['tensor_model_parallel_size']} and pipeline-parallel"
            f" size {par['pipeline_model_parallel_size']}; this run has {tp} and {pp}. Resharding on load is not "
            "supported: use the same sizes, or merge it with megatron_tf.checkpoint.load_model")


# architecture fields that must match to load weights (the rest may change between runs); norm_epsilon and
# rotary_base change no shape but change the function the weights compute (an imported HF model continued without
# its --norm-epsilon / --rotary-base would silently be another model)
ARCH_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "group_query_attention",
               "num_query_groups", "kv_channels", "vocab_size", "make_vocab_size_divisible_by",
               "untie_embeddings_and_output_weights", "activation", "normalization", "norm_epsilon", "rotary_base",
               "decoder_first_pipeline_num_layers", "decoder_last_pipeline_num_layers")


# config.json sections renamed since checkpoints were first saved: old name -> current name (Configs attribute)
RENAMED_SECTIONS = {"xent": "cross_entropy"}

# data fields that do not change which samples are trained on (all other data and filter fields do)
DATA_RUNTIME_FIELDS = ("num_workers", "data_cache_path")


def _norm(section: str, key: str, v):
    if section == "data" and key.endswith("data_path") and isinstance(v, list):
        return [os.path.normpath(x) if not _is_number(x) else x for x in v]
    return v


def _is_number(x) -> bool:
    try:
        float(x)
    except (TypeError, ValueError):
        return False
    return True


def current_sections(configs: dict) -> dict:
    """A saved configs dict (config.json "configs") with renamed sections under their current names; a section
    saved under both names keeps the current one."""
    out = dict(configs)
    for old, new in RENAMED_SECTIONS.items():
        if old in out:
            section = out.pop(old)
            out.setdefault(new, section)
    return out


def config_differences(saved: dict, current: dict) -> list[tuple[str, object, object]]:
    """(section.key, saved, current) for every config field that differs (fields the checkpoint predates skipped;
    sections saved under an older name compared under the current one)."""
    saved = current_sections(saved)
    out = []
    for section, cur in current.items():
        old = saved.get(section)
        if not isinstance(old, dict) or not isinstance(cur, dict):
            continue
        for key, v in cur.items():
            if key in old and _norm(section, key, old[key]) != _norm(section, key, v):
                out.append((f"{section}.{key}", old[key], v))
    return out


def check_run_config(ckpt_dir: str, saved: dict, current: dict, override: bool, finetune: bool) -> None:
    """Log every difference between the checkpoint's configs and this run's; refuse a resume whose data or
    filter config differs (the data position and the learned-token counts would silently mean another thing)
    unless --override-data-config, or --finetune (which starts a new run on the loaded weights)."""
    diffs = config_differences(saved, current)
    data_diffs = []
    for name, old, new in diffs:
        section, key = name.split(".", 1)
        is_data = section == "filter" or (section == "data" and key not in DATA_RUNTIME_FIELDS)
        if is_data:
            data_diffs.append(f"{name}: checkpoint {old!r}, now {new!r}")
        (log.warning if is_data else log.info)("--load %s: %s differs: checkpoint %r, now %r", ckpt_dir, name,
                                               old, new)
    if data_diffs and not (override or finetune):
        raise CheckpointError(
            f"{ckpt_dir}: this run's data or filter config differs from the checkpoint's: " + "; ".join(data_diffs)
            + ". Resuming would continue the data position and token counts on other data; pass "
            "--override-data-config to resume anyway, or --finetune to start a new run from these weights")


def check_architecture(ckpt_dir: str, saved: dict, current: dict) -> None:
    diff = [f"{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}" for k in ARCH_FIELDS
            if saved.get(k) != current.get(k)]
    if diff:
        raise CheckpointError(f"{ckpt_dir}: model architecture differs: " + "; ".join(diff))



def truncate_metrics(path: str, iteration: int) -> None:
    """Keep the records of iterations <= `iteration` (a resumed run rewrites what the killed run logged later)."""
    if not os.path.isfile(path):
        return
    keep = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            with contextlib.suppress(json.JSONDecodeError):
                rec = json.loads(line)
                if int(rec.get("iteration", 0)) <= iteration:
                    keep.append(line if line.endswith("\n") else line + "\n")
    with atomic_write(path, "w") as f:
        f.writelines(keep)
