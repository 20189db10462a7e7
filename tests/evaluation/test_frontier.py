"""The threshold frontier on synthetic evaluation JSON: runs at several filtered shares form separate groups (not
seeds), the planted forget / retain losses and their differences to the baseline come back exactly, achieved shares
win over nominal ones, and the report draws and tabulates the frontier."""

import csv
import json

import pytest

from megatron_tf.evaluation.frontier import frontier_rows, share_label
from megatron_tf.evaluation.report import write_report
from megatron_tf.evaluation.scaling import ScalingOptions, analyze, load_eval_files

SLOPES = {"mask": (1.0, 0.1), "remove": (2.0, 0.2), "document": (3.0, 1.5)}  # d forget, d retain per unit share
TOKENS = [100, 200, 300]


def _ev(name, arm, share, achieved=None):
    kf, kr = SLOPES.get(arm, (0.0, 0.0))
    loss = {}
    for dom, base, k in (("forget", 5.0, kf), ("retain", 4.0, kr), ("general", 4.5, 0.0)):
        rate = base + k * share
        loss[dom] = {"nats_per_token": rate, "per_document": {"tokens": TOKENS, "nats": [rate * t for t in TOKENS]}}
    run = {"name": name, "arm": arm, "size": "t1", "tokens_seen": 2.5e5, "tokens_learned": 2.4e5,
           "train_tokens_count": "learned"}
    if achieved is not None:
        run["tokens_filtered_fraction"] = achieved
    return {"format": "megatron_tf.eval/1", "run": run, "model": {"n_params": 1.1e6, "n_params_non_embedding": 8e4},
            "loss": loss}


def _write(tmp_path):
    d = tmp_path / "evals"
    d.mkdir()
    evs = [_ev("t1-none", "none", 0.0)]
    for arm in ("mask", "remove", "document"):
        for f in (0.05, 0.2):
            evs.append(_ev(f"t1-{arm}-f{f}", arm, f, achieved=0.048 if (arm, f) == ("remove", 0.05) else None))
    labels = _ev("t1-mask-labels", "mask", 0.015)  # the blocklist's one token operating point: no share recorded
    evs.append(labels)
    for e in evs:
        (d / f"{e['run']['name']}.json").write_text(json.dumps(e))
    return sorted(str(p) for p in d.iterdir())


def test_frontier_rows_and_report(tmp_path):
    an = analyze(load_eval_files(_write(tmp_path)), ScalingOptions(n_boot=100))
    assert any("no fit" in w for w in an["warnings"])  # one size: no scaling fit, the frontier needs none
    assert len(an["groups"]) == 8  # every share its own group, not seeds of one (t1-mask-labels: its own too)
    rows = an["frontier"]
    assert [(r["arm"], r["share"]) for r in rows] == [("none", 0.0), ("mask", None), ("mask", 0.05), ("mask", 0.2),
                                                      ("remove", 0.048), ("remove", 0.2), ("document", 0.05),
                                                      ("document", 0.2)]
    assert rows[1]["share_label"] == "share not recorded" and rows[1]["share_kind"] == "not recorded"
    assert rows[1]["forget_delta"] == pytest.approx(0.015)
    by = {(r["arm"], r["share"]): r for r in rows}
    r = by[("document", 0.2)]
    assert r["forget_loss"] == pytest.approx(5.0 + 3.0 * 0.2) and r["retain_loss"] == pytest.approx(4.0 + 1.5 * 0.2)
    assert r["forget_delta"] == pytest.approx(0.6) and r["retain_delta"] == pytest.approx(0.3)
    assert r["forget_delta_ci95"] == pytest.approx([0.6, 0.6])  # constant per-document rates: no sampling noise
    assert r["share_kind"] == "nominal" and r["share_label"] == "f=0.2 (nominal, run name)"
    r = by[("remove", 0.048)]  # achieved share recorded: it labels the point
    assert r["share_kind"] == "achieved" and r["share_label"] == "4.8%" and r["forget_delta"] == pytest.approx(0.1)
    assert r["tokens_seen"] == 2.5e5 and r["train_flops"] == pytest.approx(6 * 1.1e6 * 2.5e5)

    paths = write_report(an, str(tmp_path / "rep"))
    with open(paths["frontier"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    md = open(paths["report"], encoding="utf-8").read()
    sec = md[md.index("## Threshold frontier"):]
    assert "| t1 | document | f=0.2 (nominal, run name) | 5.6000 | +0.600 [+0.600, +0.600] | 4.3000 |" in sec
    assert "| t1 | remove | 4.8% |" in sec and "Matched across arms: tokens learned." in sec
    assert "](frontier.png)" in md
    rows_csv = list(csv.DictReader(open(paths["frontier_csv"])))
    assert len(rows_csv) == 8 and float(rows_csv[-1]["retain_loss"]) == pytest.approx(4.3)


def test_no_frontier_without_shares(tmp_path):
    kept = [p for p in _write(tmp_path) if p.endswith(("t1-none.json", "t1-mask-labels.json"))]
    an = analyze(load_eval_files(kept), ScalingOptions(n_boot=0))
    assert an["frontier"] == [] and frontier_rows(an) == []
    assert share_label({"filtered_share": None, "target_share": None}) == ""
