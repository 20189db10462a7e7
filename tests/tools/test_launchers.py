"""The launch paths: `torchrun --nproc_per_node 2 pretrain_gpt.py` (DDP) and `deepspeed --num_gpus 2 pretrain_gpt.py
--deepspeed` (ZeRO-1) on CPU, tiny, with --token-filter mask (the two ranks learn different token counts). Each must
reproduce the in-process single-process run: the per-iteration loss, gradient norm and learned-token count in
metrics.jsonl (rtol 2e-6 / 1e-5), and the saved weights (merged from the checkpoint, rtol 1e-4).

No hangs: each launch runs in its own session with a deadline, the whole process group killed past it. No port race:
torchrun --standalone binds its own free port; the deepspeed launcher needs --master_port, so a launch that finds the
port taken is retried on another. DeepSpeed on CPU: DS_ACCELERATOR=cpu, torch's AdamW, and the script runs through a
wrapper that skips the JIT build of the shared-memory op (1.5-3 min; gloo does the collectives, as in
tests/training/test_deepspeed.py) and then runs pretrain_gpt.py as __main__.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch

from megatron_tf.checkpoint import load_model
from megatron_tf.training import pretrain
from tests.training.synth import make_data, tiny_args

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*meta.json not found")]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEADLINE_S = 300
FILTER = ["--token-filter", "mask", "--forget-threshold", "0.5", "--eval-iters", "0"]

_DS_WRAPPER = """
import runpy, sys
import deepspeed  # noqa: F401
sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
sys.argv = [{script!r}, *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


def _env(tmp):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(tmp / "ext"),
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _launch(cmd, env, cwd):
    """Run a launcher in its own session; kill the whole group past the deadline. Returns (rc, output)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{cmd[:4]} still running after {DEADLINE_S} s; killed. Output:\n{out[-4000:]}")
    return proc.returncode, out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(save):
    with open(os.path.join(save, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["type"] == "train"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("launch")
    prefix = make_data(tmp)
    r = pretrain(tiny_args(prefix, iters=3, extra=[*FILTER, "--save", str(tmp / "ref")]))
    return tmp, prefix, r, load_model(str(tmp / "ref")).model.state_dict()


def _check(save, ref, ref_sd, out):
    recs = _metrics(save)
    assert [r["iteration"] for r in recs] == [1, 2, 3], out[-3000:]
    torch.testing.assert_close([r["loss"] for r in recs], ref.losses, rtol=2e-6, atol=0)
    torch.testing.assert_close([r["grad_norm"] for r in recs], ref.grad_norms, rtol=1e-5, atol=0)
    learned = [b - a for a, b in zip([0] + [r["tokens_learned"] for r in recs], [r["tokens_learned"] for r in recs])]
    assert learned == ref.learned_per_step and 0 < min(learned) < 8 * 16  # the mask hides some tokens every step
    cfg = json.load(open(os.path.join(save, "iter_0000003", "config.json")))
    assert cfg["parallel"]["world_size"] == 2
    sd = load_model(save).model.state_dict()
    for k in ref_sd:
        torch.testing.assert_close(sd[k], ref_sd[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.timeout(DEADLINE_S + 120)
def test_torchrun_two_processes_equals_single_process(reference):
    tmp, prefix, ref, ref_sd = reference
    save = str(tmp / "torchrun")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(REPO, "pretrain_gpt.py"), *tiny_args(prefix, iters=3, extra=[*FILTER, "--save", save])]
    rc, out = _launch(cmd, _env(tmp), str(tmp))
    assert rc == 0, out[-4000:]
    assert "world size 2" in out
    _check(save, ref, ref_sd, out)


@pytest.mark.timeout(3 * DEADLINE_S)
def test_deepspeed_launcher_two_processes_equals_single_process(reference):
    pytest.importorskip("deepspeed", reason="deepspeed is an optional extra")
    if shutil.which("deepspeed") is None:
        pytest.skip("the deepspeed launcher is not on PATH")
    tmp, prefix, ref, ref_sd = reference
    save = str(tmp / "deepspeed")
    ds_json = tmp / "ds.json"
    ds_json.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    wrapper = tmp / "ds_pretrain_gpt.py"
    wrapper.write_text(_DS_WRAPPER.format(script=os.path.join(REPO, "pretrain_gpt.py")))
    args = tiny_args(prefix, iters=3, extra=[*FILTER, "--save", save, "--deepspeed", "--deepspeed_config",
                                             str(ds_json)])
    for _ in range(3):  # another process may take the port between picking and binding it: retry on another
        cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(_free_port()), str(wrapper), *args]
        rc, out = _launch(cmd, _env(tmp), str(tmp))
        if rc == 0 or "address already in use" not in out.lower():
            break
        shutil.rmtree(save, ignore_errors=True)
    assert rc == 0, out[-4000:]
    _check(save, ref, ref_sd, out)
    cfg = json.load(open(os.path.join(save, "iter_0000003", "config.json")))
    assert cfg["configs"]["deepspeed"]["deepspeed"] is True  # the engine ran (the launcher's --local_rank accepted)
