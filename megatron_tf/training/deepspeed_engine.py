"""Optional DeepSpeed ZeRO (stage 1/2) data parallelism: `deepspeed pretrain_gpt.py --deepspeed --deepspeed_config
ds.json ...` (or torchrun with the same flags).

DeepSpeed partitions the optimizer state (stage 1) and the gradients (stage 2) over the data-parallel group and
does the DP gradient reduction (an average), gradient clipping ("gradient_clipping" = --clip-grad) and the optimizer
step. The trainer keeps everything else: its own AdamW (our flags; the json must not define "optimizer" or
"scheduler"), its LR schedule, its bf16 autocast (the json's fp16/bf16 sections must be off: parameters and ZeRO's
partitions stay fp32), its 1F1B schedule and loss. The json's batch fields are overridden:
train_micro_batch_size_per_gpu = --micro-batch-size, gradient_accumulation_steps = 1 and
"managed_gradient_accumulation": false, so the trainer's microbatches only accumulate .grad and engine.step()
reduces once per global batch (DeepSpeed >= 0.18's caller-owned accumulation boundary). Backward passes are plain
torch autograd calls on the engine's outputs (DeepSpeed's "torch-style backward").

With TP/PP the engine gets an `mpu` (our process groups) so the gradient norm is reduced over the model-parallel
group and tensor-parallel duplicates (parameters without `tensor_model_parallel`) count once. ZeRO-2 releases
gradients during backward, so sequence parallelism and tied embeddings under PP (which sum gradients across ranks
after backward) need stage 1; this is checked.

Checkpoints use the same per-rank safetensors format as DDP runs: optimizer states are gathered per parameter with
deepspeed.utils.safe_get_full_optimizer_state, and restored with safe_set_full_optimizer_state, so a DeepSpeed
checkpoint loads into a DDP run and back.

deepspeed is imported lazily; it is an optional extra (`pip install deepspeed`).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from megatron_tf.config.cli import opt
from megatron_tf.utils.logging import get_logger

log = get_logger(__name__)


@dataclass
class DeepSpeedConfig:
    """DeepSpeed (its launcher's conventional flag names)."""

    deepspeed: bool = field(default=False, metadata=opt("Use DeepSpeed ZeRO for data parallelism."))
    deepspeed_config: str | None = field(default=None, metadata=opt(
        "DeepSpeed json (zero_optimization stage 1 or 2, ...).", flag="--deepspeed_config",
        aliases=("--deepspeed-config",)))
    local_rank: int | None = field(default=None, metadata=opt(
        "Set by the deepspeed launcher (the LOCAL_RANK environment variable is used).", flag="--local_rank",
        aliases=("--local-rank",)))

    def __post_init__(self):
        if self.deepspeed and not self.deepspeed_config:
            raise ValueError("--deepspeed needs --deepspeed_config ds.json")


def import_deepspeed():
    try:
        import deepspeed
    except ImportError as e:
        raise RuntimeError("--deepspeed: the deepspeed package is not installed (it is optional): "
                           "pip install deepspeed, or drop --deepspeed to use torch DDP") from e
    return deepspeed


def load_ds_config(path: str, micro_batch_size: int, dp_size: int, clip_grad: float) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--deepspeed_config {path}: cannot read JSON ({e})") from e
    for key in ("optimizer", "scheduler"):
        if key in cfg:
            raise ValueError(f"--deepspeed_config {path}: remove the {key!r} section: the optimizer and LR schedule "
                             "come from the trainer's flags (--lr, --adam-beta1, --lr-decay-style, ...)")
    for key in ("fp16", "bf16"):
        if cfg.get(key, {}).get("enabled"):
            raise ValueError(f"--deepspeed_config {path}: {key}.enabled must be false: mixed precision is the "
                             "trainer's --bf16 autocast (parameters and ZeRO partitions stay fp32)")
    stage = cfg.get("zero_optimization", {}).get("stage", 0)
    if stage not in (1, 2):
        raise ValueError(f"--deepspeed_config {path}: zero_optimization.stage must be 1 or 2, found {stage}")
    cfg = copy.deepcopy(cfg)
    cfg.update({"train_micro_batch_size_per_gpu": micro_batch_size, "gradient_accumulation_steps": 1,
                "train_batch_size": micro_batch_size * dp_size, "managed_gradient_accumulation": False,
                "gradient_clipping": float(clip_grad)})
    cfg.setdefault("steps_per_print", 1 << 30)
    cfg.setdefault("wall_clock_breakdown", False)
    return cfg


class MPU:
    """Megatron-style `mpu` object over our ParallelGroups (what deepspeed.initialize asks of it)."""

    def __init__(self, groups, handles: dict):
        self.g, self.h = groups, handles

    def get_data_parallel_group(self):
        return self.h["dp"]

    def get_data_parallel_rank(self):
        return self.g.dp_rank

    def get_data_parallel_world_size(self):
        return self.g.dp_size

    def get_data_parallel_group_ranks(self):
        return self.g.dp_ranks

    def get_model_parallel_group(self):
        return self.h["mp"]

    def get_model_parallel_rank(self):
        return self.g.mp_ranks.index(self.g.rank)

    def get_model_parallel_world_size(self):
        return self.g.tp_size * self.g.pp_size

    def get_tensor_model_parallel_group(self):
        return self.h["tp"]

    def get_tensor_model_parallel_rank(self):
        return self.g.tp_rank

    def get_tensor_model_parallel_world_size(self):
        return self.g.tp_size

    def get_tensor_model_parallel_src_rank(self):
        return self.g.tp_ranks[0]

    def get_pipeline_model_parallel_group(self):
        return self.h["pp"]

    def get_pipeline_model_parallel_rank(self):
        return self.g.pp_rank

    def get_pipeline_model_parallel_world_size(self):
        return self.g.pp_size


def _group_handles(groups) -> dict:
    """Real process-group handles for every group kind (singleton groups get their own communicator here, since
    DeepSpeed reads None as 'the world')."""
    from megatron_tf.parallel.groups import layout

    lay = layout(groups.world_size, groups.tp_size, groups.pp_size)
    out = {}
    for kind, lists in (("tp", lay.tp), ("dp", lay.dp), ("pp", lay.pp), ("mp", lay.mp)):
        existing = getattr(groups, f"{kind}_group")
        if existing is not None or len(lists[0]) > 1:
            out[kind] = existing
            continue
        for ranks in lists:  # collective: every rank creates every singleton group in the same order
            h = dist.new_group(ranks)
            if groups.rank in ranks:
                out[kind] = h
    return out


def initialize(module, optimizer, groups, ds_cfg: DeepSpeedConfig, micro_batch_size: int, clip_grad: float,
               sequence_parallel: bool, tied_pp: bool):
    """(engine, zero stage)."""
    deepspeed = import_deepspeed()
    cfg = load_ds_config(ds_cfg.deepspeed_config, micro_batch_size, groups.dp_size, clip_grad)
    stage = cfg["zero_optimization"]["stage"]
    if stage == 2 and (sequence_parallel or tied_pp):
        raise ValueError("--deepspeed with ZeRO stage 2 cannot sum sequence-parallel or tied-embedding gradients "
                         "after backward (ZeRO-2 partitions them during backward): use stage 1")
    mpu = MPU(groups, _group_handles(groups)) if groups.tp_size * groups.pp_size > 1 else None
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=cfg, mpu=mpu)
    log.info("DeepSpeed %s: ZeRO stage %d over %d data-parallel ranks", deepspeed.__version__, stage, groups.dp_size)
    return engine, stage


