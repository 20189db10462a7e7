"""The RMU job (unlearning/runner.py run_job), tiny: only the selected tensors of the saved checkpoint differ from the
source; its steps, c and provenance are recorded; the forget-text loss rises more than the retain-text loss; the
"after" evaluation is that of the saved checkpoint and the summary's change is after - before; a finished job is
skipped; a forget corpus that overlaps the forget evaluation text is refused."""

import json
import os

import pytest
import torch

from megatron_tf.checkpoint.derived import load_checkpoint
from megatron_tf.evaluation.runner import EvaluationConfig, evaluate_model
from megatron_tf.posttrain.unlearning.rmu import RMUConfig
from megatron_tf.posttrain.unlearning.runner import RMUJobConfig, run_job
from tests.posttrain.tiny_checkpoint import texts, tiny_sp_checkpoint, write_texts

MED = "blood heart gene cell protein virus doctor".split()
GENERAL = "river mountain city music garden school market".split()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rmu_job")
    ckpt = tiny_sp_checkpoint(tmp, iters=6)
    files = {"forget_corpus": write_texts(tmp / "fc.jsonl.xz", texts(11, 24, MED, 20)),
             "retain_corpus": write_texts(tmp / "rc.jsonl.xz", texts(12, 24, GENERAL, 20)),
             "forget_text": write_texts(tmp / "ft.jsonl.xz", texts(13, 6, MED, 20)),
             "retain_text": write_texts(tmp / "rt.jsonl.xz", texts(14, 6, GENERAL, 20))}
    return tmp, ckpt, files


def _configs(tmp, ckpt, files, **job):
    j = RMUJobConfig(load=ckpt, save=str(tmp / "rmu_ckpt"), output_dir=str(tmp / "rmu_out"),
                     forget_corpus=[files["forget_corpus"]], retain_corpus=[files["retain_corpus"]], device="cpu",
                     progress_bar=False, **job)
    r = RMUConfig(layer_id=1, train_iters=25, micro_batch_size=4, max_length=32, lr=1e-2, alpha=10.0,
                  steering_coeff_scale=4.0, calibration_batches=2)
    ev = EvaluationConfig(forget_text=[files["forget_text"]], retain_text=[files["retain_text"]], bf16=False)
    return j, r, ev


def test_rmu_job_end_to_end(setup, monkeypatch):
    tmp, ckpt, files = setup
    job, rmu, ev = _configs(tmp, ckpt, files)
    res = run_job(job, rmu, ev)
    src, out = load_checkpoint(ckpt), load_checkpoint(res["checkpoint"])
    updated = {f"decoder.layers.{i}.mlp.linear_fc2.weight" for i in (0, 1)}
    assert set(res["updated"]) == updated and res["layer_ids"] == [0, 1]
    a, b = src.model.state_dict(), out.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]) == (k not in updated), k  # only the selected tensors moved
    assert len(res["history"]) == 25 and res["steering_coeff"] == pytest.approx(4.0 * res["activation_norm"])
    assert out.config["derived_from"]["method"] == "rmu" and out.pretrain_tokens == src.pretrain_tokens
    loss = {w: {n: res[w]["loss"][n]["nats_per_token"] for n in res[w]["loss"]} for w in ("before", "after")}
    names = sorted(loss["before"])
    forget = next(n for n in names if "forget" in n)
    retain = next(n for n in names if "retain" in n)
    d_forget = loss["after"][forget] - loss["before"][forget]
    d_retain = loss["after"][retain] - loss["before"][retain]
    assert d_forget > 0.05 and d_forget > 3 * abs(d_retain), loss  # measured +0.140 vs +0.022 nats/token
    # the "after" evaluation is the saved checkpoint's; the summary is after - before
    again = evaluate_model(out.model, out.tokenizer, ev, seq_length=out.seq_length)
    for n in names:
        assert again["loss"][n]["nats_per_token"] == pytest.approx(loss["after"][n], rel=1e-6)
    row = {r["metric"]: r for r in res["summary"]}[f"loss/{forget}"]
    assert row["change"] == pytest.approx(d_forget, rel=1e-12)
    for f in ("rmu.json", "rmu_steps.csv", "rmu_summary.csv", "rmu_losses.png"):
        assert os.path.getsize(os.path.join(job.output_dir, f)) > 0, f
    assert json.load(open(os.path.join(job.output_dir, "rmu.json")))["history"] == res["history"]

    import megatron_tf.posttrain.unlearning.runner as runner_mod

    monkeypatch.setattr(runner_mod, "run_rmu", lambda *a, **k: pytest.fail("reran a finished job"))
    assert run_job(job, rmu, ev)["history"] == res["history"]


def test_forget_corpus_overlapping_the_forget_text_is_refused(setup):
    tmp, ckpt, files = setup
    job, rmu, ev = _configs(tmp, ckpt, files)
    job.output_dir = str(tmp / "leak_out")
    ev.forget_text = [files["forget_corpus"]]
    with pytest.raises(ValueError, match="are also in the RMU forget corpus"):
        run_job(job, rmu, ev)
    assert not os.path.exists(os.path.join(job.output_dir, "rmu.json"))
