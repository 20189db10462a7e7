"""The sweep's summary on planted run files: baseline target, best setting per model, % of pretraining, resume.
The training path on two tiny checkpoints: every run starts from the source weights (forget loss at T0 equals an
independent computation), full finetuning on attack text lowers the forget loss, tokens count learned targets, the
source checkpoints are untouched, and a lost run file is retrained alone to the same curve."""

import json
import lzma
import os

import pytest
import torch

from megatron_tf.checkpoint.derived import load_checkpoint
from megatron_tf.posttrain.attacks.finetune import FinetuneSettings
from megatron_tf.posttrain.attacks.sweep import AttackConfig, run_path, run_sweep
from tests.posttrain.tiny_checkpoint import texts, tiny_sp_checkpoint, write_texts


def fake_checkpoint(root, arm, tokens_seen):
    d = os.path.join(root, "iter_0000010")
    os.makedirs(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"configs": {"filter": {"token_filter": arm}}}, f)
    with open(os.path.join(d, "state.json"), "w") as f:
        json.dump({"tokens_seen": tokens_seen}, f)
    with open(os.path.join(root, "latest"), "w") as f:
        f.write("iter_0000010\n")  # no weights: loading this model would fail, so a skipped sweep must not load it
    return root


def plant(cfg, model, data, s: FinetuneSettings, losses):
    p = run_path(cfg.output_dir, model, data, s)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        json.dump({"curve": {"tokens": [0, 100, 200, 300][: len(losses)], "forget_loss": losses}}, f)


def test_summary_from_planted_runs_and_resume(tmp_path):
    none = fake_checkpoint(str(tmp_path / "none"), "none", 10_000)
    mask = fake_checkpoint(str(tmp_path / "mask"), "mask", 20_000)
    cfg = AttackConfig(models=[f"none={none}", f"mask={mask}"], attack_text=["x"], benign_text=["y"], eval_text=["z"],
                       methods=["full"], lrs=[1e-4, 1e-3], seeds=[1, 2], benign_seeds=1, train_iters=3,
                       eval_interval=1, output_dir=str(tmp_path / "out"), progress_bar=False)
    for s in cfg.settings([1, 2]):
        plant(cfg, "none", "attack", s, [3.0, 2.9, 2.8, 2.7])
        # mask: lr 1e-3 crosses 3.0 at 150 (seed 1) and 250 (seed 2); lr 1e-4 never
        if s.lr == 1e-3:
            plant(cfg, "mask", "attack", s, [4.0, 3.5, 2.5, 2.0] if s.seed == 1 else [4.0, 3.6, 3.2, 2.8])
        else:
            plant(cfg, "mask", "attack", s, [4.0, 3.9, 3.8, 3.7])
    for s in cfg.settings([1]):
        plant(cfg, "none", "benign", s, [3.0, 3.0, 3.0, 3.0])
        plant(cfg, "mask", "benign", s, [4.0, 4.0, 3.9, 3.9])
    res = run_sweep(cfg)  # every run exists: nothing is trained, no model is loaded
    assert res["baseline_loss"] == 3.0
    m = res["models"]["mask"]["data"]["attack"]
    assert m["best"] == "full_lr0.001_wd0"
    assert m["tokens_to_baseline"] == pytest.approx((150 + 250) / 2)
    assert res["models"]["mask"]["pretrain_tokens"] == 20_000
    assert m["percent_of_pretraining"] == pytest.approx(100 * 200 / 20_000)
    assert m["settings"]["full_lr0.0001_wd0"]["tokens"] is None
    b = res["models"]["mask"]["data"]["benign"]
    assert b["tokens_to_baseline"] is None and b["max_tokens"] == 300
    row = {r["model"]: r for r in res["table"]}
    assert row["none"]["tokens_to_baseline"] == 0.0 and row["mask"]["benign_tokens_to_baseline_text"] == "> 300"
    for f in ("results.json", "results.csv", "table.md", "settings.csv", "curves_mask.png", "curves_best.png"):
        assert os.path.getsize(os.path.join(cfg.output_dir, f)) > 0, f
    assert "| mask | mask | 20,000 | 4.000 | full_lr0.001_wd0 | 200 | 2/2 | 1.00 | 2.400 | > 300 | 3.900 |" in open(
        os.path.join(cfg.output_dir, "table.md")).read()


