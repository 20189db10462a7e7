"""Checkpoints: per-rank safetensors shards + JSON, written atomically, resumed exactly. Nothing is unpickled.

Layout (docs/training.md has a worked example):

    {save}/latest                                 "iter_0000200\\n" (replaced atomically after the directory is done)
    {save}/iter_0000200/config.json               every config, tokenizer, parallel sizes, versions
    {save}/iter_0000200/state.json                iteration, consumed samples, tokens seen/learned, lr
    {save}/iter_0000200/mp_rank_{tp:02d}_{pp:03d}/model.safetensors       this TP/PP shard's state dict
    {save}/iter_0000200/mp_rank_{tp:02d}_{pp:03d}/optimizer.safetensors   "<param name>/<state key>" tensors
    {save}/iter_0000200/mp_rank_{tp:02d}_{pp:03d}/optimizer.json          param groups, names, implementation
    {save}/iter_0000200/rng/rank_{global:05d}.safetensors                 torch CPU/CUDA + model-parallel RNG
    {save}/iter_0000200/rng/rank_{global:05d}.json                        numpy and python RNG states

Writing (collective over all ranks): rank 0 creates {save}/.iter_0000200.tmp; every rank writes its files there
(model/optimizer by data-parallel rank 0 of each TP/PP shard, RNG by every rank) and fsyncs them; after a barrier
rank 0 writes config/state JSON, renames the directory to iter_0000200 and then replaces `latest`. A run killed at
any point leaves `latest` on the previous complete checkpoint (and a stale .tmp directory, removed by the next
save). Multi-node runs need {save} on a shared filesystem.

Loading reads `latest` (or --ckpt-step N, or a given iter_* directory), checks that the TP and PP sizes and the
architecture match (a different TP/PP layout is refused with both values named: merge/reshard with
load_model_from_checkpoint), and restores weights, optimizer state, RNG states and the data position, so the
continued run's losses equal an uninterrupted run's (bitwise on CPU in fp32; tested after kill -9).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from megatron_tf.config.cli import opt
from megatron_tf.utils.io import atomic_write, fsync_dir, honour_umask
from megatron_tf.utils.io import read_json as load_json
from megatron_tf.utils.logging import get_logger

from . import checkpoint_integrity as integrity
from .checkpoint_integrity import CheckpointCorrupt, CheckpointError

log = get_logger(__name__)

FORMAT = "megatron_tf-checkpoint-v1"
LATEST = "latest"


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


def iter_dirname(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def shard_dirname(tp_rank: int, pp_rank: int) -> str:
    return f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"


# ------------------------------------------------------------------------------------------------------------------
# RNG states (JSON-safe numpy/python states; torch states as uint8 tensors)
# ------------------------------------------------------------------------------------------------------------------
def rng_state(model_rng=None) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    if model_rng is not None:
        for k, v in model_rng.states().items():
            tensors[f"model_parallel_rng/{k}"] = v
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the legacy global generator's state)
    version, internal, gauss = random.getstate()
    meta = {"numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict, model_rng=None) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])
    if model_rng is not None:
        prefix = "model_parallel_rng/"
        model_rng.set_states({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


# ------------------------------------------------------------------------------------------------------------------
# torch optimizer state <-> (tensors by parameter name, JSON)
# ------------------------------------------------------------------------------------------------------------------
def optimizer_state(optimizer, names: list[str]) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    order = [i for g in sd["param_groups"] for i in g["params"]]
    if len(order) != len(names):
        raise AssertionError(f"optimizer has {len(order)} parameters, {len(names)} names")
    tensors, scalars = {}, {}
    for idx, name in zip(order, names):
        for k, v in sd["state"].get(idx, {}).items():
            if torch.is_tensor(v):
                tensors[f"{name}/{k}"] = v
            else:
                scalars[f"{name}/{k}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
              for g in sd["param_groups"]]
    return tensors, {"names": names, "param_groups": groups, "scalars": scalars}


def load_optimizer_state(optimizer, names: list[str], tensors: dict[str, torch.Tensor], meta: dict,
                         where: str) -> None:
    if meta["names"] != names:
        missing = sorted(set(names) - set(meta["names"]))
        extra = sorted(set(meta["names"]) - set(names))
        raise CheckpointError(f"{where}: optimizer parameters differ from the model's (missing {missing[:4]}, "
                              f"unexpected {extra[:4]}, or another order)")
    current = optimizer.state_dict()
    order = [i for g in current["param_groups"] for i in g["params"]]
    by_name: dict[str, dict] = {}
    for k, v in [*tensors.items(), *meta["scalars"].items()]:
        name, key = k.rsplit("/", 1)
        by_name.setdefault(name, {})[key] = v
    if meta.get("deepspeed_step") is not None:  # saved by a DeepSpeed run: one step count for all parameters
        for entry in by_name.values():
            entry.setdefault("step", torch.tensor(float(meta["deepspeed_step"]), dtype=torch.float32))
    state = {idx: by_name[name] for idx, name in zip(order, names) if name in by_name}
    groups = []
    for saved, cur in zip(meta["param_groups"], current["param_groups"]):
        g = dict(saved)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        g["params"] = cur["params"]
        groups.append(g)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ------------------------------------------------------------------------------------------------------------------
# Saving
# ------------------------------------------------------------------------------------------------------------------
def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _save_tensors(tensors: dict[str, torch.Tensor], path: str, metadata: dict | None = None) -> str:
    cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(cpu, path, metadata={k: str(v) for k, v in (metadata or {}).items()})
    honour_umask(path)  # save_file creates 0600 files: a shared cluster's group could not read them
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    return path


def _save_json(obj, path: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    return path


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _refuse_nonfinite(save_dir: str, iteration: int, payload) -> None:
    """Collective: every rank checks its weights and optimizer state; if any rank holds a non-finite value, all
    ranks raise (so none waits at a barrier) and nothing is written: a diverged model never becomes `latest`."""
    bad = nonfinite_tensors(payload.model) + (nonfinite_tensors(payload.optimizer[0]) if payload.optimizer else [])
    flag = torch.tensor([float(len(bad))])
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":  # NCCL reduces device tensors only
            flag = flag.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(flag)
        flag = flag.cpu()
    if float(flag[0]) > 0:
        here = f" (this rank's: {bad[:4]})" if bad else ""
        raise CheckpointError(f"refusing to save {os.path.join(save_dir, iter_dirname(iteration))}: "
                              f"{int(flag[0])} weight/optimizer tensors hold NaN or infinite values{here}; "
                              "`latest` stays on the previous checkpoint")


@dataclass
class RankPayload:
    """What one rank contributes to a checkpoint."""

    rank: int
    tp_rank: int
    pp_rank: int
    write_shard: bool  # data-parallel rank 0 of this TP/PP shard
    model: dict[str, torch.Tensor]
    optimizer: tuple[dict[str, torch.Tensor], dict] | None
    rng: tuple[dict[str, torch.Tensor], dict]


def save_checkpoint(save_dir: str, iteration: int, payload: RankPayload, config: dict, state: dict,
                    fault_hook=None) -> str:
    """Write iter_{iteration} atomically (collective: every rank calls it). Returns the final directory."""
    final = os.path.join(save_dir, iter_dirname(iteration))
    tmp = os.path.join(save_dir, f".{iter_dirname(iteration)}.tmp")
    _refuse_nonfinite(save_dir, iteration, payload)
    written = []
    if payload.rank == 0:
        os.makedirs(save_dir, exist_ok=True)
        for name in os.listdir(save_dir):  # stale temporaries of interrupted saves
            if name.startswith(".iter_") and name.endswith(".tmp"):
                shutil.rmtree(os.path.join(save_dir, name), ignore_errors=True)
        os.makedirs(os.path.join(tmp, "rng"))
    _barrier()
    if payload.write_shard:
        shard = os.path.join(tmp, shard_dirname(payload.tp_rank, payload.pp_rank))
        os.makedirs(shard, exist_ok=True)
        written.append(_save_tensors(payload.model, os.path.join(shard, "model.safetensors"), {"format": FORMAT}))
        if fault_hook is not None:
            fault_hook("save")
        if payload.optimizer is not None:
            tensors, meta = payload.optimizer
            written.append(_save_tensors(tensors, os.path.join(shard, "optimizer.safetensors"), {"format": FORMAT}))
            written.append(_save_json(meta, os.path.join(shard, "optimizer.json")))
        fsync_dir(shard)
    rng_tensors, rng_meta = payload.rng
    written.append(_save_tensors(rng_tensors, os.path.join(tmp, "rng", f"rank_{payload.rank:05d}.safetensors")))
    written.append(_save_json(rng_meta, os.path.join(tmp, "rng", f"rank_{payload.rank:05d}.json")))
    fsync_dir(os.path.join(tmp, "rng"))
    integrity.write_piece(tmp, payload.rank, written)  # checksums of this rank's files (checkpoint_integrity.py)
    _barrier()
    if payload.rank == 0:
        integrity.merge_pieces(tmp, [_save_json({"format": FORMAT, "iteration": iteration, **config},
                                      os.path.join(tmp, "config.json")),
                           _save_json({"format": FORMAT, **state}, os.path.join(tmp, "state.json"))])
        fsync_dir(tmp)
        if os.path.exists(final):  # a complete directory of a run killed before it updated `latest`
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(save_dir)
        with atomic_write(os.path.join(save_dir, LATEST), "w") as f:
            f.write(iter_dirname(iteration) + "\n")
        log.info("saved checkpoint %s", final)
    _barrier()
    return final


# ------------------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------------------
def resolve_checkpoint_dir(path: str, ckpt_step: int | None = None) -> str | None:
    """The iter_* directory to load from `path`, or None when `path` holds no checkpoint yet."""
    if os.path.isfile(os.path.join(path, "config.json")) and os.path.basename(os.path.normpath(path)).startswith(
            "iter_"):
        return path
    if ckpt_step is not None:
        d = os.path.join(path, iter_dirname(ckpt_step))
        if not os.path.isdir(d):
            raise CheckpointError(f"--ckpt-step {ckpt_step}: {d} does not exist")
        return d
    latest = os.path.join(path, LATEST)
    if not os.path.isfile(latest):
        found = integrity.checkpoint_dirs(path)
        if found:  # starting from scratch here would train over (and then overwrite) these checkpoints
            it, newest = found[0]
            raise CheckpointError(
                f"{path} holds {len(found)} checkpoint(s), newest {newest}, but no `{LATEST}` file (deleted, or "
                f"the directory was copied without it): refusing to start from scratch over them. Say which to "
                f"load: --ckpt-step {it} (or --load {newest}); or restore {latest}")
        return None
    with open(latest, encoding="utf-8") as f:
        name = f.read().strip()
    d = os.path.join(path, name)
    if not name.startswith("iter_") or not os.path.isdir(d):
        raise CheckpointError(f"{latest} names {name!r}, which is not a checkpoint directory in {path}")
    return d


def _corrupt(path: str, reason: str) -> CheckpointCorrupt:
    root = integrity.checkpoint_root(path)
    where = f"; {integrity.pointer_to_previous(root)}" if root else ""
    return CheckpointCorrupt(f"{reason}{where} (tools/verify.py checks a whole checkpoint)")


def _verified(path: str) -> None:
    """The file against its checkpoint's checksums.json; errors name it and the previous complete checkpoint."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file missing: {path}")
    try:
        integrity.verify_one(path)
    except CheckpointCorrupt as e:
        raise _corrupt(path, str(e)) from e


