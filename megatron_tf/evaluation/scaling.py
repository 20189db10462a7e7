"""Scaling-law fits of loss against training compute, and the compute slowdown of filtered runs.

Compute C: one of the conventions of compute.py (`ScalingOptions.compute`, default "paper": C = 6 * N * (20 * N),
N = total parameters, the same C for every arm of a size, as the paper's analysis code does). Every slowdown is also
computed under a second convention (`compare`, default "seen": 6 * N_total * tokens seen) and shown beside it.

Groups. Runs sharing size and variant (the arm, plus its nominal filtered share when a threshold sweep sets one,
e.g. "remove f=0.05") are seeds of one group; a group's loss is the mean of its runs' losses (nats/token) and its C
the mean of theirs.

Fit, per metric and eval domain, on the baseline groups (arm `none`): ordinary least squares of ln L = a + b ln C
over the sizes; R^2, standard errors of a and b, their covariance and 95% intervals with Student's t (n - 2 degrees
of freedom). Needs >= 2 sizes with distinct C (errors need >= 3). Every other variant is fitted the same way for the
plots.

Compute slowdown of a group f with compute C_f and loss L_f on a domain (docs/evaluation.md, worked example):
    C_none(L) = exp((ln L - a) / b)        the compute at which the baseline fit reaches loss L
    slowdown  = C_f / C_none(L_f)
On the forget domain: how much more compute the filtered model spent than the baseline needed to reach the same loss
(> 1: the domain was learned less); on retain / general: the collateral cost (ideally ~1). `extrapolated` is true when
L_f lies outside the range of the baseline groups' measured losses on that domain (`extrapolation`: "loss above the
baseline range" / "loss below the baseline range"): the fit is then read beyond its data.

Intervals (intervals.py): 95% percentile bootstrap. Each replicate resamples the evaluation documents (paired across
runs evaluated on the same documents; normal approximation from the stored stderr for older JSON) and the seeds of
each group, refits the baseline and recomputes every slowdown and every loss difference against the baseline of the
same size. `slowdown_ci95` is that interval; `fit_ci95` is the delta method on the fit's residual covariance only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .compute import convention
from .compute import label as convention_label
from .frontier import frontier_rows
from .intervals import LossSource, group_replicates, ols_batch, percentile_ci, replicate_losses
from .scaling_runs import METRICS, RunRecord, load_eval_files, load_manifest, record_from_eval

FORMAT = "megatron_tf.scaling/2"
MANIFEST_FORMAT = "megatron_tf.scaling_manifest/1"
ARMS = ("none", "mask", "remove", "document")
DOMAIN_ORDER = ("forget", "retain", "general")
METRIC_LABEL = {"loss": "all-token loss (nats/token)", "token_loss": "token-level loss (nats/token)"}

__all__ = ["ARMS", "METRICS", "METRIC_LABEL", "PowerLawFit", "RunRecord", "ScalingOptions", "analyze",
           "fit_power_law", "load_eval_files", "load_manifest", "record_from_eval", "slowdown", "t975",
           "training_compute"]

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
    compute: str = "paper"  # compute.py: paper | seen | learned | kaplan
    compare: str | None = None  # the side-by-side convention; None: "seen" (or "paper" when compute is "seen")
    baseline_arm: str = "none"
    metrics: tuple[str, ...] = METRICS
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self):
        convention(self.compute)
        if self.compare is None:
            self.compare = "paper" if self.compute == "seen" else "seen"
        convention(self.compare)
        bad = [m for m in self.metrics if m not in METRICS]
        if bad:
            raise ValueError(f"unknown metrics {bad}; expected some of {METRICS}")
        if self.n_boot < 0:
            raise ValueError(f"n_boot must be >= 0, got {self.n_boot}")

    @property
    def conventions(self) -> tuple[str, ...]:
        return (self.compute,) if self.compare == self.compute else (self.compute, self.compare)


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
    """C_f / C_base(L_f) with the fit's delta-method 95% interval `fit_ci95` (module docstring). The extrapolation
    flag is set by `analyze` from the baseline's measured losses."""
    out = {"baseline_compute": None, "slowdown": None, "log10_slowdown": None, "fit_ci95": None, "undefined": None}
    if fit.b >= 0:
        out["undefined"] = "baseline fit does not decrease (b >= 0): slowdown undefined"
        return out
    ln_ceq = (math.log(l_f) - fit.a) / fit.b
    ln_s = math.log(c_f) - ln_ceq
    out.update(baseline_compute=math.exp(ln_ceq), slowdown=math.exp(ln_s), log10_slowdown=ln_s / math.log(10))
    if fit.b_stderr is not None and fit.dof >= 1:
        ga, gb = 1.0 / fit.b, (math.log(l_f) - fit.a) / fit.b ** 2
        var = ga * ga * fit.a_stderr ** 2 + gb * gb * fit.b_stderr ** 2 + 2 * ga * gb * fit.cov_ab
        sd = math.sqrt(max(var, 0.0))
        t = t975(fit.dof)
        out["fit_ci95"] = [math.exp(ln_s - t * sd), math.exp(ln_s + t * sd)]
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


