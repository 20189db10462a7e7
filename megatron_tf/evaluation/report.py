"""The scaling report: Markdown with embedded plots (relative paths), and the numbers as JSON and CSV.

    write_report(analysis, out_dir) -> {"report": out_dir/report.md, "json": scaling.json, "slowdowns_csv": ...,
                                        "runs_csv": ..., "fits_csv": ..., "frontier_csv": ..., one key per PNG}

Order of report.md (issue 13): the headline is the all-token forget / retain / general loss (the paper's primary
metric) and its compute slowdown under the chosen convention and the seen-token one side by side; then token-level
losses whose evaluation labels are independent of the filter's; then runs and compute (tokens seen, tokens learned,
training FLOPs, which count was matched), fits, the threshold frontier; a token-level metric computed with the
filter's own labels (privileged, or unknown in older JSON) appears only in the labelled secondary section.
All files are written atomically (temporary name, then rename).
"""

from __future__ import annotations

import json
import os

from megatron_tf.utils.io import atomic_write

from .plots import plot_all
from .report_tables import (  # noqa: F401  (fmt_ratio re-exported for tools)
    csv_text,
    fits_table,
    fmt_ratio,
    frontier_table,
    loss_table,
    mcq_table,
    runs_table,
    slowdown_table,
)

PRIVILEGED_NOTE = ("privileged: computed with the labels the filter used; shows the tokens were not trained on, not "
                   "that the knowledge they carry was removed")
UNKNOWN_NOTE = ("privileged-unknown: these evaluation JSONs predate the labels block (issue 13), so it is not "
                "recorded whether the token-level labels are the filter's; the evaluations of that time labelled with "
                "the filter's own labeler, so read them as privileged")


FIT_FIELDS = ["convention", "metric", "domain", "variant", "a", "b", "r2", "n", "a_stderr", "b_stderr", "b_ci95_low",
              "b_ci95_high", "c_min", "c_max"]
RUN_FIELDS = ["name", "arm", "variant", "size", "n_params", "n_params_non_embedding", "tokens_seen", "tokens_learned",
              "train_flops", "train_flops_convention", "train_tokens_count", "train_tokens_count_recorded",
              "filtered_share", "target_share", "source"]
FRONTIER_FIELDS = ["size", "arm", "variant", "share", "share_kind", "share_label", "forget_loss", "retain_loss",
                   "general_loss", "forget_delta", "retain_delta", "tokens_seen", "tokens_learned", "train_flops"]


def _slowdown_csv(analysis: dict) -> tuple[list[dict], list[str]]:
    convs = list(analysis["compute_labels"])
    fields = ["metric", "domain", "arm", "variant", "size", "name", "privileged", "loss", "loss_ci95_low",
              "loss_ci95_high", "delta_vs_baseline", "delta_ci95_low", "delta_ci95_high", "extrapolated",
              "extrapolation", "interval_method"]
    for c in convs:
        fields += [f"compute_{c}", f"baseline_compute_{c}", f"slowdown_{c}", f"slowdown_{c}_ci95_low",
                   f"slowdown_{c}_ci95_high", f"slowdown_{c}_undefined_fraction"]
    out = []
    for s in analysis["slowdowns"]:
        r = dict(s)
        for k in ("loss", "delta"):
            ci = s.get(f"{k}_ci95") or [None, None]
            r[f"{k}_ci95_low"], r[f"{k}_ci95_high"] = ci
        for c in convs:
            e = s["by_convention"][c]
            ci = e.get("slowdown_ci95") or [None, None]
            r.update({f"compute_{c}": e["compute"], f"baseline_compute_{c}": e["baseline_compute"],
                      f"slowdown_{c}": e["slowdown"], f"slowdown_{c}_ci95_low": ci[0],
                      f"slowdown_{c}_ci95_high": ci[1], f"slowdown_{c}_undefined_fraction": e["undefined_fraction"]})
        out.append(r)
    return out, fields


