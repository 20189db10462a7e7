"""The README's main job, shrunk: two arms on a few thousand learned tokens, checked for what it reports."""

import json
import os

import pytest

from megatron_tf.demo.data_stage import DEMO_DIR
from megatron_tf.demo.report import comparison_rows, format_comparison, format_privileged
from megatron_tf.demo.run import run_demo
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
    # labels: the filter used blocklist half 1/2 ('forget'); the headline token-level metric uses half 2/2, which the
    # filter never saw (not privileged); the filter's own labels are reported apart and marked privileged
    with open(os.path.join(out, "evals", "tiny-mask.json")) as f:
        ev = json.load(f)
    assert ev["labels"]["filter_labels"]["name"] == "forget"
    assert ev["labels"]["filter_labels"]["spec"]["terms_split"] == "1/2"
    assert ev["labels"]["eval_labels"]["name"] == "heldout_terms"
    assert ev["loss"]["forget"]["token_level"]["privileged"] is False
    assert ev["filter_label_losses"]["forget"]["privileged"] is True
    assert rows["mask"]["forget_token_level_loss"] == ev["loss"]["forget"]["token_level"]["nats_per_token"]
    # the knowledge probe is evaluated (its training documents are in the blend) and the compute is named
    assert set(ev["knowledge"]) == {"medical", "biology"} and ev["knowledge"]["medical"]["chance"] == 0.25
    assert rows["mask"]["train_flops"] == pytest.approx(6 * ev["model"]["n_params"] * ev["run"]["tokens_seen"])
    # the document arm's matched share: what mask takes out of the loss, resolved to a threshold within 0.02
    m = res["matched"]
    assert 0 < m["token_share"] < 0.1 and abs(m["achieved_fraction"] - m["token_share"]) <= 0.02
    for name in ("losses_all.png", "losses_token_level.png", "training_curves.png", "report.md"):
        assert os.path.getsize(os.path.join(out, "report", name)) > 0
    # a rerun resumes: nothing is retrained or re-evaluated, same rows
    again = run_demo(out, "tiny", arms=("none", "mask"), train_tokens=8192, eval_limit=4)
    assert again["rows"] == res["rows"]


def test_comparison_table_marks_changes_against_none():
    def result(arm, f, r, g, ft, fl, acc):
        loss = {role: {"nats_per_token": v} for role, v in (("forget", f), ("retain", r), ("general", g))}
        loss["forget"]["token_level"] = {"nats_per_token": ft, "privileged": False}
        return {"run": {"tokens_seen": 10, "tokens_learned": 10, "train_tokens_count": "learned"},
                "model": {"n_params": 3}, "loss": loss, "mcq": {},
                "filter_label_losses": {"forget": {"nats_per_token": fl, "privileged": True}},
                "knowledge": {"medical": {"acc": acc, "chance": 0.25, "n": 8},
                              "biology": {"acc": 0.5, "chance": 0.25, "n": 8}}}

    rows = comparison_rows({"none": result("none", 3.0, 2.0, 4.0, 5.0, 6.0, 0.75),
                            "mask": result("mask", 3.5, 2.1, 4.0, 7.25, 9.0, 0.5)})
    mask = rows[1]
    assert mask["forget_loss_delta"] == pytest.approx(0.5)
    assert mask["forget_token_level_delta"] == pytest.approx(2.25)
    assert mask["forget_filter_labels_delta"] == pytest.approx(3.0)
    assert mask["train_flops"] == 6 * 3 * 10
    text = format_comparison(rows, "half B")
    assert "7.250 (+2.25)" in text and "3.500 (+0.50)" in text and "0.500 (0.25)" in text
    assert "labels the filter never used" in text and "PRIVILEGED" not in text
    assert "9.000 (+3.00)" not in text  # the filter's own labels never reach the headline table
    priv = format_privileged(rows, "half A")
    assert priv.startswith("PRIVILEGED") and "9.000 (+3.00)" in priv


def test_main_passes_each_flag_to_run_demo(monkeypatch):
    """python tools/demo.py's flags (DemoConfig) reach run_demo's parameters: defaults, then every flag set."""
    from megatron_tf.demo import run as demo_run

    calls = []
    monkeypatch.setattr(demo_run, "run_demo", lambda *a, **k: calls.append((a, k)))
    assert demo_run.main([]) == 0
    assert calls[-1] == (("runs/demo", "tiny", ("none", "mask", "remove", "document"), 1234, 1, None, 0.5, None,
                          None), {})
    assert demo_run.main(["--out", "o", "--size", "small", "--arms", "mask", "document", "--train-tokens", "9",
                          "--forget-threshold", "0.25", "--eval-limit", "3", "--seed", "7", "--workers", "2",
                          "--classifier", "c"]) == 0
    assert calls[-1] == (("o", "small", ("mask", "document"), 7, 2, 9, 0.25, 3, "c"), {})
    with pytest.raises(SystemExit):
        demo_run.main(["--arms", "bogus"])
