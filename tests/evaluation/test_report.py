"""The scaling report: every file exists, the PNGs are PNGs embedded by relative path, and the JSON, CSV and Markdown
hold the planted numbers."""

import csv
import json
import os

import pytest

from megatron_tf.evaluation.report import write_report
from megatron_tf.evaluation.scaling import analyze

from .test_scaling import _runs

PNG = b"\x89PNG\r\n\x1a\n"


def test_report_files_hold_planted_numbers(tmp_path):
    runs = _runs({"mask": 30.0, "remove": 7000.0}, {"mask": 1.0, "remove": 1.25})
    for r in runs:  # token-level losses too, and one MC set
        r.losses["token_loss"] = {d: v * 1.1 for d, v in r.losses["loss"].items()}
        r.mcq = {"medqa": {"acc": 0.25, "acc_norm": 0.3125, "acc_norm_stderr": 0.05, "chance": 0.2}}
    out = str(tmp_path / "rep")
    paths = write_report(analyze(runs), out)
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
    for p in pngs.values():
        assert f"]({os.path.basename(p)})" in md  # relative path
    assert "| forget | remove | s1 | s1-remove |" in md and "| 7,000 [7,000, 7,000] | extrapolated (below) |" in md
    assert "| retain | remove | s2 | s2-remove |" in md and "| 1.25 [1.25, 1.25] |" in md
    assert "| forget | none | 2.3000 | -0.0710 [-0.0710, -0.0710] | 1.0000 | 3 |" in md
    assert "0.312 ± 0.050" in md and "medqa (0.20)" in md
    assert "Kaplan et al. 2020" in md

    data = json.load(open(paths["json"]))
    sl = {(s["metric"], s["domain"], s["arm"], s["size"]): s["slowdown"] for s in data["slowdowns"]}
    assert sl[("loss", "forget", "remove", "s0")] == pytest.approx(7000.0, rel=1e-8)
    assert sl[("token_loss", "retain", "remove", "s2")] == pytest.approx(1.25, rel=1e-8)
    assert data["fits"]["loss"]["forget"]["none"]["b"] == pytest.approx(-0.071, abs=1e-11)
    rows = list(csv.DictReader(open(paths["slowdowns_csv"])))
    row = next(r for r in rows if (r["metric"], r["domain"], r["arm"], r["size"]) == ("loss", "forget", "mask", "s1"))
    assert float(row["slowdown"]) == pytest.approx(30.0, rel=1e-8)
    fits = list(csv.DictReader(open(paths["fits_csv"])))
    assert any(r["domain"] == "retain" and r["arm"] == "none" and float(r["b"]) == pytest.approx(-0.05) for r in fits)
    runs_csv = list(csv.DictReader(open(paths["runs_csv"])))
    assert float(runs_csv[0]["compute"]) == 6 * 1e6 * 2e7 and "loss:forget" in runs_csv[0]