def _fit_rows(analysis):
    out = []
    for conv, metrics in analysis["fits"].items():
        for metric, doms in metrics.items():
            for dom, variants in doms.items():
                for v, f in variants.items():
                    ci = f.get("b_ci95") or [None, None]
                    out.append({"convention": conv, "metric": metric, "domain": dom, "variant": v, **f,
                                "b_ci95_low": ci[0], "b_ci95_high": ci[1]})
    return out


def _run_rows(analysis):
    rows = []
    for t in analysis["runs"]:
        r = dict(t)
        for c, v in t["compute"].items():
            r[f"compute_{c}"] = v
        for metric, doms in t["losses"].items():
            for dom, v in doms.items():
                r[f"{metric}:{dom}"] = v
        for dom, p in t["token_level_privileged"].items():
            r[f"token_level_privileged:{dom}"] = "unknown" if p is None else p
        for name, m in t["mcq"].items():
            r[f"acc:{name}"] = m.get("acc")
            r[f"acc_norm:{name}"] = m.get("acc_norm")
        rows.append(r)
    extra = [f"compute_{c}" for c in analysis["compute_labels"]] + sorted({k for r in rows for k in r if ":" in k})
    return rows, RUN_FIELDS + extra


def _intro(analysis: dict) -> list[str]:
    cc, cmp = analysis["compute_convention"], analysis["compare_convention"]
    base = analysis["options"]["baseline_arm"]
    L = ["# Scaling and compute slowdown report", "",
         f"**Compute convention: `{cc['name']}`**, {cc['formula']}; N = {cc['N']}; D = {cc['D']} ({cc['source']}). "
         f"Every slowdown is also given under `{cmp['name']}` ({cmp['formula']}; N = {cmp['N']}; D = {cmp['D']}).",
         "",
         f"Slowdown of a run f on a domain: C_f / C_{base}(L_f), its compute over the compute at which the `{base}` "
         "fit (ln L = a + b ln C over the sizes) reaches its loss; > 1 on forget: the domain was learned less; on "
         "retain / general it is the collateral cost (ideally ~1). **extrapolated**: the loss lies outside the "
         f"range of the `{base}` runs' measured losses on that domain, so the fit is read beyond its data.",
         f"Intervals: 95% percentile bootstrap ({analysis['intervals']['n_boot']} replicates, seed "
         f"{analysis['intervals']['seed']}): {analysis['intervals']['method']}; `n/a` where neither is available. "
         f"Loss differences (Δ) are against the `{base}` run of the same size."
         + (" Every group has one run (one seed): the intervals carry the evaluation documents' sampling noise, not "
            "run-to-run training variance." if all(len(g["runs"]) == 1 for g in analysis["groups"]) else ""), ""]
    for w in analysis.get("warnings", []):
        L.append(f"> warning: {w}")
    if analysis.get("warnings"):
        L.append("")
    return L


def _matched_line(analysis: dict) -> str:
    counts = {g["train_tokens_count"] for g in analysis["groups"]}
    recorded = all(g["train_tokens_count_recorded"] for g in analysis["groups"])
    what = " / ".join(sorted(counts))
    note = "" if recorded else " (not recorded in some evaluations: assumed `learned`, the trainer's default)"
    return (f"Matched across arms: tokens {what}{note}. Training FLOPs = 6 * N_total * tokens seen unless the "
            "evaluation recorded its own.")


