"""Scaling-law fits of loss against training compute, and the compute slowdown of filtered runs.

Compute: C = 6 N D (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", section 2.1: about 6 N FLOPs per
training token, 2 N forward and 4 N backward; attention and embedding terms neglected). Options (`ScalingOptions`):
    N = non-embedding parameters (default, Kaplan's choice: everything but the input embedding and the output layer)
        or all parameters ("total");
    D = tokens seen (default: every input token costs a forward and a backward pass, filtered or not) or tokens
        learned (unmasked targets; with --train-tokens the arms learn equally many).
A run may also give its compute directly (manifest field `compute`).

Fit, per eval domain and metric, on the baseline arm (`none`): ordinary least squares of ln L = a + b ln C over
its runs; R^2, standard errors of a and b, their covariance, and 95% intervals with Student's t (n - 2 degrees of
freedom). Needs >= 2 runs with distinct C (errors need >= 3). Every other arm is fitted the same way for the plots.

Compute slowdown of a run f with compute C_f and loss L_f on a domain (docs/evaluation.md, worked example):
    C_none(L) = exp((ln L - a) / b)        the compute at which the baseline fit reaches loss L
    slowdown  = C_f / C_none(L_f)
On the forget domain it says how much more compute the filtered model spent than the baseline needed to reach the
same loss (> 1: the domain was learned less); on the retain domain it is the collateral cost (ideally ~1; < 1 means
better than the baseline). `extrapolation` is "below" / "above" when C_none(L_f) lies outside the compute range of the
baseline runs (the fit is extrapolated: read such values as rough), None inside. A 95% interval follows from the
fit's parameter covariance (delta method on ln slowdown = ln C_f - (ln L_f - a) / b).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

FORMAT = "megatron_tf.scaling/1"
MANIFEST_FORMAT = "megatron_tf.scaling_manifest/1"
ARMS = ("none", "mask", "remove", "document")
DOMAIN_ORDER = ("forget", "retain", "general")
METRICS = ("loss", "token_loss")
METRIC_LABEL = {"loss": "loss (nats/token)", "token_loss": "token-level loss (nats/token)"}
KAPLAN = "Kaplan et al. 2020, Scaling Laws for Neural Language Models (arXiv:2001.08361), C = 6 N D"

# Two-sided 95% Student t quantiles t_{0.975, df} for df = 1..30 (standard tables); larger df: 1.96 + 2.5 / df
# (within 0.002 of the exact value for df > 30).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(dof: int) -> float:
    if dof < 1:
        raise ValueError(f"t quantile needs >= 1 degree of freedom, got {dof}")
    return _T975[dof - 1] if dof <= len(_T975) else 1.96 + 2.5 / dof


def training_compute(n_params: float, tokens: float) -> float:
    """C = 6 N D FLOPs (Kaplan et al. 2020)."""
    return 6.0 * float(n_params) * float(tokens)


@dataclass
class ScalingOptions:
    params: str = "non_embedding"  # or "total"
    tokens: str = "seen"  # or "learned"
    baseline_arm: str = "none"
    metrics: tuple[str, ...] = METRICS

    def __post_init__(self):
        if self.params not in ("non_embedding", "total"):
            raise ValueError(f"params must be 'non_embedding' or 'total', got {self.params!r}")
        if self.tokens not in ("seen", "learned"):
            raise ValueError(f"tokens must be 'seen' or 'learned', got {self.tokens!r}")
        bad = [m for m in self.metrics if m not in METRICS]
        if bad:
            raise ValueError(f"unknown metrics {bad}; expected some of {METRICS}")


@dataclass
class RunRecord:
    """One trained model: its arm, size, parameter and token counts, and eval numbers."""

    name: str
    arm: str
    size: str | None = None
    n_params: float | None = None
    n_params_non_embedding: float | None = None
    tokens_seen: float | None = None
    tokens_learned: float | None = None
    compute: float | None = None  # explicit C, overrides 6 N D
    losses: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> domain -> nats/token
    mcq: dict[str, dict] = field(default_factory=dict)  # set -> {acc, acc_stderr, acc_norm, ...}
    source: str | None = None

    def n(self, opts: ScalingOptions) -> float:
        v = self.n_params_non_embedding if opts.params == "non_embedding" else self.n_params
        if v is None:
            key = "n_params_non_embedding" if opts.params == "non_embedding" else "n_params"
            raise ValueError(f"run {self.name!r} ({self.source or 'manifest'}): no {key}; add it to the manifest "
                             "entry or evaluate with a model config")
        return float(v)

    def d(self, opts: ScalingOptions) -> float:
        v = self.tokens_seen if opts.tokens == "seen" else self.tokens_learned
        if v is None:
            raise ValueError(f"run {self.name!r} ({self.source or 'manifest'}): no tokens_{opts.tokens}; add it to "
                             f"the manifest entry or pass --tokens-{opts.tokens} to tools/evaluate.py")
        return float(v)

    def c(self, opts: ScalingOptions) -> float:
        return float(self.compute) if self.compute is not None else training_compute(self.n(opts), self.d(opts))


_RECORD_FIELDS = ("name", "arm", "size", "n_params", "n_params_non_embedding", "tokens_seen", "tokens_learned",
                  "compute", "losses", "mcq")


def record_from_eval(ev: dict, source: str | None = None, overrides: dict | None = None) -> RunRecord:
    """A RunRecord from an evaluation JSON (tools/evaluate.py), with manifest fields overriding."""
    run, model = ev.get("run", {}), ev.get("model", {})
    losses: dict[str, dict[str, float]] = {"loss": {}, "token_loss": {}}
    for dom, v in ev.get("loss", {}).items():
        if v.get("nats_per_token") is not None:
            losses["loss"][dom] = float(v["nats_per_token"])
        tl = v.get("token_level")
        if tl and tl.get("nats_per_token") is not None:
            losses["token_loss"][dom] = float(tl["nats_per_token"])
    mcq = {k: {m: v.get(m) for m in ("n", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "chance", "p_correct")}
           for k, v in ev.get("mcq", {}).items()}
    name = run.get("name") or (os.path.splitext(os.path.basename(source))[0] if source else None)
    rec = dict(name=name, arm=run.get("arm"), size=run.get("size"),
               n_params=run.get("n_params", model.get("n_params")),
               n_params_non_embedding=run.get("n_params_non_embedding", model.get("n_params_non_embedding")),
               tokens_seen=run.get("tokens_seen"), tokens_learned=run.get("tokens_learned"),
               compute=run.get("compute"), losses={k: v for k, v in losses.items() if v}, mcq=mcq)
    rec.update({k: v for k, v in (overrides or {}).items() if k in _RECORD_FIELDS})
    return _check_record(RunRecord(**rec, source=source))


def _check_record(r: RunRecord) -> RunRecord:
    where = r.source or "manifest"
    if not r.name:
        raise ValueError(f"{where}: run has no name")
    if not r.arm:
        raise ValueError(f"{where}: run {r.name!r} has no arm (expected one of {ARMS} or another label); pass "
                         "--arm to tools/evaluate.py or set 'arm' in the manifest")
    for k in ("n_params", "n_params_non_embedding", "tokens_seen", "tokens_learned", "compute"):
        v = getattr(r, k)
        if v is not None and (not isinstance(v, (int, float)) or not v > 0):
            raise ValueError(f"{where}: run {r.name!r}: {k} must be a positive number, found {v!r}")
    for metric, doms in r.losses.items():
        if metric not in METRICS or not isinstance(doms, dict):
            raise ValueError(f"{where}: run {r.name!r}: 'losses' must map a metric {METRICS} to {{domain: loss}}, "
                             f"found key {metric!r}")
        for dom, v in doms.items():
            if not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{where}: run {r.name!r}: loss {metric}/{dom} must be a positive number, found {v!r}")
    return r


def load_eval_files(paths: Iterable[str]) -> list[RunRecord]:
    out = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            out.append(record_from_eval(json.load(f), p))
    return out


def load_manifest(path: str) -> list[RunRecord]:
    """Runs of a manifest (docs/evaluation.md): {"runs": [entry, ...]} or a bare list of entries. An entry has
    "eval": an evaluation JSON (relative to the manifest's folder) and/or the RunRecord fields themselves."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    entries = data.get("runs") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected {{\"runs\": [...]}} or a JSON list of runs, found {type(data).__name__}")
    base = os.path.dirname(os.path.abspath(path))
    out = []
    for i, e in enumerate(entries):
        where = f"{path}: runs[{i}]"
        if not isinstance(e, dict):
            raise ValueError(f"{where}: expected an object, found {type(e).__name__}")
        unknown = sorted(set(e) - set(_RECORD_FIELDS) - {"eval"})
        if unknown:
            raise ValueError(f"{where}: unknown fields {unknown}; allowed: eval, {', '.join(_RECORD_FIELDS)}")
        if "eval" in e:
            ep = e["eval"] if os.path.isabs(e["eval"]) else os.path.join(base, e["eval"])
            if not os.path.isfile(ep):
                raise FileNotFoundError(f"{where}: evaluation file not found: {ep}")
            with open(ep, encoding="utf-8") as f:
                out.append(record_from_eval(json.load(f), ep, e))
        else:
            out.append(_check_record(RunRecord(**{k: e.get(k) for k in _RECORD_FIELDS if k in e}, source=where)))
    return out


# ---- fits -------------------------------------------------------------------------------------------------------
@dataclass
class PowerLawFit:
    """ln L = a + b ln C (least squares)."""

    a: float
    b: float
    r2: float
    n: int
    ln_c_min: float
    ln_c_max: float
    a_stderr: float | None = None
    b_stderr: float | None = None
    cov_ab: float | None = None
    dof: int = 0

    def loss(self, c) -> np.ndarray | float:
        return np.exp(self.a + self.b * np.log(c))

    def compute_for_loss(self, loss: float) -> float:
        if self.b == 0:
            raise ZeroDivisionError("flat fit (b = 0): no compute reaches a different loss")
        return math.exp((math.log(loss) - self.a) / self.b)

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.dof >= 1 and self.b_stderr is not None:
            t = t975(self.dof)
            d["a_ci95"] = [self.a - t * self.a_stderr, self.a + t * self.a_stderr]
            d["b_ci95"] = [self.b - t * self.b_stderr, self.b + t * self.b_stderr]
        d["c_min"], d["c_max"] = math.exp(self.ln_c_min), math.exp(self.ln_c_max)
        return d


def fit_power_law(compute: Sequence[float], loss: Sequence[float]) -> PowerLawFit:
    x = np.log(np.asarray(compute, dtype=np.float64))
    y = np.log(np.asarray(loss, dtype=np.float64))
    n = x.size
    if n != y.size:
        raise ValueError(f"fit_power_law: {n} compute values but {y.size} losses")
    if n < 2 or np.ptp(x) == 0:
        raise ValueError(f"fit_power_law: needs >= 2 points with distinct compute, got {n} "
                         f"(compute values {np.exp(x).tolist()})")
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    b = float(((x - xm) * (y - ym)).sum() / sxx)
    a = float(ym - b * xm)
    resid = y - (a + b * x)
    sse, sst = float((resid ** 2).sum()), float(((y - ym) ** 2).sum())
    r2 = 1.0 - sse / sst if sst > 0 else 1.0
    fit = PowerLawFit(a, b, r2, n, float(x.min()), float(x.max()), dof=n - 2)
    if n > 2:
        s2 = sse / (n - 2)
        fit.b_stderr = math.sqrt(s2 / sxx)
        fit.a_stderr = math.sqrt(s2 * (1.0 / n + xm * xm / sxx))
        fit.cov_ab = float(-xm * s2 / sxx)
    return fit


def slowdown(fit: PowerLawFit, c_f: float, l_f: float) -> dict:
    """C_f / C_none(L_f) with the extrapolation flag and a delta-method 95% interval (module docstring)."""
    out = {"baseline_compute": None, "slowdown": None, "log10_slowdown": None, "slowdown_ci95": None,
           "extrapolation": None}
    if fit.b >= 0:
        out["extrapolation"] = "baseline fit does not decrease (b >= 0): slowdown undefined"
        return out
    ln_ceq = (math.log(l_f) - fit.a) / fit.b
    ln_s = math.log(c_f) - ln_ceq
    out.update(baseline_compute=math.exp(ln_ceq), slowdown=math.exp(ln_s), log10_slowdown=ln_s / math.log(10))
    if ln_ceq < fit.ln_c_min - 1e-9:
        out["extrapolation"] = "below"
    elif ln_ceq > fit.ln_c_max + 1e-9:
        out["extrapolation"] = "above"
    if fit.b_stderr is not None and fit.dof >= 1:
        ga, gb = 1.0 / fit.b, (math.log(l_f) - fit.a) / fit.b ** 2
        var = ga * ga * fit.a_stderr ** 2 + gb * gb * fit.b_stderr ** 2 + 2 * ga * gb * fit.cov_ab
        sd = math.sqrt(max(var, 0.0))
        t = t975(fit.dof)
        out["slowdown_ci95"] = [math.exp(ln_s - t * sd), math.exp(ln_s + t * sd)]
    return out


# ---- analysis ---------------------------------------------------------------------------------------------------
def _human(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def ordered_domains(domains: Iterable[str]) -> list[str]:
    ds = set(domains)
    return [d for d in DOMAIN_ORDER if d in ds] + sorted(ds - set(DOMAIN_ORDER))


def ordered_arms(arms: Iterable[str]) -> list[str]:
    a = set(arms)
    return [x for x in ARMS if x in a] + sorted(a - set(ARMS))


def analyze(runs: Sequence[RunRecord], opts: ScalingOptions | None = None) -> dict:
    """Fits, slowdowns and the run table as one JSON-able dict (docs/evaluation.md, "Scaling JSON")."""
    opts = opts or ScalingOptions()
    if not runs:
        raise ValueError("analyze: no runs")
    names = [r.name for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"analyze: duplicate run names {dup}")
    table = []
    for r in runs:
        c = r.c(opts)
        n = r.n(opts) if (r.n_params_non_embedding if opts.params == "non_embedding" else r.n_params) else None
        table.append({"name": r.name, "arm": r.arm, "size": r.size or (_human(n) if n else r.name), "N": n,
                      "n_params": r.n_params, "n_params_non_embedding": r.n_params_non_embedding,
                      "tokens_seen": r.tokens_seen, "tokens_learned": r.tokens_learned,
                      "D": (r.tokens_seen if opts.tokens == "seen" else r.tokens_learned), "compute": c,
                      "losses": r.losses, "mcq": r.mcq, "source": r.source})
    # sizes ordered by their median N (or compute when N is unknown)
    by_size: dict[str, list[float]] = {}
    for t in table:
        by_size.setdefault(t["size"], []).append(t["N"] or t["compute"])
    sizes = sorted(by_size, key=lambda s: (float(np.median(by_size[s])), s))
    arms = ordered_arms(t["arm"] for t in table)
    table.sort(key=lambda t: (sizes.index(t["size"]), arms.index(t["arm"]), t["name"]))
    if opts.baseline_arm not in arms:
        raise ValueError(f"analyze: no run of the baseline arm {opts.baseline_arm!r} (arms found: {arms})")
    fits: dict = {}
    slowdowns: list[dict] = []
    warnings: list[str] = []
    for metric in opts.metrics:
        domains = ordered_domains({d for t in table for d in t["losses"].get(metric, {})})
        for dom in domains:
            pts = {arm: [(t["compute"], t["losses"][metric][dom], t) for t in table
                         if t["arm"] == arm and dom in t["losses"].get(metric, {})] for arm in arms}
            arm_fits = {}
            for arm, p in pts.items():
                if len({c for c, _, _ in p}) >= 2:
                    arm_fits[arm] = fit_power_law([c for c, _, _ in p], [v for _, v, _ in p])
            if opts.baseline_arm not in arm_fits:
                warnings.append(f"{metric}/{dom}: fewer than 2 baseline ({opts.baseline_arm}) runs with distinct "
                                "compute: no fit, no slowdown")
                if arm_fits:
                    fits.setdefault(metric, {})[dom] = {a: f.to_dict() for a, f in arm_fits.items()}
                continue
            fits.setdefault(metric, {})[dom] = {a: f.to_dict() for a, f in arm_fits.items()}
            base = arm_fits[opts.baseline_arm]
            for arm, p in pts.items():
                for c, v, t in p:
                    slowdowns.append({"metric": metric, "domain": dom, "arm": arm, "size": t["size"],
                                      "name": t["name"], "N": t["N"], "compute": c, "loss": v,
                                      "baseline_loss_at_compute": float(base.loss(c)), **slowdown(base, c, v)})
    return {"format": FORMAT,
            "options": {**asdict(opts), "metrics": list(opts.metrics), "compute": KAPLAN,
                        "N": "non-embedding parameters (all but the input embedding and the output layer)"
                        if opts.params == "non_embedding" else "all parameters (padded vocabulary included)",
                        "D": "tokens seen (all input tokens trained on)" if opts.tokens == "seen"
                        else "tokens learned (unmasked target tokens)"},
            "sizes": sizes, "arms": arms, "runs": table, "fits": fits, "slowdowns": slowdowns,
            "warnings": warnings}
