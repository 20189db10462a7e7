"""Checkpoints: kill -9 mid-save and mid-run, then --load, gives bitwise the losses of an uninterrupted run (CPU fp32,
dropout on); on-disk layout and formats; layout mismatches refused; a changed data/filter config refused on resume
unless --override-data-config; single-process loading of the merged model; tools/export_hf.py --load."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from megatron_tf.checkpoint import load_model
from megatron_tf.checkpoint.format import CheckpointError
from megatron_tf.checkpoint.integrity import file_entry
from megatron_tf.training import pretrain
from tests.log_utils import captured_log
from tests.training.synth import make_data, tiny_args

pytestmark = pytest.mark.filterwarnings("ignore:.*meta.json not found")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("ckpt"))


def _run(args, fault=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("MEGATRON_TF_FAULT", None)
    if fault:
        env["MEGATRON_TF_FAULT"] = fault
    return subprocess.run([sys.executable, os.path.join(REPO, "pretrain_gpt.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _losses(save):
    with open(os.path.join(save, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return {r["iteration"]: r["loss"] for r in recs if r["type"] == "train"}


@pytest.mark.slow
def test_resume_after_kill_9_equals_uninterrupted(data, tmp_path):
    common = tiny_args(data, iters=10, extra=["--save-interval", "3", "--hidden-dropout", "0.1",
                                              "--attention-dropout", "0.1", "--token-filter", "mask",
                                              "--forget-threshold", "0.5", "--eval-interval", "4"])
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    p = _run([*common, "--save", ref])
    assert p.returncode == 0, p.stderr[-3000:]
    resume = [*common, "--save", run, "--load", run]
    # killed while writing checkpoint 6 (model shard written, optimizer not yet): `latest` stays on 3
    p = _run(resume, fault="save:6")
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    assert open(os.path.join(run, "latest")).read() == "iter_0000003\n"
    assert os.path.isdir(os.path.join(run, ".iter_0000006.tmp")) and not os.path.exists(
        os.path.join(run, "iter_0000006"))
    # resumed from 3, killed again mid-run after step 8 (checkpoint 6 complete)
    p = _run(resume, fault="step:8")
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    assert open(os.path.join(run, "latest")).read() == "iter_0000006\n"
    p = _run(resume)
    assert p.returncode == 0, p.stderr[-3000:]
    expected = _losses(ref)
    assert sorted(expected) == list(range(1, 11))
    assert _losses(run) == expected  # bitwise: JSON round-trips floats exactly
    assert not [n for n in os.listdir(run) if n.endswith(".tmp")]
    assert open(os.path.join(run, "latest")).read() == "iter_0000010\n"
    with open(os.path.join(ref, "metrics.jsonl")) as f:
        ev_ref = [json.loads(x) for x in f if '"eval"' in x]
    with open(os.path.join(run, "metrics.jsonl")) as f:
        ev_run = [json.loads(x) for x in f if '"eval"' in x]
    assert [(e["iteration"], e["loss"]) for e in ev_run] == [(e["iteration"], e["loss"]) for e in ev_ref]


def test_layout_formats_and_loading(data, tmp_path):
    save = str(tmp_path / "s")
    holder = {}
    r = pretrain(tiny_args(data, iters=3, extra=["--save", save, "--save-interval", "2"]),
                 setup_hook=lambda t: holder.update(trainer=t))
    assert r.last_checkpoint == os.path.join(save, "iter_0000003")
    assert sorted(os.listdir(save)) == ["iter_0000002", "iter_0000003", "latest", "metrics.jsonl"]
    d = r.last_checkpoint
    assert sorted(os.listdir(d)) == ["checksums.json", "config.json", "mp_rank_00_000", "rng", "state.json"]
    assert sorted(os.listdir(os.path.join(d, "mp_rank_00_000"))) == [
        "model.safetensors", "optimizer.json", "optimizer.safetensors"]
    assert sorted(os.listdir(os.path.join(d, "rng"))) == ["rank_00000.json", "rank_00000.safetensors"]
    state = json.load(open(os.path.join(d, "state.json")))
    assert (state["iteration"], state["consumed_samples"], state["tokens_seen"], state["tokens_learned"]) == (
        3, 24, 3 * 8 * 16, r.tokens_learned)
    cfg = json.load(open(os.path.join(d, "config.json")))
    assert cfg["parallel"]["tensor_model_parallel_size"] == 1 and cfg["configs"]["model"]["vocab_size"] == 103
    trainer = holder["trainer"]
    with safe_open(os.path.join(d, "mp_rank_00_000", "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(trainer.module.state_dict())
        for k in f.keys():
            assert torch.equal(f.get_tensor(k), trainer.module.state_dict()[k])
    with safe_open(os.path.join(d, "mp_rank_00_000", "optimizer.safetensors"), "pt") as f:
        st = trainer.optimizer.state[trainer.module.output_layer.weight]
        assert torch.equal(f.get_tensor("output_layer.weight/exp_avg_sq"), st["exp_avg_sq"])
        assert float(f.get_tensor("output_layer.weight/step")) == 3.0
    recs = [json.loads(x) for x in open(os.path.join(save, "metrics.jsonl"))]
    train = [x for x in recs if x["type"] == "train"]
    assert [x["iteration"] for x in train] == [1, 2, 3]
    for key in ("loss", "lr", "grad_norm", "tokens_seen", "tokens_learned", "masked_fraction", "tokens_per_s", "mfu"):
        assert key in train[0]
    assert train[0]["mfu"] is None  # CPU: no peak FLOP/s

    # the merged single-process model gives the trainer's logits
    model, _, _, tok, run = load_model(save)
    ids = torch.randint(0, 103, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids), trainer.module.eval()(input_ids=ids), rtol=0, atol=0)
    assert run.seq_length == 16 and tok.vocab_size == 103

    # a different TP size is refused with both sizes named
    with pytest.raises(CheckpointError, match="tensor-parallel size 2.*this run has 1"):
        cfg["parallel"]["tensor_model_parallel_size"] = 2
        json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
        sums = json.load(open(os.path.join(d, "checksums.json")))  # as if saved so: the checksum must match
        sums["files"]["config.json"] = file_entry(os.path.join(d, "config.json"))
        json.dump(sums, open(os.path.join(d, "checksums.json"), "w"))
        pretrain(tiny_args(data, iters=4, extra=["--load", save]))


def test_export_hf_from_checkpoint(data, tmp_path):
    pytest.importorskip("transformers")
    from transformers import LlamaForCausalLM

    sys.path.insert(0, os.path.join(REPO, "tools"))
    import export_hf

    save = str(tmp_path / "s")
    pretrain(tiny_args(data, iters=1, extra=["--save", save, "--eval-iters", "0"]))
    assert export_hf.main(["--load", save, "--output", str(tmp_path / "hf"), "--keep-padded-vocab"]) == 0
    hf = LlamaForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    model = load_model(save).model
    ids = torch.randint(0, 103, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(input_ids=ids), rtol=1e-4, atol=1e-5)


def test_resume_with_changed_data_or_filter_is_refused_unless_overridden(data, tmp_path):
    save = str(tmp_path / "s")
    base = tiny_args(data, iters=1, extra=["--save", save, "--eval-iters", "0"])
    pretrain(base)
    other = make_data(tmp_path, name="other", seed=1)
    changes = {
        "--token-filter": (["--token-filter", "mask", "--forget-threshold", "0.5"],
                           r"filter\.token_filter: checkpoint 'none', now 'mask'"),
        "--seq-length": (["--seq-length", "8"], r"data\.seq_length: checkpoint 16, now 8"),
        "--data-path": (["--data-path", other], r"data\.data_path: checkpoint \[.*syn'\], now \[.*other'\]"),
    }
    for extra, msg in changes.values():
        with pytest.raises(CheckpointError, match=rf"differs from the checkpoint's: .*{msg}.*--override-data-config"):
            pretrain(tiny_args(data, iters=2, extra=["--save", save, "--load", save, "--eval-iters", "0", *extra]))
    # a changed threshold under the same filter is a filter change too
    masked = str(tmp_path / "m")
    pretrain(tiny_args(data, iters=1, extra=["--save", masked, "--eval-iters", "0", "--token-filter", "mask",
                                             "--forget-threshold", "0.5"]))
    with pytest.raises(CheckpointError, match=r"filter\.forget_threshold: checkpoint 0\.5, now 0\.25"):
        pretrain(tiny_args(data, iters=2, extra=["--save", masked, "--load", masked, "--eval-iters", "0",
                                                 "--token-filter", "mask", "--forget-threshold", "0.25"]))
    # overridden: resumes, and each difference is logged against the saved config
    with captured_log() as logged:
        r = pretrain(tiny_args(data, iters=2, extra=["--save", save, "--load", save, "--eval-iters", "0",
                                                     "--token-filter", "mask", "--forget-threshold", "0.5",
                                                     "--override-data-config"]))
    assert r.iterations == [2]
    assert any("filter.token_filter differs: checkpoint 'none', now 'mask'" in m for m in logged), logged
    assert any("filter.forget_threshold differs: checkpoint None, now 0.5" in m for m in logged), logged
    assert any("training.train_iters differs: checkpoint 1, now 2" in m for m in logged), logged
    # --finetune starts a new run on the weights: other data is its purpose, so it is logged, not refused
    r = pretrain(tiny_args(data, iters=1, extra=["--load", masked, "--finetune", "--eval-iters", "0",
                                                 "--data-path", other]))
    assert r.iterations == [1]


@pytest.mark.parametrize("field,value", [("rotary_base", 500000.0), ("norm_epsilon", 1e-6), ("num_layers", 3)])
def test_architecture_check_names_the_field(field, value):
    from megatron_tf.checkpoint.format import CheckpointError
    from megatron_tf.training.resume import check_architecture

    saved = {"num_layers": 2, "hidden_size": 32, "rotary_base": 10000.0, "norm_epsilon": 1e-5}
    check_architecture("ckpt/iter_0000001", saved, dict(saved))
    with pytest.raises(CheckpointError, match=rf"ckpt/iter_0000001: model architecture differs: {field}: "
                                              rf"checkpoint {saved[field]!r}, now {value!r}"):
        check_architecture("ckpt/iter_0000001", saved, {**saved, field: value})
