"""DeepSpeed ZeRO-1 on 2 gloo processes: the same loss curve as torch DDP; its checkpoint (our safetensors format,
optimizer states gathered from the ZeRO partitions) resumes exactly under DeepSpeed and under DDP. One spawn."""

import json
import os
import shutil
import sys

import pytest
import torch

from tests.dist_utils import init_gloo, run_distributed
from tests.training.synth import make_data, tiny_args

pytest.importorskip("deepspeed", reason="deepspeed is an optional extra")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*meta.json not found")]


def _worker(rank, world, port, prefix, tmp):
    init_gloo(rank, world, port)
    import deepspeed  # noqa: F401
    import torch.distributed as dist

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None  # gloo does the collectives; no JIT build
    from megatron_tf.training import pretrain

    ds_json = f"{tmp}/ds.json"
    ds = ["--deepspeed", "--deepspeed_config", ds_json]
    if rank == 0:
        with open(ds_json, "w") as f:
            json.dump({"zero_optimization": {"stage": 1}}, f)
    dist.barrier()
    ddp = pretrain(tiny_args(prefix, iters=4))
    zero = pretrain(tiny_args(prefix, iters=4, extra=[*ds, "--save", f"{tmp}/zero", "--save-interval", "2"]))
    if rank == 0:
        for d in ("resume_ds", "resume_ddp"):
            shutil.copytree(f"{tmp}/zero", f"{tmp}/{d}")
            with open(f"{tmp}/{d}/latest", "w") as f:
                f.write("iter_0000002\n")
    dist.barrier()
    resumed_ds = pretrain(tiny_args(prefix, iters=4, extra=[*ds, "--load", f"{tmp}/resume_ds"]))
    resumed_ddp = pretrain(tiny_args(prefix, iters=4, extra=["--load", f"{tmp}/resume_ddp"]))
    if rank == 0:
        with open(f"{tmp}/out.json", "w") as f:
            json.dump({"ddp": ddp.losses, "zero": zero.losses, "ddp_gn": ddp.grad_norms, "zero_gn": zero.grad_norms,
                       "resumed_ds": resumed_ds.losses, "resumed_ddp": resumed_ddp.losses}, f)


def test_zero1_matches_ddp_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_ext"))
    prefix = make_data(tmp_path)
    run_distributed(_worker, 2, prefix, str(tmp_path))
    with open(tmp_path / "out.json") as f:
        r = json.load(f)
    torch.testing.assert_close(r["zero"], r["ddp"], rtol=2e-6, atol=0)
    torch.testing.assert_close(r["zero_gn"], r["ddp_gn"], rtol=1e-5, atol=0)
    assert r["resumed_ds"] == r["zero"][2:]  # bitwise
    torch.testing.assert_close(r["resumed_ddp"], r["zero"][2:], rtol=2e-6, atol=0)
    files = sorted(os.listdir(tmp_path / "zero" / "iter_0000002" / "mp_rank_00_000"))
    assert files == ["model.safetensors", "optimizer.json", "optimizer.safetensors"]