def render_markdown(analysis: dict, plots: dict[str, str], out_dir: str) -> str:
    base = analysis["options"]["baseline_arm"]
    rel = {k: os.path.relpath(p, out_dir) for k, p in plots.items()}
    status = analysis.get("token_level", {})
    L = _intro(analysis)
    L += ["## Headline: all-token loss (the paper's primary metric)", ""]
    L += loss_table(analysis, "loss", lambda s: True) + ["", _matched_line(analysis), ""]
    L += ["### Compute slowdown, all-token loss", ""]
    L += slowdown_table(analysis, "loss", lambda s: s["arm"] != base) + [""]
    L += [f"![all-token loss vs compute]({rel[k]})" for k in ("loss_vs_compute_loss",) if k in rel]
    L += [""]
    indep = [s for s in analysis["slowdowns"] if s["metric"] == "token_loss" and s["privileged"] is False]
    L += ["## Token-level loss with labels independent of the filter's", ""]
    if any(s["arm"] != base for s in indep):
        L += loss_table(analysis, "token_loss", lambda s: s["privileged"] is False) + [""]
        L += slowdown_table(analysis, "token_loss", lambda s: s["arm"] != base and s["privileged"] is False) + [""]
    else:
        L += ["None: no filtered run has token-level losses whose evaluation labels differ from the filter's "
              "(see the secondary section).", ""]
    L += ["## Runs, tokens and compute", "", _matched_line(analysis), ""] + runs_table(analysis) + [""]
    L += ["## Fits", ""] + fits_table(analysis) + [""]
    for k, title in (("pareto_loss", "Forget vs retain all-token loss"), ("slowdown_vs_size_loss",
                                                                          "All-token slowdown vs size")):
        if k in rel:
            L += [f"![{title}]({rel[k]})", ""]
    if analysis.get("frontier"):
        L += ["## Threshold frontier (all-token forget vs retain loss)", ""] + frontier_table(analysis) + [
            "", _matched_line(analysis), ""]
        if "frontier" in rel:
            L += [f"![Threshold frontier]({rel['frontier']})", ""]
    secondary = [s for s in analysis["slowdowns"] if s["metric"] == "token_loss" and s["privileged"] is not False]
    if secondary:
        unknown = any(s["privileged"] is None for s in secondary)
        L += ["## Secondary: token-level loss with the filter's own labels (not a headline)", "",
              f"> {PRIVILEGED_NOTE}." + (f"\n> {UNKNOWN_NOTE}." if unknown else ""), "",
              f"Status per domain: {', '.join(f'{d} {v}' for d, v in status.items())}.", ""]
        L += loss_table(analysis, "token_loss", lambda s: s["privileged"] is not False or s["arm"] == base) + [""]
        L += slowdown_table(analysis, "token_loss", lambda s: s["arm"] != base and s["privileged"] is not False)
        L += [""] + [f"![token-level ({'privileged' if not unknown else 'privileged-unknown'})]({rel[k]})"
                     for k in ("loss_vs_compute_token_loss",) if k in rel] + [""]
    L += mcq_table(analysis)
    L += ["Numbers: `scaling.json` (everything), `slowdowns.csv`, `fits.csv`, `runs.csv`"
          + (", `frontier.csv`" if analysis.get("frontier") else "") + ".", ""]
    return "\n".join(L)


def write_report(analysis: dict, out_dir: str) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = dict(plot_all(analysis, out_dir))
    files = {"json": "scaling.json", "slowdowns_csv": "slowdowns.csv", "fits_csv": "fits.csv", "runs_csv": "runs.csv",
             "report": "report.md"}
    if analysis.get("frontier"):
        files["frontier_csv"] = "frontier.csv"
    paths.update({k: os.path.join(out_dir, v) for k, v in files.items()})
    run_rows, run_fields = _run_rows(analysis)
    sl_rows, sl_fields = _slowdown_csv(analysis)
    texts = {"json": json.dumps(analysis, indent=1) + "\n", "slowdowns_csv": csv_text(sl_rows, sl_fields),
             "fits_csv": csv_text(_fit_rows(analysis), FIT_FIELDS), "runs_csv": csv_text(run_rows, run_fields)}
    if analysis.get("frontier"):
        texts["frontier_csv"] = csv_text(analysis["frontier"], FRONTIER_FIELDS)
    texts["report"] = render_markdown(analysis, paths, out_dir)
    for k, text in texts.items():  # the report last
        with atomic_write(paths[k], "w") as f:
            f.write(text)
    return paths