def variant_of(r: RunRecord) -> str:
    return r.arm if r.target_share is None else f"{r.arm} f={r.target_share:g}"


def train_flops_of(r: RunRecord) -> tuple[float | None, str]:
    """Training FLOPs of a run: the recorded run.train_flops, else 6 * N_total * tokens seen (compute.py)."""
    from .compute import TRAIN_FLOPS_CONVENTION

    if r.train_flops is not None:
        return float(r.train_flops), (r.train_flops_convention or "recorded by tools/evaluate.py")
    if r.n_params is not None and r.tokens_seen is not None:
        return 6.0 * r.n_params * r.tokens_seen, TRAIN_FLOPS_CONVENTION + ", computed by the report"
    return None, "unknown (needs n_params and tokens_seen)"


def _group_privileged(values: list[bool | None]) -> bool | None:
    if any(v is True for v in values):
        return True
    return None if any(v is None for v in values) else False


def _run_row(r: RunRecord, opts: ScalingOptions) -> dict:
    flops, flops_conv = train_flops_of(r)
    n = r.n_params if r.n_params is not None else r.n_params_non_embedding
    return {"name": r.name, "arm": r.arm, "variant": variant_of(r), "size": r.size or (_human(n) if n else r.name),
            "N": r.n_params, "n_params": r.n_params, "n_params_non_embedding": r.n_params_non_embedding,
            "tokens_seen": r.tokens_seen, "tokens_learned": r.tokens_learned, "train_flops": flops,
            "train_flops_convention": flops_conv, "train_tokens_count": r.train_tokens_count or "learned",
            "train_tokens_count_recorded": r.train_tokens_count is not None,
            "compute": {c: r.c(c) for c in opts.conventions}, "compute_given": r.compute is not None,
            "filtered_share": r.filtered_share, "target_share": r.target_share, "share_source": r.share_source,
            "losses": r.losses, "token_level_privileged": r.privileged, "eval_labels": r.eval_labels,
            "filter_labels": r.filter_labels, "mcq": r.mcq, "source": r.source}


def _groups(table: list[dict], opts: ScalingOptions) -> list[dict]:
    out: dict[tuple[str, str], dict] = {}
    for t in table:
        g = out.setdefault((t["size"], t["variant"]), {"size": t["size"], "variant": t["variant"], "arm": t["arm"],
                                                       "runs": [], "_rows": []})
        if g["arm"] != t["arm"]:
            raise ValueError(f"analyze: variant {t['variant']!r} of size {t['size']!r} mixes arms")
        g["runs"].append(t["name"])
        g["_rows"].append(t)
    for g in out.values():
        rows = g["_rows"]
        g["N"] = float(np.mean([t["N"] for t in rows])) if all(t["N"] for t in rows) else None
        g["compute"] = {c: float(np.mean([t["compute"][c] for t in rows])) for c in opts.conventions}
        shares = [t["filtered_share"] for t in rows if t["filtered_share"] is not None]
        g["filtered_share"] = float(np.mean(shares)) if shares else None
        g["target_share"] = rows[0]["target_share"]
        g["share_source"] = rows[0]["share_source"]
        for k in ("tokens_seen", "tokens_learned", "train_flops"):
            g[k] = float(np.mean([t[k] for t in rows])) if all(t[k] is not None for t in rows) else None
        g["train_tokens_count"] = "/".join(sorted({t["train_tokens_count"] for t in rows}))
        g["train_tokens_count_recorded"] = all(t["train_tokens_count_recorded"] for t in rows)
        g["losses"] = {}
    return list(out.values())


