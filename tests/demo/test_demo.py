"""The README's main job, shrunk: two arms on a few thousand learned tokens, checked for what it reports."""

import json
import os

import pytest

from megatron_tf.demo.data_stage import DEMO_DIR
from megatron_tf.demo.run import comparison_rows, format_comparison, run_demo
from megatron_tf.utils.io import sha256_file


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path):
    out = str(tmp_path / "demo")
    res = run_demo(out, "tiny", arms=("none", "mask"), train_tokens=8192, eval_limit=4)
    # the retrained tokenizer reproduces the shipped one byte for byte
    assert sha256_file(os.path.join(out, "tokenizer", "demo_sp.model")) == \
        sha256_file(os.path.join(DEMO_DIR, "tokenizer", "demo_sp.model"))
    rows = {r["arm"]: r for r in res["rows"]}
    # equal LEARNED-token budgets: mask masks forget targets, so it must see more raw tokens for the same budget
    assert rows["none"]["tokens_learned"] >= 8192 and rows["mask"]["tokens_learned"] >= 8192
    assert rows["mask"]["tokens_seen"] > rows["mask"]["tokens_learned"]
    assert rows["none"]["tokens_seen"] == rows["none"]["tokens_learned"]
    # the table reports exactly the numbers in the per-arm evaluation files
    for arm in ("none", "mask"):
        with open(os.path.join(out, "evals", f"tiny-{arm}.json")) as f:
            ev = json.load(f)
        for role in ("forget", "retain", "general"):
            assert rows[arm][f"{role}_loss"] == ev["loss"][role]["nats_per_token"]
    assert rows["mask"]["forget_loss_delta"] == pytest.approx(rows["mask"]["forget_loss"] - rows["none"]["forget_loss"])
    for name in ("losses_all.png", "losses_token_level.png", "training_curves.png", "report.md"):
        assert os.path.getsize(os.path.join(out, "report", name)) > 0
    # a rerun resumes: nothing is retrained or re-evaluated, same rows
    again = run_demo(out, "tiny", arms=("none", "mask"), train_tokens=8192, eval_limit=4)
    assert again["rows"] == res["rows"]


def test_comparison_table_marks_changes_against_none():
    def result(arm, f, r, g, ft):
        loss = {role: {"nats_per_token": v, "token_level": {"nats_per_token": t}}
                for role, v, t in (("forget", f, ft), ("retain", r, r), ("general", g, g))}
        return {"run": {"tokens_seen": 10, "tokens_learned": 10}, "loss": loss, "mcq": {}}

    rows = comparison_rows({"none": result("none", 3.0, 2.0, 4.0, 5.0), "mask": result("mask", 3.5, 2.1, 4.0, 7.25)})
    mask = rows[1]
    assert mask["forget_loss_delta"] == pytest.approx(0.5)
    assert mask["forget_token_level_delta"] == pytest.approx(2.25)
    text = format_comparison(rows)
    assert "7.250 (+2.25)" in text and "3.500 (+0.50)" in text
