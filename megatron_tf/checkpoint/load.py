"""Reading a trainer checkpoint outside the trainer: its saved run record, or its whole model in one process.

    run = read_run("runs/demo/ckpt/none")              # --save directory (its `latest`) or an iter_* directory
    run.path, run.config, run.state                    # iter_* directory, config.json, state.json ({} when absent)
    run.model_config, run.tokenizer_config, run.seq_length, run.configs["filter"]["token_filter"]

    m = load_model("runs/demo/ckpt/none")              # TP shards merged, PP stages joined, eval mode
    m.model, m.model_config, m.tokenizer_config, m.tokenizer, m.run
    logits = m.model(input_ids=ids)                    # [b, s, V_padded] (the full vocabulary)

The returned model's make_vocab_size_divisible_by is the saved one times the saved TP size, so its padded
vocabulary is the checkpoint's. Nothing here imports the trainer: evaluation, labeling and post-training load
models through this module (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import NamedTuple

import torch

from megatron_tf.model.config import ModelConfig
from megatron_tf.model.gpt import GPTModel
from megatron_tf.model.hf_export import merge_pp_state_dicts, merge_tp_state_dicts
from megatron_tf.tokenizer.config import TokenizerConfig
from megatron_tf.tokenizer.tokenizer import build_tokenizer
from megatron_tf.utils.logging import get_logger

from .format import load_model_shard, read_json, resolve_checkpoint_dir
from .integrity import CheckpointError

log = get_logger(__name__)


@dataclass(frozen=True)
class Run:
    """One checkpoint's saved record: where it is, its config.json and its state.json."""

    path: str  # the iter_* directory
    config: dict  # config.json: configs (every flag of the run), parallel sizes, tokenizer, versions
    state: dict  # state.json: iteration, consumed samples, tokens seen / learned ({} when absent)

    @property
    def configs(self) -> dict:
        """The run's configs by section (model, training, tokenizer, data, filter, ...), as saved."""
        return self.config.get("configs", {})

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.configs["model"])

    @property
    def tokenizer_config(self) -> TokenizerConfig:
        return TokenizerConfig.from_dict(self.configs.get("tokenizer", {}))

    @property
    def arm(self) -> str | None:
        """The run's --token-filter (none / mask / remove / document)."""
        return self.configs.get("filter", {}).get("token_filter")

    @property
    def seq_length(self) -> int | None:
        v = self.configs.get("training", {}).get("seq_length")
        return int(v) if v is not None else None


def read_run(path: str, ckpt_step: int | None = None) -> Run:
    """The run record of `path` (a --save directory: its `latest`, or iteration ckpt_step; or an iter_* directory);
    files are verified against the checkpoint's checksums. No checkpoint there is a CheckpointError naming `path`."""
    ckpt_dir = resolve_checkpoint_dir(path, ckpt_step)
    if ckpt_dir is None:
        raise CheckpointError(f"{path}: no checkpoint (no `latest` file and not an iter_* directory)")
    config = read_json(os.path.join(ckpt_dir, "config.json"))
    state_path = os.path.join(ckpt_dir, "state.json")
    state = read_json(state_path) if os.path.isfile(state_path) else {}
    return Run(ckpt_dir, config, state)


def merged_state_dict(ckpt_dir: str, config: dict | None = None) -> tuple[dict[str, torch.Tensor], ModelConfig, dict]:
    """(full TP=1, PP=1 state dict, its ModelConfig, config.json) of an iter_* directory; `config`: its config.json
    when the caller has already read it (read_run), so it is not read and verified twice."""
    if config is None:
        config = read_json(os.path.join(ckpt_dir, "config.json"))
    mcfg = ModelConfig.from_dict(config["configs"]["model"])
    tp = config["parallel"]["tensor_model_parallel_size"]
    pp = config["parallel"]["pipeline_model_parallel_size"]
    stages = []
    for p in range(pp):
        shards = [load_model_shard(ckpt_dir, t, p) for t in range(tp)]
        stages.append(merge_tp_state_dicts(shards, mcfg) if tp > 1 else shards[0])
    # the padded vocabulary depends on the TP size it was trained with: keep it in the single-process model
    full_cfg = dataclasses.replace(mcfg, make_vocab_size_divisible_by=mcfg.make_vocab_size_divisible_by * tp,
                                   sequence_parallel=False)
    return merge_pp_state_dicts(stages), full_cfg, config


class LoadedModel(NamedTuple):
    model: GPTModel
    model_config: ModelConfig  # the returned model's (TP=1, padded vocabulary kept)
    tokenizer_config: TokenizerConfig
    tokenizer: object | None  # None (with a warning) when the tokenizer file is no longer where training found it
    run: Run


def load_model(path: str, device: str | torch.device = "cpu", ckpt_step: int | None = None,
               dtype: torch.dtype = torch.float32) -> LoadedModel:
    """The whole model of a checkpoint in one process (TP shards merged, PP stages joined), in eval mode."""
    run = read_run(path, ckpt_step)
    sd, full_cfg, _ = merged_state_dict(run.path, run.config)
    model = GPTModel(full_cfg, None, device=torch.device("meta"))
    model = model.to_empty(device=device)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{run.path}: merged weights do not fit the model (missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]})")
    model = model.to(dtype).eval()
    tc = run.tokenizer_config
    try:
        tokenizer = build_tokenizer(tc.tokenizer_type, tc.tokenizer_model, tc.vocab_size)
    except Exception as e:  # the tokenizer file moved: the weights are still usable
        log.warning("%s: cannot rebuild the tokenizer (%s); returning None", run.path, e)
        tokenizer = None
    return LoadedModel(model, full_cfg, tc, tokenizer, run)
