"""benchmarks/gpu/run_all.sh --dry-run: every step of the owed GPU run rehearsed on CPU with tiny sizes, and every
JSON it writes carries the machine record (device, driver, versions, commit, date)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MACHINE_KEYS = {"date", "device", "driver", "torch", "cuda", "python", "git_commit", "git_dirty", "attention_backends"}


@pytest.mark.slow
def test_run_all_dry_run_exercises_every_step(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), OMP_NUM_THREADS="1", MEGATRON_TF_COMMIT="0123abc", MEGATRON_TF_DIRTY="0",
               MEGATRON_TF_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "run_all.sh"), "--dry-run"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True
    steps = {s["step"]: s for s in summary["steps"]}
    assert list(steps) == ["env", "build", "tests", "flce", "train", "annotate", "cross_entropy", "sanitizer",
                           "replication"]
    assert all(s["status"] == "ok" and s["rc"] == 0 for s in steps.values()), steps
    assert summary["machine"]["git_commit"] == "0123abc" and summary["machine"]["git_dirty"] is False
    for name in ("fused_linear_cross_entropy.json", "cross_entropy_bench.json", "train_bench.json", "annotate.json"):
        rec = json.loads((out / name).read_text())
        assert MACHINE_KEYS <= set(rec["machine"]), (name, sorted(rec["machine"]))
        assert rec["machine"]["git_commit"] == "0123abc", name
    train = json.loads((out / "train_bench.json").read_text())["results"]
    assert [r["mode"] for r in train] == ["none", "mask", "remove"]
    assert all(len(r["tokens_per_s_per_run"]) == 2 for r in train)  # --rounds 2 in the dry run: a CI exists
    assert train[1]["overhead_vs_none_mean_ci95"]["ci95"] is not None
    assert all(r["flops_per_token_causal_attention"] < r["flops_per_token_full_attention"] for r in train)
    flce = json.loads((out / "fused_linear_cross_entropy.json").read_text())["results"]
    assert {r["method"] for r in flce} == {"materialised", "ours_torch"} and all("p80_ms" in r for r in flce)
    assert all(r["grad_weight_rel_vs_materialised"] < 1e-5 for r in flce)
    assert (out / "replication.log").read_text().count("pretrain_gpt.py") == 12  # 3 sizes x 4 arms (commands)


def test_run_all_deadline_skips_and_part_selection(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PARTS="env,cross_entropy", DEADLINE_S="3",
               MEGATRON_TF_CACHE=str(tmp_path / "c"))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "run_all.sh"), "--dry-run"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    steps = {s["step"]: s["status"] for s in json.loads((out / "summary.json").read_text())["steps"]}
    assert steps["env"] == "skipped: out of time" and steps["cross_entropy"] == "skipped: out of time"
    assert steps["train"] == "not selected" and steps["build"] == "not selected"
