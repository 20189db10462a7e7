"""Power-law fits recover planted laws (exactly without noise, within tolerance with noise, intervals cover); the
compute slowdown of a planted shifted curve is the planted factor, under the paper's convention and the seen-token one
(hand-computed); extrapolation flags from the baseline's measured losses; seeds; privileged labels; manifests;
bootstrap intervals with known answers."""

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
    record_from_eval,
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
    from scipy import stats  # in the test extra: a missing install fails, not skips
    for df in (1, 2, 5, 13, 30, 31, 45, 100, 1000):
        assert abs(t975(df) - stats.t.ppf(0.975, df)) < 2e-3


def test_slowdown_of_planted_shift():
    cs = [1e15, 1e16, 1e17]
    fit = fit_power_law(cs, [law(c) for c in cs])
    for k in (1.0, 3.0, 40.0, 7000.0):
        c_f = 5e16
        s = slowdown(fit, c_f, law(c_f / k))  # the filtered run reaches at C_f what the baseline had at C_f / k
        assert s["slowdown"] == pytest.approx(k, rel=1e-9)
        assert s["baseline_compute"] == pytest.approx(c_f / k, rel=1e-9)
        assert s["log10_slowdown"] == pytest.approx(math.log10(k), abs=1e-9)
    assert slowdown(fit, 1e17, law(1e18))["slowdown"] == pytest.approx(0.1)
    flat = fit_power_law(cs, [2.0, 2.1, 2.2])
    assert slowdown(flat, 1e16, 2.0)["slowdown"] is None
    assert "does not decrease" in slowdown(flat, 1e16, 2.0)["undefined"]


SIZES = [(1e6, 3e6, 2e7), (4e6, 8e6, 8e7), (1.6e7, 2.4e7, 3.2e8)]  # (N non-embedding, N total, tokens seen)


def paper_c(n_total):
    return 6 * n_total * 20 * n_total


def _runs(k_forget, k_retain):
    """3 sizes x (none, mask, remove): losses planted as the baseline law at C / k, C in the paper convention."""
    out = []
    for i, (n, n_total, d) in enumerate(SIZES):
        for arm in ("none", "mask", "remove"):
            c = paper_c(n_total)
            kf, kr = (1.0, 1.0) if arm == "none" else (k_forget[arm], k_retain[arm])
            out.append(RunRecord(f"s{i}-{arm}", arm, f"s{i}", n_params=n_total, n_params_non_embedding=n,
                                 tokens_seen=d * (1.0 if arm == "none" else 1.1), tokens_learned=d * 0.9,
                                 losses={"loss": {"forget": law(c / kf), "retain": law(c / kr, 1.9, -0.05)}}))
    return out


def test_analyze_recovers_planted_slowdowns():
    an = analyze(_runs({"mask": 30.0, "remove": 7000.0}, {"mask": 1.0, "remove": 1.2}), ScalingOptions(n_boot=0))
    assert an["compute_convention"]["name"] == "paper" and an["compare_convention"]["name"] == "seen"
    assert an["sizes"] == ["s0", "s1", "s2"] and an["arms"] == ["none", "mask", "remove"]
    fit = an["fits"]["paper"]["loss"]["forget"]["none"]
    assert fit["a"] == pytest.approx(A, abs=1e-9) and fit["b"] == pytest.approx(B, abs=1e-11)
    assert an["fits"]["paper"]["loss"]["retain"]["none"]["b"] == pytest.approx(-0.05, abs=1e-11)
    by = {(s["domain"], s["arm"], s["size"]): s for s in an["slowdowns"]}
    for size in ("s0", "s1", "s2"):
        assert by[("forget", "remove", size)]["slowdown"] == pytest.approx(7000.0, rel=1e-8)
        assert by[("forget", "mask", size)]["slowdown"] == pytest.approx(30.0, rel=1e-8)
        assert by[("retain", "remove", size)]["slowdown"] == pytest.approx(1.2, rel=1e-8)
        assert by[("retain", "mask", size)]["slowdown"] == pytest.approx(1.0, rel=1e-8)
        assert by[("forget", "none", size)]["slowdown"] == pytest.approx(1.0, rel=1e-8)
        assert by[("forget", "remove", size)]["compute"] == paper_c(SIZES[int(size[1])][1])  # same C as none
    # measured baseline range: the losses at C(s0) .. C(s2); 7000x at s2 (C(s2)/7000 < C(s0)) lies above it, 30x at
    # s2 (C(s2)/30 > C(s0), 64x apart) inside, 30x at s0 above
    assert by[("forget", "remove", "s2")]["extrapolated"] is True
    assert by[("forget", "remove", "s2")]["extrapolation"] == "loss above the baseline range"
    assert by[("forget", "mask", "s2")]["extrapolated"] is False
    assert by[("forget", "mask", "s2")]["extrapolation"] is None
    assert by[("forget", "mask", "s0")]["extrapolated"] is True
    assert by[("forget", "mask", "s1")]["delta_vs_baseline"] == pytest.approx(
        law(paper_c(8e6) / 30) - law(paper_c(8e6)), rel=1e-12)


