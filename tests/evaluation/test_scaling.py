"""Power-law fits recover planted laws (exactly without noise, within tolerance with noise, intervals cover); the
compute slowdown of a planted shifted curve is the planted factor; extrapolation flags; C = 6ND options; manifests."""

import json
import math

import numpy as np
import pytest

from megatron_tf.evaluation.scaling import (
    RunRecord,
    ScalingOptions,
    analyze,
    fit_power_law,
    load_manifest,
    slowdown,
    t975,
    training_compute,
)

A, B = 2.3, -0.071  # ln L = A + B ln C


def law(c, a=A, b=B):
    return math.exp(a + b * math.log(c))


def test_fit_exact_on_noise_free_data():
    cs = [1e14, 3e15, 2e16, 7e17]
    fit = fit_power_law(cs, [law(c) for c in cs])
    assert fit.a == pytest.approx(A, abs=1e-10) and fit.b == pytest.approx(B, abs=1e-12)
    assert fit.r2 == pytest.approx(1.0) and fit.n == 4 and fit.dof == 2
    assert fit.b_stderr < 1e-12
    assert fit.compute_for_loss(law(5e15)) == pytest.approx(5e15, rel=1e-9)
    assert fit.loss(2e16) == pytest.approx(law(2e16), rel=1e-12)


def test_fit_with_noise_within_tolerance_and_interval_coverage():
    rng = np.random.default_rng(0)
    cs = np.exp(np.linspace(math.log(1e14), math.log(1e19), 8))
    covered = 0
    for _ in range(200):
        ls = [law(c) * math.exp(rng.normal(0, 0.01)) for c in cs]
        fit = fit_power_law(cs, ls)
        assert abs(fit.b - B) < 0.006 and abs(fit.a - A) < 0.25
        lo, hi = fit.to_dict()["b_ci95"]
        covered += lo <= B <= hi
    assert 0.90 <= covered / 200 <= 0.99  # nominal 95%


def test_fit_needs_two_distinct_points():
    with pytest.raises(ValueError, match="distinct compute"):
        fit_power_law([1e15, 1e15], [2.0, 2.1])
    fit = fit_power_law([1e15, 1e16], [2.0, 1.8])  # exact line, no error estimate
    assert fit.b_stderr is None and "b_ci95" not in fit.to_dict()


def test_t_quantiles():
    assert t975(1) == 12.706 and t975(30) == 2.042 and abs(t975(200) - 1.972) < 0.002
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 13, 30, 31, 45, 100, 1000):
        assert abs(t975(df) - stats.t.ppf(0.975, df)) < 2e-3


def test_slowdown_of_planted_shift_and_flags():
    cs = [1e15, 1e16, 1e17]
    fit = fit_power_law(cs, [law(c) for c in cs])
    for k in (1.0, 3.0, 40.0, 7000.0):
        c_f = 5e16
        s = slowdown(fit, c_f, law(c_f / k))  # the filtered run reaches at C_f what the baseline had at C_f / k
        assert s["slowdown"] == pytest.approx(k, rel=1e-9)
        assert s["baseline_compute"] == pytest.approx(c_f / k, rel=1e-9)
        assert s["log10_slowdown"] == pytest.approx(math.log10(k), abs=1e-9)
        assert s["extrapolation"] == (None if c_f / k >= 1e15 else "below")
    assert slowdown(fit, 1e17, law(1e18))["extrapolation"] == "above"  # better than any baseline run
    assert slowdown(fit, 1e17, law(1e18))["slowdown"] == pytest.approx(0.1)
    flat = fit_power_law(cs, [2.0, 2.1, 2.2])
    assert slowdown(flat, 1e16, 2.0)["slowdown"] is None
    assert "does not decrease" in slowdown(flat, 1e16, 2.0)["extrapolation"]


def _runs(k_forget, k_retain, noise=None):
    """3 sizes x (none, mask, remove): losses planted as the baseline law at C / k."""
    out = []
    for i, (n, n_total, d) in enumerate([(1e6, 3e6, 2e7), (4e6, 8e6, 8e7), (1.6e7, 2.4e7, 3.2e8)]):
        for arm in ("none", "mask", "remove"):
            c = 6 * n * d
            kf, kr = (1.0, 1.0) if arm == "none" else (k_forget[arm], k_retain[arm])
            out.append(RunRecord(f"s{i}-{arm}", arm, f"s{i}", n_params=n_total, n_params_non_embedding=n,
                                 tokens_seen=d, tokens_learned=d * 0.9,
                                 losses={"loss": {"forget": law(c / kf), "retain": law(c / kr, 1.9, -0.05)}}))
    return out


