"""The scaling report: Markdown with embedded plots (relative paths), and the numbers as JSON and CSV.

    write_report(analysis, out_dir) -> {"report": out_dir/report.md, "json": scaling.json, "slowdowns_csv": ...,
                                        "runs_csv": ..., "fits_csv": ..., plus one key per PNG}
All files are written atomically (temporary name, then rename).
"""

from __future__ import annotations

import csv
import io
import json
import os

from megatron_tf.utils.io import atomic_write

from .plots import plot_all
from .scaling import METRIC_LABEL, ordered_domains


def fmt_ratio(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.2f}" if x < 100 else f"{x:,.0f}"


def fmt_sci(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3e}"


def fmt_loss(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _csv(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else (repr(r[k]) if isinstance(r[k], float) else r[k]) for k in fields})
    return buf.getvalue()


SLOWDOWN_FIELDS = ["metric", "domain", "arm", "size", "name", "N", "compute", "loss", "baseline_loss_at_compute",
                   "baseline_compute", "slowdown", "slowdown_ci95_low", "slowdown_ci95_high", "extrapolation"]
FIT_FIELDS = ["metric", "domain", "arm", "a", "b", "r2", "n", "a_stderr", "b_stderr", "b_ci95_low", "b_ci95_high",
              "c_min", "c_max"]
RUN_FIELDS = ["name", "arm", "size", "N", "n_params", "n_params_non_embedding", "tokens_seen", "tokens_learned", "D",
              "compute", "source"]


def _slowdown_rows(analysis):
    out = []
    for s in analysis["slowdowns"]:
        ci = s.get("slowdown_ci95") or [None, None]
        out.append({**s, "slowdown_ci95_low": ci[0], "slowdown_ci95_high": ci[1]})
    return out


def _fit_rows(analysis):
    out = []
    for metric, doms in analysis["fits"].items():
        for dom, arms in doms.items():
            for arm, f in arms.items():
                ci = f.get("b_ci95") or [None, None]
                out.append({"metric": metric, "domain": dom, "arm": arm, **f, "b_ci95_low": ci[0],
                            "b_ci95_high": ci[1]})
    return out


def _run_rows(analysis):
    rows = []
    for t in analysis["runs"]:
        r = dict(t)
        for metric, doms in t["losses"].items():
            for dom, v in doms.items():
                r[f"{metric}:{dom}"] = v
        for name, m in t["mcq"].items():
            r[f"acc:{name}"] = m.get("acc")
            r[f"acc_norm:{name}"] = m.get("acc_norm")
        rows.append(r)
    extra = sorted({k for r in rows for k in r if ":" in k})
    return rows, RUN_FIELDS + extra