def _loss_replicates(runs: Sequence[RunRecord], groups: list[dict], metric: str, dom: str, opts: ScalingOptions,
                     rng: np.random.Generator) -> dict[str, tuple[float, np.ndarray | None, str | None]]:
    """Group key -> (point loss, (n_boot,) replicates or None, interval method) on one metric and domain."""
    by_name = {r.name: r for r in runs}
    sources = {}
    for r in runs:
        if dom in r.losses.get(metric, {}):
            docs = r.per_document.get(metric, {}).get(dom)
            sources[r.name] = LossSource(r.losses[metric][dom], *(docs or (None, None)),
                                         stderr=r.stderr.get(metric, {}).get(dom))
    reps = replicate_losses(sources, opts.n_boot, rng) if opts.n_boot else {}
    out = {}
    for g in groups:
        names = [n for n in g["runs"] if n in sources]
        if not names:
            continue
        point = float(np.mean([by_name[n].losses[metric][dom] for n in names]))
        methods = {sources[n].method for n in names}
        method = None if None in methods or not reps else " + ".join(sorted(methods)) + (
            " + seeds" if len(names) > 1 else "")
        rep = group_replicates([reps.get(n) for n in names], opts.n_boot, rng) if reps else None
        out[_gkey(g)] = (point, rep, method)
    return out


def _gkey(g: dict) -> str:
    return f"{g['size']} / {g['variant']}"


def _fit_convention(groups, loss_reps, base_arm, conv, metric, dom, warnings):
    """Fits of every variant under one convention, plus the baseline fit's bootstrap (a, b) replicates."""
    pts: dict[str, list] = {}
    for g in groups:
        if _gkey(g) in loss_reps:
            pts.setdefault(g["variant"], []).append((g["compute"][conv], loss_reps[_gkey(g)][0], g))
    fits = {v: fit_power_law([c for c, _, _ in p], [x for _, x, _ in p]) for v, p in pts.items()
            if len({c for c, _, _ in p}) >= 2}
    if base_arm not in fits:
        warnings.append(f"{metric}/{dom} ({conv})")  # collected into one warning by analyze
        return fits, None
    base = pts[base_arm]
    reps = [loss_reps[_gkey(g)][1] for _, _, g in base]
    boot = None
    if reps and all(r is not None for r in reps):
        boot = ols_batch(np.log([c for c, _, _ in base]), np.log(np.stack(reps, axis=1)))
    return fits, boot


def _slowdown_entry(fit, boot, c_f, l_f, rep) -> dict:
    e = slowdown(fit, c_f, l_f) if fit else {"baseline_compute": None, "slowdown": None, "log10_slowdown": None,
                                             "fit_ci95": None, "undefined": "no baseline fit"}
    e.update(compute=c_f, slowdown_ci95=None, undefined_fraction=None)
    if fit and boot is not None and rep is not None:
        a, b = boot
        with np.errstate(invalid="ignore", divide="ignore"):
            ln_s = math.log(c_f) - (np.log(rep) - a) / b
        bad = ~(b < 0) | ~np.isfinite(ln_s)
        e["undefined_fraction"] = float(bad.mean())
        e["slowdown_ci95"] = percentile_ci(np.exp(np.where(bad, np.nan, ln_s)))
    return e


def _domain_rows(runs, groups, metric, dom, opts, rng, fits_out, warnings) -> list[dict]:
    loss_reps = _loss_replicates(runs, groups, metric, dom, opts, rng)
    base_arm = opts.baseline_arm
    per_conv = {}
    for conv in opts.conventions:
        fits, boot = _fit_convention(groups, loss_reps, base_arm, conv, metric, dom, warnings)
        fits_out.setdefault(conv, {}).setdefault(metric, {})[dom] = {v: f.to_dict() for v, f in fits.items()}
        per_conv[conv] = (fits.get(base_arm), boot)
    base_losses = [loss_reps[_gkey(g)][0] for g in groups if g["arm"] == base_arm and _gkey(g) in loss_reps
                   and g["variant"] == base_arm]
    lo, hi = (min(base_losses), max(base_losses)) if base_losses else (None, None)
    by_size = {g["size"]: loss_reps.get(_gkey(g)) for g in groups if g["variant"] == base_arm}
    rows = []
    for g in groups:
        if _gkey(g) not in loss_reps:
            continue
        point, rep, method = loss_reps[_gkey(g)]
        base = by_size.get(g["size"])
        delta = None if base is None else point - base[0]
        delta_ci = percentile_ci(rep - base[1]) if base is not None and rep is not None and base[1] is not None \
            else None
        priv = False if metric == "loss" else _group_privileged(
            [next(r for r in runs if r.name == n).privileged.get(dom) for n in g["runs"]])
        no_fit = per_conv[opts.compute][0] is None  # no slowdown to flag (e.g. a single size)
        ext = None if lo is None or no_fit else ("loss above the baseline range" if point > hi + 1e-12 else
                                                 "loss below the baseline range" if point < lo - 1e-12 else None)
        by_conv = {c: _slowdown_entry(*per_conv[c], g["compute"][c], point, rep) for c in opts.conventions}
        row = {"metric": metric, "domain": dom, "arm": g["arm"], "variant": g["variant"], "size": g["size"],
               "group": _gkey(g), "runs": g["runs"], "name": "+".join(g["runs"]), "N": g["N"], "loss": point,
               "loss_ci95": percentile_ci(rep), "delta_vs_baseline": delta, "delta_ci95": delta_ci,
               "baseline_range": [lo, hi] if lo is not None else None, "extrapolated": ext is not None,
               "extrapolation": ext, "privileged": priv, "interval_method": method, "by_convention": by_conv}
        row.update({k: by_conv[opts.compute][k] for k in ("compute", "baseline_compute", "slowdown",
                                                          "slowdown_ci95", "fit_ci95", "undefined",
                                                          "undefined_fraction")})
        g["losses"].setdefault(metric, {})[dom] = {k: row[k] for k in ("loss", "loss_ci95", "delta_vs_baseline",
                                                                       "delta_ci95", "privileged")}
        rows.append(row)
    return rows


