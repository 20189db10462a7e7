"""The checkpoint format: per-rank safetensors shards + JSON, written atomically, resumed exactly. Nothing is unpickled.

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

Reading: resolve_checkpoint_dir (`latest`, --ckpt-step N or a given iter_* directory), read_json / read_tensors
(each file verified against checksums.json first, integrity.py). What the trainer checks before resuming (same
TP/PP layout, architecture, data config) is training/resume.py; one whole model in one process is load.py.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from megatron_tf.utils.io import atomic_write, fsync_dir, honour_umask
from megatron_tf.utils.io import read_json as load_json
from megatron_tf.utils.logging import get_logger

from . import integrity
from .integrity import CheckpointCorrupt, CheckpointError

log = get_logger(__name__)

FORMAT = "megatron_tf-checkpoint-v1"
LATEST = "latest"


def iter_dirname(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def shard_dirname(tp_rank: int, pp_rank: int) -> str:
    return f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"


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
    integrity.write_piece(tmp, payload.rank, written)  # checksums of this rank's files (integrity.py)
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


