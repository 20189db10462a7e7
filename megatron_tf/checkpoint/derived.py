"""Load a trainer checkpoint as one whole model and save a modified model in the trainer's checkpoint format.

    base = load_checkpoint("runs/demo/ckpt/none")            # TP/PP shards merged (load.py's load_model)
    base.model, base.tokenizer, base.seq_length, base.pretrain_tokens, base.config, base.state, base.arm
    save_checkpoint(model, base, "runs/rmu", provenance={"method": "rmu", ...})

The saved checkpoint is a TP = 1, PP = 1 checkpoint of the trainer (format.py, layout in
docs/training.md): `latest`, iter_N/config.json (the source run's configs, with the merged model config and parallel
sizes 1, plus `derived_from`: the source checkpoint and the provenance dict), iter_N/state.json (the source's state:
iteration, tokens seen / learned by PRETRAINING, so reports can relate attack tokens to pretraining tokens),
iter_N/mp_rank_00_000/model.safetensors and the RNG files. No optimizer state. tools/evaluate.py, tools/export_hf.py,
load_model and `pretrain(--load ... --finetune)` read it like any other checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass

import torch

from . import format as ckpt
from .integrity import CheckpointError
from .load import load_model
from .states import rng_state


@dataclass
class LoadedCheckpoint:
    path: str  # the iter_* directory
    model: torch.nn.Module
    tokenizer: object
    config: dict  # config.json
    state: dict  # state.json ({} when absent)

    @property
    def seq_length(self) -> int:
        return int(self.config["configs"]["training"]["seq_length"])

    @property
    def pretrain_tokens(self) -> int | None:
        """Tokens the model was pretrained on (state.json tokens_seen; a derived checkpoint keeps its source's)."""
        v = self.state.get("tokens_seen")
        return int(v) if v is not None else None

    @property
    def arm(self) -> str | None:
        """The source run's --token-filter."""
        return self.config.get("configs", {}).get("filter", {}).get("token_filter")


def load_checkpoint(path: str, device: str | torch.device = "cpu", ckpt_step: int | None = None
                    ) -> LoadedCheckpoint:
    m = load_model(path, device=device, ckpt_step=ckpt_step)
    if m.tokenizer is None:
        raise CheckpointError(f"{m.run.path}: the tokenizer of this run cannot be rebuilt (its file moved?)")
    return LoadedCheckpoint(m.run.path, m.model, m.tokenizer, m.run.config, m.run.state)


def save_checkpoint(model: torch.nn.Module, source: LoadedCheckpoint, save_dir: str, provenance: dict,
                    state_updates: dict | None = None) -> str:
    """Write `model` (a whole TP = 1 GPTModel) as a checkpoint derived from `source`; returns the iter_* directory.
    The iteration number is the source's (so the name says which pretraining step it derives from)."""
    if getattr(model, "tp_size", 1) != 1 or not (model.pre_process and model.post_process):
        raise ValueError("save_checkpoint: expects a whole model in one process (TP = 1, all layers)")
    names = [n for n, _ in model.named_parameters()]
    if any(".lora_" in n for n in names):
        raise ValueError("save_checkpoint: the model still has LoRA adapters; merge them first (lora.merge_lora)")
    cfg = copy.deepcopy(source.config)
    iteration = int(cfg.pop("iteration", source.state.get("iteration", 0)))
    cfg.pop("format", None)
    cfg["configs"]["model"] = dataclasses.asdict(model.config)
    cfg["configs"]["parallel"] = {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1}
    cfg["parallel"] = {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1, "data_parallel_size": 1,
                       "world_size": 1}
    cfg["padded_vocab_size"] = model.padded_vocab_size
    cfg["derived_from"] = {"checkpoint": os.path.abspath(source.path),
                           "source_parallel": source.config.get("parallel"),
                           "source_derived_from": source.config.get("derived_from"), **provenance}
    state = {k: v for k, v in source.state.items() if k != "format"}
    state.update(state_updates or {})
    state.setdefault("iteration", iteration)
    payload = ckpt.RankPayload(rank=0, tp_rank=0, pp_rank=0, write_shard=True,
                               model={k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()},
                               optimizer=None, rng=rng_state(getattr(model, "rng", None)))
    return ckpt.save_checkpoint(save_dir, iteration, payload, cfg, state)