def test_bad_model_spec():
    with pytest.raises(ValueError, match="NAME=CHECKPOINT_DIR"):
        AttackConfig(models=["justapath"]).model_map()
    with pytest.raises(ValueError, match="unknown"):
        AttackConfig(methods=["qlora"])
    with pytest.raises(ValueError, match="blocklist"):
        AttackConfig(metric="token_loss")


# ---- the training path: real tiny checkpoints, real finetuning ------------------------------------------------------
MED = "blood heart gene cell protein virus doctor".split()


@torch.no_grad()
def _independent_forget_loss(path, eval_file, n_docs):
    """nats/token of the first n_docs documents: one unpadded forward of [eod] + tokens + [eod] per document."""
    src = load_checkpoint(path)
    tok, model = src.tokenizer, src.model.eval()
    total, count = 0.0, 0
    with lzma.open(eval_file, "rt") as f:
        docs = [json.loads(line)["text"] for line in f][:n_docs]
    for text in docs:
        ids = [tok.eod, *tok.tokenize(text), tok.eod]
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids]))[0].double(), -1)
        total -= float(sum(logp[j - 1, ids[j]] for j in range(1, len(ids))))
        count += len(ids) - 1
    return total / count


@pytest.mark.slow
def test_sweep_trains_from_the_source_each_run_and_resumes(tmp_path, monkeypatch):
    none = tiny_sp_checkpoint(tmp_path, "none", iters=6)
    weak = tiny_sp_checkpoint(tmp_path, "weak", iters=2)
    attack = write_texts(tmp_path / "attack.jsonl.xz", texts(21, 40, MED, 20))
    benign = write_texts(tmp_path / "benign.jsonl.xz", texts(22, 40, length=20))
    ev = write_texts(tmp_path / "eval.jsonl.xz", texts(23, 8, MED, 20))
    on_disk = {p: load_checkpoint(p).model.state_dict() for p in (none, weak)}
    cfg = AttackConfig(models=[f"none={none}", f"weak={weak}"], attack_text=[attack], benign_text=[benign],
                       eval_text=[ev], eval_docs=6, methods=["full", "lora"], lrs=[1e-2], seeds=[1, 2],
                       benign_seeds=1, train_iters=6, eval_interval=3, micro_batch_size=4, seq_length=32,
                       lora_rank=4, lora_alpha=8.0, output_dir=str(tmp_path / "out"), device="cpu", bf16=False,
                       progress_bar=False)
    res = run_sweep(cfg)
    for name, path in (("none", none), ("weak", weak)):
        want0 = _independent_forget_loss(path, ev, 6)
        runs = [json.load(open(run_path(cfg.output_dir, name, d, s))) for d in ("attack", "benign")
                for s in cfg.settings(cfg.seeds if d == "attack" else cfg.seeds[:1])]
        assert len(runs) == 6
        for r in runs:  # every run starts from the source weights (reloaded between runs)
            c = r["curve"]
            assert c["forget_loss"][0] == pytest.approx(want0, rel=1e-5), (name, r["settings"])
            assert c["steps"] == [0, 3, 6] and c["tokens"] == [0, 3 * 4 * 32, 6 * 4 * 32]  # windows of 33: 32 targets
        attack_full = [r for r in runs if r["data"] == "attack" and r["settings"]["method"] == "full"]
        assert all(r["curve"]["forget_loss"][-1] < r["curve"]["forget_loss"][0] - 0.1 for r in attack_full)
        assert res["models"][name]["forget_loss_before"] == pytest.approx(want0, rel=1e-5)
        sd = load_checkpoint(path).model.state_dict()  # the sweep never writes into the source checkpoint
        assert all(torch.equal(sd[k], on_disk[path][k]) for k in sd)
    assert res["baseline_loss"] == res["models"]["none"]["forget_loss_before"]
    assert res["models"]["weak"]["forget_loss_before"] > res["baseline_loss"]  # less pretraining, higher loss

    # resume: one run file lost -> only that run is trained again, to the same curve
    lost = run_path(cfg.output_dir, "weak", "attack", cfg.settings([2])[1])
    before = json.load(open(lost))
    os.remove(lost)
    import megatron_tf.posttrain.attacks.sweep as sweep_mod

    calls = []
    real = sweep_mod.finetune_run
    monkeypatch.setattr(sweep_mod, "finetune_run", lambda *a, **k: calls.append(k.get("desc")) or real(*a, **k))
    run_sweep(cfg)
    assert len(calls) == 1 and calls[0].startswith("weak attack lora"), calls
    after = json.load(open(lost))
    for k in ("forget_loss", "tokens", "train_loss"):
        assert after["curve"][k] == before["curve"][k], k