def test_paper_vs_seen_by_hand():
    """Two baseline sizes, N total 1e6 and 4e6 (paper C 1.2e14 and 1.92e15, 16x apart), tokens seen 1e7 and 2e7
    (seen C 8x apart), losses 4.0 and 3.0. A filtered run of the larger size at loss 3.5 that saw 2.2e7 tokens:
        paper: slowdown = 16 ** (1 - ln(4/3.5) / ln(4/3)) = 16 ** 0.535840 = 4.4178
        seen:  slowdown = (2.2e7 / 2e7) * 8 ** 0.535840 = 1.1 * 3.04726 = 3.3520"""
    runs = [RunRecord("a-none", "none", "a", n_params=1e6, tokens_seen=1e7, tokens_learned=1e7,
                      losses={"loss": {"forget": 4.0}}),
            RunRecord("b-none", "none", "b", n_params=4e6, tokens_seen=2e7, tokens_learned=2e7,
                      losses={"loss": {"forget": 3.0}}),
            RunRecord("b-mask", "mask", "b", n_params=4e6, tokens_seen=2.2e7, tokens_learned=2e7,
                      losses={"loss": {"forget": 3.5}})]
    an = analyze(runs, ScalingOptions(n_boot=0))
    s = next(s for s in an["slowdowns"] if s["name"] == "b-mask")
    assert s["by_convention"]["paper"]["compute"] == 1.92e15 and s["compute"] == 1.92e15
    assert s["by_convention"]["paper"]["slowdown"] == pytest.approx(4.4178, abs=1e-4)
    assert s["by_convention"]["seen"]["compute"] == pytest.approx(6 * 4e6 * 2.2e7)
    assert s["by_convention"]["seen"]["slowdown"] == pytest.approx(3.3520, abs=1e-4)
    assert s["extrapolated"] is False and s["delta_vs_baseline"] == pytest.approx(0.5)
    an2 = analyze(runs, ScalingOptions(compute="seen", n_boot=0))
    assert an2["compare_convention"]["name"] == "paper"
    s2 = next(s for s in an2["slowdowns"] if s["name"] == "b-mask")
    assert s2["slowdown"] == pytest.approx(3.3520, abs=1e-4)


def test_compute_options():
    r = _runs({"mask": 2.0, "remove": 2.0}, {"mask": 1.0, "remove": 1.0})[0]
    assert r.c("paper") == 6 * 3e6 * 20 * 3e6
    assert r.c("seen") == training_compute(3e6, 2e7) == 6 * 3e6 * 2e7
    assert r.c("learned") == pytest.approx(6 * 3e6 * 2e7 * 0.9)
    assert r.c("kaplan") == 6 * 1e6 * 2e7  # the old default: non-embedding N, tokens seen
    with pytest.raises(ValueError, match="needs tokens_learned"):
        RunRecord("x", "none", n_params=1.0, tokens_seen=1.0).c("learned")
    with pytest.raises(ValueError, match="baseline arm 'none'"):
        analyze([RunRecord("x", "mask", compute=1e15, losses={"loss": {"forget": 2.0}})])
    with pytest.raises(ValueError, match="unknown convention"):
        ScalingOptions(compute="total")


def _docs_eval(name, arm, size, n_total, rate_per_doc, tokens, privileged=None, token_level=True):
    """An eval JSON with per-document numbers: document j has tokens[j] tokens at rate_per_doc[j] nats/token."""
    nats = [r * t for r, t in zip(rate_per_doc, tokens)]
    loss = {"nats_per_token": sum(nats) / sum(tokens),
            "per_document": {"tokens": tokens, "nats": nats, "token_level_tokens": tokens, "token_level_nats": nats}}
    if token_level:
        loss["token_level"] = {"selection": "forget", "nats_per_token": loss["nats_per_token"]}
        if privileged is not None:
            loss["token_level"]["privileged"] = privileged
    return {"format": "megatron_tf.eval/1", "model": {"n_params": n_total},
            "run": {"name": name, "arm": arm, "size": size, "tokens_seen": 1e6, "tokens_learned": 1e6},
            "loss": {"forget": loss}}