def full_optimizer_state(engine, names: list[str]) -> tuple[dict[str, torch.Tensor], dict]:
    """Full (DP-gathered) exp_avg / exp_avg_sq per parameter of this TP/PP shard, in our checkpoint format.
    Collective over the data-parallel group."""
    from deepspeed.utils import safe_get_full_optimizer_state

    _relink_optimizer_state(engine.optimizer)
    named = dict(engine.module.named_parameters())
    tensors = {}
    for name in names:
        for key in ("exp_avg", "exp_avg_sq"):
            v = safe_get_full_optimizer_state(named[name], key)
            if v is not None:
                tensors[f"{name}/{key}"] = v
    base = engine.optimizer.optimizer
    step = None
    for st in base.state.values():
        if "step" in st:
            step = float(st["step"])
            break
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
              for g in base.param_groups]
    for g in groups:
        g.pop("step", None)
    return tensors, {"names": names, "param_groups": groups, "scalars": {}, "deepspeed_step": step}


def _relink_optimizer_state(zero) -> None:
    """Point every parameter's optimizer-state fragments at the current Adam state. DeepSpeed 0.19 links them once,
    after its first per-group step, when the torch optimizer has created the state of the FIRST param group only,
    so the no-decay group's fragments stay empty (safe_get_full_optimizer_state then fails on norm weights)."""
    if not hasattr(zero, "_lazy_init_hp_params_optimizer_state"):
        raise RuntimeError("DeepSpeed's ZeRO optimizer has no _lazy_init_hp_params_optimizer_state (another "
                           "version): cannot save its optimizer state in megatron_tf's format; use --no-save-optim")
    if all(flat in zero.optimizer.state for flat in zero.single_partition_of_fp32_groups):
        zero._hp_optimizer_states_linked = False
        zero._lazy_init_hp_params_optimizer_state()


