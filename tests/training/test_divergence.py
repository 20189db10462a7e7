"""Divergence guard (issue 14, item 3): a non-finite loss or gradient norm is never applied; it stops the run with a
clear error and exit status 1 (no non-finite checkpoint, `latest` stays on the last finite one) unless
--skip-nonfinite-steps allows skipping it. All ranks agree under TP, PP, DP (DDP) and DeepSpeed ZeRO-1 when only one
rank sees the NaN. References: the issue's reproduction (--lr 1e4 --clip-grad 0); a run of one step fewer (a skipped
step must leave weights and Adam state bitwise as they were); the single-process run for the parallel layouts."""

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from megatron_tf.training import pretrain
from megatron_tf.training.divergence import TrainingDiverged
from tests.dist_utils import init_gloo, run_distributed
from tests.training.synth import make_data, tiny_args

pytestmark = pytest.mark.filterwarnings("ignore:.*meta.json not found")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("diverge"))


def poison(steps, ranks=None):
    """setup_hook: during the training steps `steps` (1-based) the model's output becomes NaN on `ranks` (all when
    None); evaluation is untouched."""
    def setup(trainer):
        if ranks is not None and trainer.groups.rank not in ranks:
            return

        def fwd(module, inputs, out):
            if module.training and trainer.iteration + 1 in steps:
                return (out[0] * math.nan, *out[1:]) if isinstance(out, tuple) else out * math.nan
            return None

        trainer.module.register_forward_hook(fwd)
    return setup


def _args(prefix, iters, extra=()):
    return tiny_args(prefix, iters=iters, extra=["--eval-iters", "0", *extra])


def test_issue_reproduction_lr_1e4_exits_nonzero_and_keeps_latest_finite(data, tmp_path):
    save = str(tmp_path / "run")
    args = _args(data, 10, ["--lr", "1e4", "--min-lr", "1e4", "--clip-grad", "0", "--save", save,
                            "--save-interval", "1"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([sys.executable, os.path.join(REPO, "pretrain_gpt.py"), *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr[-3000:]
    m = re.search(r"training stopped: iteration (\d+): loss \S+, gradient norm \S+ is not finite: training diverged",
                  p.stderr)
    assert m, p.stderr[-3000:]
    bad = int(m.group(1))
    assert 2 <= bad <= 10  # before this fix: NaN losses, exit 0, `latest` on an all-NaN checkpoint
    assert open(os.path.join(save, "latest")).read() == f"iter_{bad - 1:07d}\n"
    assert sorted(n for n in os.listdir(save) if n.startswith("iter_")) == [f"iter_{i:07d}" for i in range(1, bad)]
    for i in range(1, bad):
        d = os.path.join(save, f"iter_{i:07d}", "mp_rank_00_000")
        for f in ("model.safetensors", "optimizer.safetensors"):
            assert all(torch.isfinite(t).all() for t in load_file(os.path.join(d, f)).values()), (i, f)


def test_skipped_step_is_not_applied(data, tmp_path):
    ref = pretrain(_args(data, 1, ["--save", str(tmp_path / "ref")]))
    run = pretrain(_args(data, 2, ["--save", str(tmp_path / "run"), "--skip-nonfinite-steps", "1"]),
                   setup_hook=poison({2}))
    assert run.skipped_nonfinite == [2] and math.isnan(run.losses[1]) and run.losses[0] == ref.losses[0]
    assert run.tokens_learned == ref.tokens_learned  # the skipped step learned nothing
    assert run.learned_per_step[1] == 0
    a = tmp_path / "ref" / "iter_0000001" / "mp_rank_00_000"
    b = tmp_path / "run" / "iter_0000002" / "mp_rank_00_000"
    for f in ("model.safetensors", "optimizer.safetensors"):  # weights and Adam state (incl. step) bitwise
        sa, sb = load_file(a / f), load_file(b / f)
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), (f, k)
    state = json.load(open(tmp_path / "run" / "iter_0000002" / "state.json"))
    assert state["consumed_samples"] == 16 and state["iteration"] == 2  # its data was consumed


def test_more_nonfinite_steps_than_allowed_stop_the_run(data, tmp_path):
    save = str(tmp_path / "s")
    with pytest.raises(TrainingDiverged, match=r"iteration 3: loss nan, gradient norm nan is not finite: training "
                                               r"diverged \(non-finite steps so far: \[2, 3\], --skip-nonfinite-steps"
                                               r" 1\).*the last checkpoint \(.*iter_0000002\) predates it"):
        pretrain(_args(data, 4, ["--save", save, "--save-interval", "1", "--skip-nonfinite-steps", "1"]),
                 setup_hook=poison({2, 3}))
    assert open(os.path.join(save, "latest")).read() == "iter_0000002\n"  # iteration 2 was skipped, not applied
    with pytest.raises(TrainingDiverged, match=r"iteration 2: .*--skip-nonfinite-steps 0"):
        pretrain(_args(data, 3), setup_hook=poison({2}))


# ---- all ranks agree when one rank alone sees the NaN ----------------------------------------------------------
RUNS = {"dp2": [], "tp2": ["--tensor-model-parallel-size", "2"], "pp2": ["--pipeline-model-parallel-size", "2"]}


def _worker(rank, world, rdzv, prefix, tmp, runs, ds_json):
    init_gloo(rank, world, rdzv)
    if ds_json:
        import deepspeed  # noqa: F401

        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None  # gloo does the collectives; no JIT build
    out = {}
    for name, extra in runs.items():
        extra = [*extra, "--deepspeed", "--deepspeed_config", ds_json] if ds_json else list(extra)
        r = pretrain(_args(prefix, 3, [*extra, "--skip-nonfinite-steps", "1"]), setup_hook=poison({2}, {1}))
        try:
            pretrain(_args(prefix, 3, extra), setup_hook=poison({2}, {1}))
            stopped = None
        except TrainingDiverged as e:
            stopped = int(re.search(r"iteration (\d+)", str(e)).group(1))
        out[name] = {"skipped": r.skipped_nonfinite, "losses": [x if math.isfinite(x) else None for x in r.losses],
                     "stopped": stopped}
    with open(f"{tmp}/rank{rank}.json", "w") as f:
        json.dump(out, f)


def _check(tmp, prefix, runs):
    ref = pretrain(_args(prefix, 3, ["--skip-nonfinite-steps", "1"]), setup_hook=poison({2}))
    got = [json.load(open(f"{tmp}/rank{r}.json")) for r in (0, 1)]
    for name in runs:
        for r in (0, 1):
            g = got[r][name]
            assert g["skipped"] == [2] and g["stopped"] == 2 and g["losses"][1] is None, (name, r, g)
            torch.testing.assert_close([g["losses"][0], g["losses"][2]], [ref.losses[0], ref.losses[2]], rtol=2e-6,
                                       atol=0, msg=f"{name} rank {r}")


@pytest.mark.slow
def test_all_ranks_agree_under_tp_pp_dp(data, tmp_path):
    run_distributed(_worker, 2, data, str(tmp_path), RUNS, None)
    _check(tmp_path, data, RUNS)


@pytest.mark.slow
def test_all_ranks_agree_under_deepspeed(data, tmp_path, monkeypatch):
    pytest.importorskip("deepspeed", reason="deepspeed is an optional extra")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_ext"))
    ds_json = str(tmp_path / "ds.json")
    with open(ds_json, "w") as f:
        json.dump({"zero_optimization": {"stage": 1}}, f)
    runs = {"zero1_dp2": []}
    run_distributed(_worker, 2, data, str(tmp_path), runs, ds_json)
    _check(tmp_path, data, runs)