def test_bootstrap_interval_known_answers():
    """(1) Every document of every run at the run's constant rate: every replicate equals the point, so the interval
    is the point slowdown. (2) Two seeds per group: the interval spans the slowdowns of the seeds' losses."""
    tokens = [10, 20, 30, 40]
    evs = [_docs_eval("a-none", "none", "a", 1e6, [4.0] * 4, tokens),
           _docs_eval("b-none", "none", "b", 4e6, [3.0] * 4, tokens),
           _docs_eval("b-mask", "mask", "b", 4e6, [3.5] * 4, tokens, privileged=False)]
    runs = [record_from_eval(e) for e in evs]
    an = analyze(runs, ScalingOptions(n_boot=200, metrics=("loss",)))
    s = next(s for s in an["slowdowns"] if s["name"] == "b-mask")
    assert s["interval_method"] == "bootstrap over evaluation documents"
    assert s["slowdown_ci95"] == pytest.approx([4.4178] * 2, abs=1e-4)
    assert s["delta_ci95"] == pytest.approx([0.5, 0.5])
    # a second seed of b-mask at 3.3: group loss = mean 3.4; seed draws give 3.5, 3.4 or 3.3
    runs.append(record_from_eval(_docs_eval("b-mask-s2", "mask", "b", 4e6, [3.3] * 4, tokens, privileged=False)))
    an = analyze(runs, ScalingOptions(n_boot=400, metrics=("loss",)))
    s = next(s for s in an["slowdowns"] if s["arm"] == "mask")
    assert s["runs"] == ["b-mask", "b-mask-s2"] and s["loss"] == pytest.approx(3.4)
    assert s["interval_method"].endswith("+ seeds")

    def sd(loss):
        return 16 ** (1 - math.log(4 / loss) / math.log(4 / 3))

    assert s["slowdown"] == pytest.approx(sd(3.4), rel=1e-9)
    assert s["slowdown_ci95"] == pytest.approx([sd(3.3), sd(3.5)], rel=1e-9)


def test_privileged_labels_recorded():
    tokens = [5, 5]
    new = record_from_eval(_docs_eval("b-mask", "mask", "b", 4e6, [3.0, 3.0], tokens, privileged=True))
    old = record_from_eval(_docs_eval("b-mask", "mask", "b", 4e6, [3.0, 3.0], tokens))
    indep = record_from_eval(_docs_eval("b-mask", "mask", "b", 4e6, [3.0, 3.0], tokens, privileged=False))
    assert new.privileged == {"forget": True} and old.privileged == {"forget": None}
    assert indep.privileged == {"forget": False}
    base = [record_from_eval(_docs_eval(f"{s}-none", "none", s, n, [r, r], tokens, privileged=False))
            for s, n, r in (("a", 1e6, 4.0), ("b", 4e6, 3.0))]
    for rec, status in ((new, "privileged"), (old, "unknown"), (indep, "independent")):
        an = analyze(base + [rec], ScalingOptions(n_boot=0))
        assert an["token_level"] == {"forget": status}
        row = next(s for s in an["slowdowns"] if s["metric"] == "token_loss" and s["arm"] == "mask")
        assert row["privileged"] == {"privileged": True, "unknown": None, "independent": False}[status]


def test_manifest(tmp_path):
    ev = {"format": "megatron_tf.eval/1",
          "run": {"name": "s1-none", "arm": "none", "size": "s1", "tokens_seen": 8e7, "tokens_learned": 8e7,
                  "train_tokens_count": "seen", "train_flops": 3.84e15, "tokens_filtered_fraction": 0.0},
          "model": {"n_params": 8e6, "n_params_non_embedding": 4e6},
          "loss": {"forget": {"nats_per_token": 3.0, "nats_per_token_stderr": 0.01,
                              "token_level": {"selection": "forget", "nats_per_token": 3.5}},
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
    assert runs[0].stderr == {"loss": {"forget": 0.01}} and runs[0].per_document == {}
    assert runs[0].train_tokens_count == "seen" and runs[0].train_flops == 3.84e15
    assert runs[0].filtered_share == 0.0 and runs[0].target_share is None
    assert runs[0].mcq["medqa"]["acc"] == 0.3
    assert runs[1].c("paper") == 1e20 and runs[1].c("seen") == 1e20
    (tmp_path / "bad.json").write_text(json.dumps([{"name": "x", "arm": "none", "tokens": 5}]))
    with pytest.raises(ValueError, match=r"runs\[0\]: unknown fields \['tokens'\]"):
        load_manifest(str(tmp_path / "bad.json"))
    (tmp_path / "bad2.json").write_text(json.dumps([{"name": "x", "arm": "none", "losses": {"forget": 2.0}}]))
    with pytest.raises(ValueError, match="'losses' must map a metric"):
        load_manifest(str(tmp_path / "bad2.json"))
    (tmp_path / "bad3.json").write_text(json.dumps({"runs": [{"eval": "missing.json"}]}))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_manifest(str(tmp_path / "bad3.json"))
    (tmp_path / "bad4.json").write_text(json.dumps([{"name": "x", "arm": "none", "train_tokens_count": "all"}]))
    with pytest.raises(ValueError, match="train_tokens_count must be 'learned' or 'seen', found 'all'"):
        load_manifest(str(tmp_path / "bad4.json"))


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