def load_full_optimizer_state(engine, names: list[str], tensors: dict[str, torch.Tensor], meta: dict,
                              where: str) -> None:
    """Restore a checkpoint's per-parameter Adam states into the ZeRO partitions (all DP ranks call it)."""
    from deepspeed.utils import safe_set_full_optimizer_state

    if meta["names"] != names:
        raise ValueError(f"{where}: optimizer parameters differ from the model's")
    zero = engine.optimizer
    base = zero.optimizer
    step = meta.get("deepspeed_step")
    if step is None:  # saved by a DDP run: torch AdamW keeps a per-parameter step
        steps = [float(v) for k, v in tensors.items() if k.endswith("/step")]
        step = steps[0] if steps else 0.0
    try:
        for flat in zero.single_partition_of_fp32_groups:  # materialise the lazily created Adam state
            st = base.state[flat]
            st.setdefault("exp_avg", torch.zeros_like(flat))
            st.setdefault("exp_avg_sq", torch.zeros_like(flat))
            st["step"] = torch.tensor(float(step), dtype=torch.float32)
        _relink_optimizer_state(zero)
    except AttributeError as e:
        raise RuntimeError(f"{where}: this DeepSpeed version's ZeRO optimizer internals differ ({e}); resume with "
                           "--no-load-optim") from e
    named = dict(engine.module.named_parameters())
    for name in names:
        for key in ("exp_avg", "exp_avg_sq"):
            t = tensors.get(f"{name}/{key}")
            if t is None:
                raise ValueError(f"{where}: no {key} for {name}")
            safe_set_full_optimizer_state(named[name], t.to(named[name].device, torch.float32), key)
    for saved, cur in zip(meta["param_groups"], base.param_groups):
        for k, v in saved.items():
            if k in ("lr", "weight_decay", "eps", "betas"):
                cur[k] = tuple(v) if k == "betas" else v


def sync_fp32_params_from_module(engine) -> None:
    """After loading weights into the module, copy them into ZeRO's fp32 partitions."""
    from deepspeed.utils import safe_set_full_fp32_param

    for p in engine.module.parameters():
        safe_set_full_fp32_param(p, p.detach().float())