def test_analyze_recovers_planted_slowdowns():
    an = analyze(_runs({"mask": 30.0, "remove": 7000.0}, {"mask": 1.0, "remove": 1.2}))
    assert an["sizes"] == ["s0", "s1", "s2"] and an["arms"] == ["none", "mask", "remove"]
    fit = an["fits"]["loss"]["forget"]["none"]
    assert fit["a"] == pytest.approx(A, abs=1e-9) and fit["b"] == pytest.approx(B, abs=1e-11)
    assert an["fits"]["loss"]["retain"]["none"]["b"] == pytest.approx(-0.05, abs=1e-11)
    by = {(s["domain"], s["arm"], s["size"]): s for s in an["slowdowns"]}
    for size in ("s0", "s1", "s2"):
        assert by[("forget", "remove", size)]["slowdown"] == pytest.approx(7000.0, rel=1e-8)
        assert by[("forget", "mask", size)]["slowdown"] == pytest.approx(30.0, rel=1e-8)
        assert by[("retain", "remove", size)]["slowdown"] == pytest.approx(1.2, rel=1e-8)
        assert by[("retain", "mask", size)]["slowdown"] == pytest.approx(1.0, rel=1e-8)
        assert by[("forget", "none", size)]["slowdown"] == pytest.approx(1.0, rel=1e-8)
    # 7000x below the smallest baseline run: extrapolated; 30x at the largest size stays inside the fitted range
    assert by[("forget", "remove", "s2")]["extrapolation"] == "below"
    assert by[("forget", "mask", "s2")]["extrapolation"] is None
    assert by[("forget", "mask", "s0")]["extrapolation"] == "below"


def test_compute_options():
    runs = _runs({"mask": 2.0, "remove": 2.0}, {"mask": 1.0, "remove": 1.0})
    r = runs[0]
    assert r.c(ScalingOptions()) == training_compute(1e6, 2e7) == 6 * 1e6 * 2e7
    assert r.c(ScalingOptions(params="total")) == 6 * 3e6 * 2e7
    assert r.c(ScalingOptions(tokens="learned")) == pytest.approx(6 * 1e6 * 2e7 * 0.9)
    an = analyze(runs, ScalingOptions(params="total"))
    assert an["runs"][0]["compute"] == 6 * 3e6 * 2e7 and "all parameters" in an["options"]["N"]
    with pytest.raises(ValueError, match="no tokens_learned"):
        RunRecord("x", "none", n_params_non_embedding=1.0, tokens_seen=1.0).c(ScalingOptions(tokens="learned"))
    with pytest.raises(ValueError, match="baseline arm 'none'"):
        analyze([RunRecord("x", "mask", compute=1e15, losses={"loss": {"forget": 2.0}})])


def test_manifest(tmp_path):
    ev = {"format": "megatron_tf.eval/1",
          "run": {"name": "s1-none", "arm": "none", "size": "s1", "tokens_seen": 8e7, "tokens_learned": 8e7},
          "model": {"n_params": 8e6, "n_params_non_embedding": 4e6},
          "loss": {"forget": {"nats_per_token": 3.0, "token_level": {"selection": "forget", "nats_per_token": 3.5}},
                   "retain": {"nats_per_token": 2.5, "token_level": {"selection": "unlabeled",
                                                                     "nats_per_token": 2.4}}},
          "mcq": {"medqa": {"n": 10, "acc": 0.3, "acc_stderr": 0.14, "acc_norm": 0.2, "acc_norm_stderr": 0.12,
                            "chance": 0.2, "p_correct": 0.21, "role": "forget"}}}
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "s1.json").write_text(json.dumps(ev))
    man = {"runs": [{"eval": "evals/s1.json", "size": "medium"},
                    {"name": "paper", "arm": "remove", "compute": 1e20, "losses": {"loss": {"forget": 2.0}}}]}
    (tmp_path / "m.json").write_text(json.dumps(man))
    runs = load_manifest(str(tmp_path / "m.json"))
    assert runs[0].size == "medium" and runs[0].n_params_non_embedding == 4e6 and runs[0].tokens_seen == 8e7
    assert runs[0].losses == {"loss": {"forget": 3.0, "retain": 2.5}, "token_loss": {"forget": 3.5, "retain": 2.4}}
    assert runs[0].mcq["medqa"]["acc"] == 0.3
    assert runs[1].c(ScalingOptions()) == 1e20
    (tmp_path / "bad.json").write_text(json.dumps([{"name": "x", "arm": "none", "tokens": 5}]))
    with pytest.raises(ValueError, match=r"runs\[0\]: unknown fields \['tokens'\]"):
        load_manifest(str(tmp_path / "bad.json"))
    (tmp_path / "bad2.json").write_text(json.dumps([{"name": "x", "arm": "none", "losses": {"forget": 2.0}}]))
    with pytest.raises(ValueError, match="'losses' must map a metric"):
        load_manifest(str(tmp_path / "bad2.json"))
    (tmp_path / "bad3.json").write_text(json.dumps({"runs": [{"eval": "missing.json"}]}))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_manifest(str(tmp_path / "bad3.json"))


def test_worked_example_of_the_docs():
    """docs/evaluation.md: a = 2.0, b = -0.05, C_f = 6 * 1e8 * 2e9, L_f = 1.0 -> 5.10;
    retain a = 1.8, b = -0.045, L_f = 0.931 -> 1.04."""
    cs = [1e16, 1e17, 1e18]
    forget = fit_power_law(cs, [law(c, 2.0, -0.05) for c in cs])
    c_f = training_compute(1e8, 2e9)
    assert c_f == 1.2e18 and forget.loss(c_f) == pytest.approx(0.9218, abs=1e-4)
    s = slowdown(forget, c_f, 1.0)
    assert s["baseline_compute"] == pytest.approx(math.exp(40)) and round(s["slowdown"], 2) == 5.10
    retain = fit_power_law(cs, [law(c, 1.8, -0.045) for c in cs])
    assert round(slowdown(retain, c_f, 0.931)["slowdown"], 2) == 1.04