def read_json(path: str) -> dict:
    _verified(path)
    try:
        d = load_json(path, CheckpointCorrupt)
    except CheckpointCorrupt as e:
        raise _corrupt(path, str(e)) from e
    if d.get("format") not in (None, FORMAT):
        raise CheckpointError(f"{path}: format {d.get('format')!r}, expected {FORMAT!r}")
    return d


def read_tensors(path: str) -> dict[str, torch.Tensor]:
    _verified(path)
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:  # a partly written/copied file of a checkpoint without checksums
        raise _corrupt(path, f"{path}: cannot read the safetensors file ({type(e).__name__}: {e}): truncated, "
                             "partly written or not a safetensors file") from e


def check_layout(ckpt_dir: str, config: dict, tp: int, pp: int) -> None:
    par = config["parallel"]
    if par["tensor_model_parallel_size"] != tp or par["pipeline_model_parallel_size"] != pp:
        raise CheckpointError(
            f"{ckpt_dir} was saved with tensor-parallel size {par['tensor_model_parallel_size']} and pipeline-parallel"
            f" size {par['pipeline_model_parallel_size']}; this run has {tp} and {pp}. Resharding on load is not "
            "supported: use the same sizes, or merge it with megatron_tf.training.load_model_from_checkpoint")


# architecture fields that must match to load weights (the rest may change between runs); norm_epsilon and
# rotary_base change no shape but change the function the weights compute (an imported HF model continued without
# its --norm-epsilon / --rotary-base would silently be another model)
ARCH_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "group_query_attention",
               "num_query_groups", "kv_channels", "vocab_size", "make_vocab_size_divisible_by",
               "untie_embeddings_and_output_weights", "activation", "normalization", "norm_epsilon", "rotary_base",
               "decoder_first_pipeline_num_layers", "decoder_last_pipeline_num_layers")


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


def config_differences(saved: dict, current: dict) -> list[tuple[str, object, object]]:
    """(section.key, saved, current) for every config field that differs (fields the checkpoint predates skipped)."""
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


def load_model_shard(ckpt_dir: str, tp_rank: int, pp_rank: int) -> dict[str, torch.Tensor]:
    return read_tensors(os.path.join(ckpt_dir, shard_dirname(tp_rank, pp_rank), "model.safetensors"))


def load_optimizer_shard(ckpt_dir: str, tp_rank: int, pp_rank: int) -> tuple[dict[str, torch.Tensor], dict]:
    shard = os.path.join(ckpt_dir, shard_dirname(tp_rank, pp_rank))
    return read_tensors(os.path.join(shard, "optimizer.safetensors")), read_json(
        os.path.join(shard, "optimizer.json"))


def load_rng(ckpt_dir: str, rank: int) -> tuple[dict[str, torch.Tensor], dict] | None:
    base = os.path.join(ckpt_dir, "rng", f"rank_{rank:05d}")
    if not os.path.isfile(base + ".safetensors"):
        return None
    return read_tensors(base + ".safetensors"), read_json(base + ".json")


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