def render_markdown(analysis: dict, plots: dict[str, str], out_dir: str) -> str:
    o = analysis["options"]
    base = o["baseline_arm"]
    L = ["# Scaling and compute slowdown report", ""]
    L += [f"Compute: {o['compute']}; N = {o['N']}; D = {o['D']}.",
          f"Fits: least squares of ln L = a + b ln C over the `{base}` runs, per domain. Compute slowdown of a run f: "
          f"C_f / C_{base}(L_f), the ratio of its compute to the compute at which the `{base}` fit reaches its loss "
          "(> 1 on the forget domain: the domain was learned less; on retain/general it is the collateral cost, "
          "ideally ~1). *extrapolated* marks C_none(L_f) outside the compute range of the baseline runs.", ""]
    for w in analysis.get("warnings", []):
        L.append(f"> warning: {w}")
    if analysis.get("warnings"):
        L.append("")
    L += ["## Runs", "", "| run | arm | size | N | D | C (FLOPs) |", "|---|---|---|---|---|---|"]
    for t in analysis["runs"]:
        L.append(f"| {t['name']} | {t['arm']} | {t['size']} | {fmt_sci(t['N'])} | {fmt_sci(t['D'])} | "
                 f"{fmt_sci(t['compute'])} |")
    L.append("")
    for metric in o["metrics"]:
        doms = ordered_domains({d for t in analysis["runs"] for d in t["losses"].get(metric, {})})
        if not doms:
            continue
        L += [f"## {METRIC_LABEL[metric]}", "", "| run | arm | size | " + " | ".join(doms) + " |",
              "|---|---|---|" + "---|" * len(doms)]
        for t in analysis["runs"]:
            vals = [fmt_loss(t["losses"].get(metric, {}).get(d)) for d in doms]
            L.append(f"| {t['name']} | {t['arm']} | {t['size']} | " + " | ".join(vals) + " |")
        L += ["", "### Fits", "", "| domain | arm | a | b (95% CI) | R^2 | runs |", "|---|---|---|---|---|---|"]
        for dom in doms:
            for arm, f in analysis["fits"].get(metric, {}).get(dom, {}).items():
                ci = f.get("b_ci95")
                b = f"{f['b']:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
                L.append(f"| {dom} | {arm} | {f['a']:.4f} | {b} | {f['r2']:.4f} | {f['n']} |")
        rows = [s for s in analysis["slowdowns"] if s["metric"] == metric and s["arm"] != base]
        if rows:
            L += ["", "### Compute slowdown", "", "| domain | arm | size | run | L_f | C_f | C_none(L_f) | slowdown "
                  "(95% CI) | |", "|---|---|---|---|---|---|---|---|---|"]
            for s in rows:
                ci = s.get("slowdown_ci95")
                sd = fmt_ratio(s["slowdown"]) + (f" [{fmt_ratio(ci[0])}, {fmt_ratio(ci[1])}]" if ci else "")
                flag = f"extrapolated ({s['extrapolation']})" if s["extrapolation"] in ("below", "above") else (
                    s["extrapolation"] or "")
                L.append(f"| {s['domain']} | {s['arm']} | {s['size']} | {s['name']} | {fmt_loss(s['loss'])} | "
                         f"{fmt_sci(s['compute'])} | {fmt_sci(s['baseline_compute'])} | {sd} | {flag} |")
        L.append("")
        for key, title in (("loss_vs_compute", "Loss vs compute"), ("pareto", "Forget vs retain loss"),
                           ("slowdown_vs_size", "Compute slowdown vs size")):
            p = plots.get(f"{key}_{metric}")
            if p:
                L += [f"![{title} ({metric})]({os.path.relpath(p, out_dir)})", ""]
    mcq_sets = sorted({k for t in analysis["runs"] for k in t["mcq"]})
    if mcq_sets:
        L += ["## Multiple choice (acc_norm ± stderr; chance in the header)", "",
              "| run | arm | size | " + " | ".join(
                  f"{k} ({_chance(analysis, k)})" for k in mcq_sets) + " |", "|---|---|---|" + "---|" * len(mcq_sets)]
        for t in analysis["runs"]:
            cells = []
            for k in mcq_sets:
                m = t["mcq"].get(k)
                cells.append("n/a" if not m or m.get("acc_norm") is None else
                             f"{m['acc_norm']:.3f} ± {m.get('acc_norm_stderr') or 0:.3f}")
            L.append(f"| {t['name']} | {t['arm']} | {t['size']} | " + " | ".join(cells) + " |")
        L.append("")
    L += ["Numbers: `scaling.json` (everything), `slowdowns.csv`, `fits.csv`, `runs.csv`.", ""]
    return "\n".join(L)


def _chance(analysis, k):
    for t in analysis["runs"]:
        c = t["mcq"].get(k, {}).get("chance")
        if c is not None:
            return f"{c:.2f}"
    return "?"


def write_report(analysis: dict, out_dir: str) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = dict(plot_all(analysis, out_dir))
    files = {"json": "scaling.json", "slowdowns_csv": "slowdowns.csv", "fits_csv": "fits.csv", "runs_csv": "runs.csv",
             "report": "report.md"}
    paths.update({k: os.path.join(out_dir, v) for k, v in files.items()})
    run_rows, run_fields = _run_rows(analysis)
    texts = {"json": json.dumps(analysis, indent=1) + "\n",
             "slowdowns_csv": _csv(_slowdown_rows(analysis), SLOWDOWN_FIELDS),
             "fits_csv": _csv(_fit_rows(analysis), FIT_FIELDS), "runs_csv": _csv(run_rows, run_fields),
             "report": render_markdown(analysis, paths, out_dir)}
    for k, text in texts.items():  # the report last
        with atomic_write(paths[k], "w") as f:
            f.write(text)
    return paths
