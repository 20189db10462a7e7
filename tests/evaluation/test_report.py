"""The scaling report: every file exists, the PNGs are PNGs embedded by relative path, the JSON, CSV and Markdown
hold the planted numbers, the headline order (all-token loss first), privileged token-level losses only in the
labelled secondary section, compute conventions and the matched token count named, extrapolations marked."""

import csv
import json
import os

import pytest

from megatron_tf.evaluation.report import write_report
from megatron_tf.evaluation.scaling import ScalingOptions, analyze

from .test_scaling import _runs

PNG = b"\x89PNG\r\n\x1a\n"


def _planted(privileged):
    runs = _runs({"mask": 30.0, "remove": 7000.0}, {"mask": 1.0, "remove": 1.25})
    for r in runs:  # token-level losses too, and one MC set
        r.losses["token_loss"] = {d: v * 1.1 for d, v in r.losses["loss"].items()}
        r.privileged = {d: (False if r.arm == "none" else privileged) for d in r.losses["loss"]}
        r.mcq = {"medqa": {"acc": 0.25, "acc_norm": 0.3125, "acc_norm_stderr": 0.05, "chance": 0.2}}
    return runs


def test_report_files_hold_planted_numbers(tmp_path):
    out = str(tmp_path / "rep")
    paths = write_report(analyze(_planted(True), ScalingOptions(n_boot=0)), out)
    for key in ("report", "json", "slowdowns_csv", "fits_csv", "runs_csv"):
        assert os.path.getsize(paths[key]) > 0, key
    pngs = {k: p for k, p in paths.items() if p.endswith(".png")}
    assert set(pngs) == {f"{k}_{m}" for k in ("loss_vs_compute", "pareto", "slowdown_vs_size")
                         for m in ("loss", "token_loss")}
    for p in pngs.values():
        with open(p, "rb") as f:
            assert f.read(8) == PNG
    assert not [f for f in os.listdir(out) if ".tmp-" in f]

    md = open(paths["report"], encoding="utf-8").read()
    for k in ("loss_vs_compute_loss", "pareto_loss", "slowdown_vs_size_loss", "loss_vs_compute_token_loss"):
        assert f"]({os.path.basename(pngs[k])})" in md  # relative path
    assert "**Compute convention: `paper`**, C = 6 * N * (20 * N)" in md and "under `seen` (C = 6 * N * D_seen" in md
    assert "slowdown (paper: C = 6 * N * (20 * N), N total) [95% CI] | slowdown (seen: C = 6 * N * D_seen, N total)" \
        in md
    # s1 remove: 7000x under paper, extrapolated (loss above the measured baseline range), starred
    assert "| forget | s1 | remove | " in md and "| 7,000* |" in md
    assert "**extrapolated** (loss above the baseline range)" in md
    assert "| retain | s2 | remove | " in md and "| 1.25 |" in md
    assert ("| paper: C = 6 * N * (20 * N), N total | loss | forget | 2.3000 | -0.0710 [-0.0710, -0.0710] | 1.0000 "
            "| 3 |") in md
    assert "0.312 ± 0.050" in md and "medqa (0.20)" in md
    # headline order: all-token loss first, then independent token-level (none here), then the secondary section
    i_head = md.index("## Headline: all-token loss")
    i_indep = md.index("## Token-level loss with labels independent")
    i_sec = md.index("## Secondary: token-level loss with the filter's own labels")
    assert i_head < i_indep < i_sec
    assert "None: no filtered run has token-level losses" in md[i_indep:i_sec]
    assert "privileged: computed with the labels the filter used; shows the tokens were not trained on" in md[i_sec:]
    assert "token_loss" not in md[i_head:i_indep]
    # compute disclosure: tokens seen / learned / FLOPs columns and the matched count
    assert "| tokens seen | tokens learned | train FLOPs |" in md[i_head:i_indep]
    assert "Matched across arms: tokens learned (not recorded in some evaluations: assumed `learned`" in md
    # s0 mask: tokens seen 2.2e7, learned 1.8e7, FLOPs 6 * 3e6 * 2.2e7 = 3.96e14
    assert "| s0-mask | mask | s0 | 3,000,000 | 1,000,000 | 22,000,000 | 18,000,000 | 3.960e+14 | learned (assumed) |" \
        in md

    data = json.load(open(paths["json"]))
    assert data["compute_convention"]["name"] == "paper" and data["token_level"]["forget"] == "privileged"
    sl = {(s["metric"], s["domain"], s["arm"], s["size"]): s for s in data["slowdowns"]}
    assert sl[("loss", "forget", "remove", "s0")]["slowdown"] == pytest.approx(7000.0, rel=1e-8)
    assert sl[("token_loss", "retain", "remove", "s2")]["slowdown"] == pytest.approx(1.25, rel=1e-8)
    assert data["fits"]["paper"]["loss"]["forget"]["none"]["b"] == pytest.approx(-0.071, abs=1e-11)
    rows = list(csv.DictReader(open(paths["slowdowns_csv"])))
    # s2 mask: C(s2) / 30 lies inside the baseline range (C(s2) / C(s0) = 64); s1 mask (7.1x apart) does not
    row = next(r for r in rows if (r["metric"], r["domain"], r["arm"], r["size"]) == ("loss", "forget", "mask", "s2"))
    assert float(row["slowdown_paper"]) == pytest.approx(30.0, rel=1e-8) and row["extrapolated"] == "False"
    assert float(row["compute_seen"]) == pytest.approx(6 * 2.4e7 * 3.2e8 * 1.1)
    row = next(r for r in rows if (r["metric"], r["domain"], r["arm"], r["size"]) == ("loss", "forget", "mask", "s1"))
    assert row["extrapolated"] == "True"
    fits = list(csv.DictReader(open(paths["fits_csv"])))
    assert any(r["convention"] == "paper" and r["domain"] == "retain" and r["variant"] == "none"
               and float(r["b"]) == pytest.approx(-0.05) for r in fits)
    runs_csv = list(csv.DictReader(open(paths["runs_csv"])))
    assert float(runs_csv[0]["compute_paper"]) == 120 * 3e6 ** 2 and "loss:forget" in runs_csv[0]


def test_independent_token_level_is_headlined(tmp_path):
    md = open(write_report(analyze(_planted(False), ScalingOptions(n_boot=0)), str(tmp_path))["report"]).read()
    i_indep = md.index("## Token-level loss with labels independent")
    assert "## Secondary" not in md and "None: no filtered run" not in md
    assert "| forget | s1 | remove | 1.5325 | 7,000* |" in md[i_indep:]  # token-level = 1.1 x all-token loss


def test_unknown_labels_are_secondary(tmp_path):
    md = open(write_report(analyze(_planted(None), ScalingOptions(n_boot=0)), str(tmp_path))["report"]).read()
    sec = md[md.index("## Secondary"):]
    assert "privileged-unknown: these evaluation JSONs predate the labels block" in sec
    assert "forget unknown" in sec
