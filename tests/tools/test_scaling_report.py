"""tools/scaling_report.py on evaluation JSONs (glob) and on a manifest: the report files hold the planted numbers."""

import json
import math
import os

import pytest

from tools import scaling_report


def _eval_json(name, arm, n, d, forget, retain):
    return {"format": "megatron_tf.eval/1",
            "run": {"name": name, "arm": arm, "tokens_seen": d, "tokens_learned": d},
            "model": {"n_params": n, "n_params_non_embedding": n / 2},
            "loss": {"forget": {"nats_per_token": forget}, "retain": {"nats_per_token": retain}}, "mcq": {}}


def law(c, a, b):
    return math.exp(a + b * math.log(c))


def test_scaling_report_tool(tmp_path, capsys):
    """Default --compute paper (C = 120 N^2, N total): the planted 50x holds at every size, the seen-token slowdown
    is printed beside it; --compute kaplan uses N non-embedding and tokens seen."""
    ev = tmp_path / "evals"
    ev.mkdir()
    sizes = [(1e6, 1e7), (3e6, 5e7), (1e7, 2e8)]  # (N total, tokens)
    for i, (n, d) in enumerate(sizes):
        c = 120 * n * n
        for arm, kf in (("none", 1.0), ("remove", 50.0)):
            (ev / f"s{i}-{arm}.json").write_text(json.dumps(
                _eval_json(f"s{i}-{arm}", arm, n, d, law(c / kf, 2.0, -0.06), law(c, 1.5, -0.04))))
    out = tmp_path / "report"
    assert scaling_report.main(["--evals", str(ev / "*.json"), "--output-dir", str(out), "--bootstrap", "0"]) == 0
    printed = capsys.readouterr().out
    assert "compute convention: paper: C = 6 * N * (20 * N), N total" in printed
    assert "remove" in printed and "slowdown paper 50.00x, seen" in printed
    data = json.load(open(out / "scaling.json"))
    assert data["compute_convention"]["name"] == "paper" and data["compute_convention"]["formula"] == \
        "C = 6 * N * (20 * N)"
    sl = {(s["domain"], s["arm"], s["name"]): s for s in data["slowdowns"]}
    assert sl[("forget", "remove", "s2-remove")]["slowdown"] == pytest.approx(50.0, rel=1e-8)
    assert sl[("retain", "remove", "s1-remove")]["slowdown"] == pytest.approx(1.0, rel=1e-8)
    assert data["runs"][0]["size"] == "1M"  # from the total parameters
    md = open(out / "report.md").read()
    assert "| forget | 3M | remove |" in md and "| 50.00 |" in md
    assert os.path.isfile(out / "loss_vs_compute_loss.png") and os.path.isfile(out / "slowdowns.csv")

    # a manifest over the same files with --compute kaplan (N non-embedding = N / 2, tokens seen)
    man = {"runs": [{"eval": f"evals/{f}"} for f in sorted(os.listdir(ev))]}
    (tmp_path / "m.json").write_text(json.dumps(man))
    out2 = tmp_path / "report2"
    assert scaling_report.main(["--manifest", str(tmp_path / "m.json"), "--output-dir", str(out2), "--compute",
                                "kaplan", "--metrics", "loss", "--bootstrap", "0"]) == 0
    data2 = json.load(open(out2 / "scaling.json"))
    assert data2["compute_convention"]["name"] == "kaplan"
    assert data2["runs"][0]["compute"]["kaplan"] == pytest.approx(6 * 0.5e6 * 1e7)
    with pytest.raises(SystemExit):
        scaling_report.main(["--evals", str(tmp_path / "none*.json"), "--output-dir", str(out2)])
    with pytest.raises(SystemExit):
        scaling_report.main(["--evals", str(ev / "*.json"), "--output-dir", str(out2), "--compute", "total"])