def analyze(runs: Sequence[RunRecord], opts: ScalingOptions | None = None) -> dict:
    """Fits, slowdowns and the run table as one JSON-able dict (docs/evaluation.md, "Scaling JSON")."""
    opts = opts or ScalingOptions()
    if not runs:
        raise ValueError("analyze: no runs")
    names = [r.name for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"analyze: duplicate run names {dup}")
    table = [_run_row(r, opts) for r in runs]
    by_size: dict[str, list[float]] = {}
    for t in table:
        by_size.setdefault(t["size"], []).append(t["N"] or t["compute"][opts.compute])
    sizes = sorted(by_size, key=lambda s: (float(np.median(by_size[s])), s))
    arms = ordered_arms(t["arm"] for t in table)
    table.sort(key=lambda t: (sizes.index(t["size"]), arms.index(t["arm"]), t["target_share"] or 0, t["name"]))
    if opts.baseline_arm not in arms:
        raise ValueError(f"analyze: no run of the baseline arm {opts.baseline_arm!r} (arms found: {arms})")
    groups = _groups(table, opts)
    warnings: list[str] = []
    for s in sizes:
        cs = {round(g["compute"]["paper"], 6) for g in groups if g["size"] == s and "paper" in g["compute"]}
        if len(cs) > 1:
            warnings.append(f"size {s}: arms differ in total parameters, so the paper convention's C differs")
    rng = np.random.default_rng(opts.seed)
    fits: dict = {}
    slowdowns: list[dict] = []
    no_fit: list[str] = []
    for metric in opts.metrics:
        for dom in ordered_domains({d for t in table for d in t["losses"].get(metric, {})}):
            slowdowns += _domain_rows(runs, groups, metric, dom, opts, rng, fits, no_fit)
    if no_fit:
        warnings.append(f"fewer than 2 baseline ({opts.baseline_arm}) sizes with distinct compute: no fit and no "
                        f"slowdown for {', '.join(no_fit)}")
    for g in groups:
        g.pop("_rows")
    out = {"format": FORMAT, "compute_convention": convention(opts.compute),
           "compare_convention": convention(opts.compare),
           "compute_labels": {c: convention_label(c) for c in opts.conventions},
           "options": {**asdict(opts), "metrics": list(opts.metrics)},
           "intervals": {"level": 0.95, "n_boot": opts.n_boot, "seed": opts.seed,
                         "method": "percentile bootstrap over evaluation documents (paired across runs) and seeds; "
                                   "normal approximation from the stored stderr where per_document is absent"},
           "sizes": sizes, "arms": arms, "runs": table, "groups": groups, "fits": fits, "slowdowns": slowdowns,
           "token_level": token_level_status(table, opts.baseline_arm), "warnings": warnings}
    out["frontier"] = frontier_rows(out)
    return out


def token_level_status(table: list[dict], base_arm: str) -> dict:
    """Per domain: "independent" (every filtered run's token-level labels differ from its filter's), "privileged"
    (some are the filter's own labels), or "unknown" (older eval JSON without the labels block)."""
    out = {}
    for dom in ordered_domains({d for t in table for d in t["token_level_privileged"]}):
        vals = [t["token_level_privileged"].get(dom) for t in table
                if t["arm"] != base_arm and dom in t["token_level_privileged"]]
        p = _group_privileged(vals)
        out[dom] = "privileged" if p else ("unknown" if p is None else "independent")
    return out
