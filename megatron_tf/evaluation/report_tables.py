"""Markdown tables of the scaling report (report.py). Each returns a list of lines. Every comparison table carries
tokens seen, tokens learned and training FLOPs per row (group means over seeds), so the compute each arm spent is on
the page next to its numbers."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

from .scaling import ordered_domains


def csv_text(rows: list[dict], fields: list[str]) -> str:
    """CSV of `rows` in the columns `fields` (other keys ignored): None as empty, floats by repr (round-trip exact),
    "\n" line ends. The evaluation CSVs and the scaling report's CSVs are written by it."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else (repr(r[k]) if isinstance(r[k], float) else r[k]) for k in fields})
    return buf.getvalue()


def fmt_ratio(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.2f}" if x < 100 else f"{x:,.0f}"


def fmt_sci(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3e}"


def fmt_loss(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def fmt_count(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def _ci(ci, fmt) -> str:
    return f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""


def _delta(x: float | None, ci) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")


def _group_compute_cells(g: dict) -> str:
    return f"{fmt_count(g.get('tokens_seen'))} | {fmt_count(g.get('tokens_learned'))} | {fmt_sci(g.get('train_flops'))}"


def _groups_by_key(analysis: dict) -> dict[str, dict]:
    return {f"{g['size']} / {g['variant']}": g for g in analysis["groups"]}


def loss_table(analysis: dict, metric: str, pred: Callable[[dict], bool]) -> list[str]:
    """One row per group: loss and Δ vs the baseline of its size per domain, then tokens and FLOPs."""
    rows = [s for s in analysis["slowdowns"] if s["metric"] == metric and pred(s)]
    doms = ordered_domains({s["domain"] for s in rows})
    if not rows:
        return ["(no rows)"]
    groups = _groups_by_key(analysis)
    base = analysis["options"]["baseline_arm"]
    head = "| size | arm | runs | " + " | ".join(f"{d} | Δ {d} [95% CI]" for d in doms) + \
        " | tokens seen | tokens learned | train FLOPs |"
    L = [head, "|" + "---|" * (3 + 2 * len(doms) + 3)]
    for key in [k for k in groups if any(s["group"] == k for s in rows)]:
        g = groups[key]
        cells = []
        for d in doms:
            s = next((s for s in rows if s["group"] == key and s["domain"] == d), None)
            cells += ["n/a", "n/a"] if s is None else [
                fmt_loss(s["loss"]) + _ci(s["loss_ci95"], fmt_loss),
                "(baseline)" if g["variant"] == base else _delta(s["delta_vs_baseline"], s["delta_ci95"])]
        L.append(f"| {g['size']} | {g['variant']} | {len(g['runs'])} | " + " | ".join(cells) + " | "
                 + _group_compute_cells(g) + " |")
    return L


def _slowdown_cell(e: dict, extrapolated: bool) -> str:
    if e["slowdown"] is None:
        return "n/a" + (f" ({e['undefined']})" if e.get("undefined") else "")
    s = fmt_ratio(e["slowdown"]) + ("*" if extrapolated else "") + _ci(e.get("slowdown_ci95"), fmt_ratio)
    uf = e.get("undefined_fraction")
    if uf and uf > 0.05:
        s += f" (flat baseline fit in {100 * uf:.0f}% of resamples)"
    return s


def slowdown_table(analysis: dict, metric: str, pred: Callable[[dict], bool]) -> list[str]:
    """Slowdowns under every convention side by side; * and the last column mark extrapolations."""
    rows = [s for s in analysis["slowdowns"] if s["metric"] == metric and pred(s)]
    if not rows:
        return ["(no slowdowns: see the warnings)"]
    labels = analysis["compute_labels"]
    groups = _groups_by_key(analysis)
    head = "| domain | size | arm | L_f | " + " | ".join(f"slowdown ({labels[c]}) [95% CI]" for c in labels) + \
        " | tokens seen | tokens learned | train FLOPs | extrapolated |"
    L = [head, "|" + "---|" * (4 + len(labels) + 4)]
    for dom in ordered_domains({s["domain"] for s in rows}):
        for s in (s for s in rows if s["domain"] == dom):
            cells = [_slowdown_cell(s["by_convention"][c], s["extrapolated"]) for c in labels]
            L.append(f"| {dom} | {s['size']} | {s['variant']} | {fmt_loss(s['loss'])} | " + " | ".join(cells) +
                     " | " + _group_compute_cells(groups[s["group"]]) + " | " +
                     (f"**extrapolated** ({s['extrapolation']})" if s["extrapolated"] else "") + " |")
    L += ["", "`*` extrapolated: the loss lies outside the baseline runs' measured range on that domain."]
    return L


def runs_table(analysis: dict) -> list[str]:
    labels = analysis["compute_labels"]
    L = ["| run | arm | size | N total | N non-embedding | tokens seen | tokens learned | train FLOPs | matched | "
         "filtered share | " + " | ".join(f"C ({labels[c]})" for c in labels) + " |",
         "|" + "---|" * (10 + len(labels))]
    for t in analysis["runs"]:
        share = "" if t["filtered_share"] is None else f"{100 * t['filtered_share']:.2f}%"
        if t["target_share"] is not None:
            share += f" (asked {t['target_share']:g})"
        matched = t["train_tokens_count"] + ("" if t["train_tokens_count_recorded"] else " (assumed)")
        L.append(f"| {t['name']} | {t['arm']} | {t['size']} | {fmt_count(t['n_params'])} | "
                 f"{fmt_count(t['n_params_non_embedding'])} | {fmt_count(t['tokens_seen'])} | "
                 f"{fmt_count(t['tokens_learned'])} | {fmt_sci(t['train_flops'])} | {matched} | {share} | "
                 + " | ".join(fmt_sci(t["compute"][c]) + (" (given)" if t["compute_given"] else "") for c in labels)
                 + " |")
    return L


def fits_table(analysis: dict) -> list[str]:
    base = analysis["options"]["baseline_arm"]
    labels = analysis["compute_labels"]
    L = ["Baseline fits ln L = a + b ln C (every variant's fit: `fits.csv`).", "",
         "| convention | metric | domain | a | b (95% CI) | R^2 | sizes |", "|---|---|---|---|---|---|---|"]
    for conv, metrics in analysis["fits"].items():
        for metric, doms in metrics.items():
            for dom, variants in doms.items():
                f = variants.get(base)
                if not f:
                    continue
                ci = f.get("b_ci95")
                b = f"{f['b']:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
                L.append(f"| {labels[conv]} | {metric} | {dom} | {f['a']:.4f} | {b} | {f['r2']:.4f} | {f['n']} |")
    return L


def frontier_table(analysis: dict) -> list[str]:
    L = ["Achieved shares come from the evaluation's `run.tokens_filtered_fraction`; `nominal` marks the share the run "
         "asked for where the achieved one was not recorded.", "",
         "| size | filter | filtered share | forget loss | Δ forget [95% CI] | retain loss | Δ retain [95% CI] | "
         "general loss | tokens seen | tokens learned | train FLOPs |", "|" + "---|" * 11]
    for r in analysis["frontier"]:
        base = r["share_kind"] == "baseline"
        df, dr = ("(baseline)", "(baseline)") if base else (_delta(r["forget_delta"], r["forget_delta_ci95"]),
                                                            _delta(r["retain_delta"], r["retain_delta_ci95"]))
        L.append(f"| {r['size']} | {r['arm']} | {r['share_label']} | {fmt_loss(r['forget_loss'])} | "
                 f"{df} | {fmt_loss(r['retain_loss'])} | {dr} | {fmt_loss(r['general_loss'])} | "
                 f"{fmt_count(r['tokens_seen'])} | {fmt_count(r['tokens_learned'])} | {fmt_sci(r['train_flops'])} |")
    return L


def _chance(analysis, k):
    for t in analysis["runs"]:
        c = t["mcq"].get(k, {}).get("chance")
        if c is not None:
            return f"{c:.2f}"
    return "?"


def mcq_table(analysis: dict) -> list[str]:
    sets = sorted({k for t in analysis["runs"] for k in t["mcq"]})
    if not sets:
        return []
    L = ["## Multiple choice (acc_norm ± stderr; chance in the header)", "",
         "| run | arm | size | " + " | ".join(f"{k} ({_chance(analysis, k)})" for k in sets) + " |",
         "|---|---|---|" + "---|" * len(sets)]
    for t in analysis["runs"]:
        cells = []
        for k in sets:
            m = t["mcq"].get(k)
            cells.append("n/a" if not m or m.get("acc_norm") is None else
                         f"{m['acc_norm']:.3f} ± {m.get('acc_norm_stderr') or 0:.3f}")
        L.append(f"| {t['name']} | {t['arm']} | {t['size']} | " + " | ".join(cells) + " |")
    return L + [""]
