"""The sweep's summary on planted run files: baseline target, best setting per model, % of pretraining, resume."""

import json
import os

import pytest

from megatron_tf.attacks.finetune import FinetuneSettings
from megatron_tf.attacks.sweep import AttackConfig, run_path, run_sweep


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
