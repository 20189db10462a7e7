"""PNG figures of a scaling analysis (megatron_tf.evaluation.scaling.analyze), with matplotlib's Agg backend.

- loss vs compute per domain (log-log), points per arm, the least-squares power law of each arm (baseline solid);
- forget loss vs retain loss (the trade-off; lower right is better for a filter), one point per run, the arms of one
  size joined by a grey line;
- compute slowdown vs model size (parameters N) per domain and filtered arm; hollow markers are extrapolated;
- the threshold frontier (frontier.py): all-token forget vs retain loss, one curve per filter type, points labelled
  by their filtered share, the baseline as a star; one panel per size.
Every figure names the compute convention (compute.py) and, for token-level losses, the label status.
Each function writes one PNG atomically and returns its path (None when the analysis lacks what the plot needs).
"""

from __future__ import annotations

import os

import numpy as np

from megatron_tf.utils.io import atomic_write

from .scaling import METRIC_LABEL, ordered_domains

ARM_COLORS = {"none": "black", "mask": "tab:blue", "remove": "tab:red", "document": "tab:green"}
EXTRA_COLORS = ("tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")  # arms not named above


def pyplot():
    """matplotlib.pyplot with the Agg backend (no display): every figure of the package is drawn through this."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def arm_color(arm: str, arms: list[str]) -> str:
    if arm in ARM_COLORS:
        return ARM_COLORS[arm]
    extra = [a for a in arms if a not in ARM_COLORS]
    return EXTRA_COLORS[extra.index(arm) % len(EXTRA_COLORS)] if arm in extra else "grey"


def _plain_y(ax) -> None:
    """Plain numbers (3.2, not 3.2x10^0) on a log y axis; minor ticks labelled when it spans under a decade."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    f = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(f)
    lo, hi = ax.get_ylim()
    ax.yaxis.set_minor_formatter(f if lo > 0 and hi / lo < 10 else NullFormatter())
    ax.tick_params(axis="y", which="minor", labelsize=7)


def _size_ticks(ax, xs: list[float]) -> None:
    """Major ticks at the sizes' x values, labelled 1.13M etc.; no minor labels (they collide under a decade)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.xaxis.set_major_locator(FixedLocator(xs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _human_n(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _human_n(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def save_figure(fig, path: str) -> str:
    """Write `fig` as a PNG (110 dpi, tight box) atomically to `path`, close it, return `path`."""
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return path


def _conv(analysis: dict) -> str:
    return analysis["compute_convention"]["name"]


def _conv_label(analysis: dict) -> str:
    return analysis["compute_labels"][_conv(analysis)]


def _metric_title(analysis: dict, metric: str) -> str:
    if metric != "token_loss":
        return METRIC_LABEL[metric]
    status = set(analysis.get("token_level", {}).values())
    tag = "independent labels" if status == {"independent"} else (
        "PRIVILEGED-UNKNOWN labels" if "unknown" in status and "privileged" not in status else
        "PRIVILEGED: the filter's own labels")
    return f"{METRIC_LABEL[metric]}, {tag}"


def _points(analysis: dict, metric: str, domain: str, arm: str):
    conv = _conv(analysis)
    return [(t["compute"][conv], t["losses"][metric][domain], t) for t in analysis["runs"]
            if t["arm"] == arm and domain in t["losses"].get(metric, {})]


def plot_loss_vs_compute(analysis: dict, metric: str, path: str) -> str | None:
    conv = _conv(analysis)
    fits = analysis["fits"].get(conv, {}).get(metric, {})
    domains = ordered_domains({d for t in analysis["runs"] for d in t["losses"].get(metric, {})})
    if not domains:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(domains), figsize=(4.8 * len(domains), 3.9), squeeze=False,
                             layout="constrained")
    base = analysis["options"]["baseline_arm"]
    for ax, dom in zip(axes[0], domains):
        cs = [t["compute"][conv] for t in analysis["runs"]]
        eq = [s["baseline_compute"] for s in analysis["slowdowns"]
              if s["metric"] == metric and s["domain"] == dom and s["baseline_compute"]]
        lo, hi = min(cs + eq), max(cs + eq)
        for arm in analysis["arms"]:
            pts = _points(analysis, metric, dom, arm)
            if not pts:
                continue
            color = arm_color(arm, analysis["arms"])
            ax.scatter([c for c, _, _ in pts], [v for _, v, _ in pts], color=color, label=arm, zorder=3, s=24)
            fit = fits.get(dom, {}).get(arm)
            if fit and arm == base:  # solid over the fitted runs' compute range, dotted where extrapolated
                for a_, b_, ls, label in ((min(lo, fit["c_min"]), fit["c_min"], ":", None),
                                          (fit["c_min"], fit["c_max"], "-", f"{arm} fit b={fit['b']:.3f}"),
                                          (fit["c_max"], max(hi, fit["c_max"]), ":", None)):
                    if b_ > a_:
                        grid = np.exp(np.linspace(np.log(a_), np.log(b_), 50))
                        ax.plot(grid, np.exp(fit["a"] + fit["b"] * np.log(grid)), color=color, ls=ls, lw=1.2,
                                label=label)
            elif fit:
                grid = np.exp(np.linspace(np.log(fit["c_min"]), np.log(fit["c_max"]), 50))
                ax.plot(grid, np.exp(fit["a"] + fit["b"] * np.log(grid)), color=color, ls="--", lw=1.0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_y(ax)
        from matplotlib.ticker import NullFormatter

        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide when C spans under a decade
        ax.set_xlabel(f"training compute (FLOPs), {_conv_label(analysis)}", fontsize=8)
        ax.set_ylabel(METRIC_LABEL[metric])
        ax.set_title(dom)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{_metric_title(analysis, metric)} vs compute")
    return save_figure(fig, path)


def plot_pareto(analysis: dict, metric: str, path: str, x_domain: str = "forget", y_domain: str = "retain"
                ) -> str | None:
    rows = [t for t in analysis["runs"] if {x_domain, y_domain} <= set(t["losses"].get(metric, {}))]
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.4), layout="constrained")
    for size in analysis["sizes"]:
        pts = [t for t in rows if t["size"] == size]
        if len(pts) > 1:
            order = sorted(pts, key=lambda t: t["losses"][metric][x_domain])
            ax.plot([t["losses"][metric][x_domain] for t in order], [t["losses"][metric][y_domain] for t in order],
                    color="grey", lw=0.8, alpha=0.6, zorder=1)
        for t in pts:
            ax.annotate(size, (t["losses"][metric][x_domain], t["losses"][metric][y_domain]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    for arm in analysis["arms"]:
        pts = [t for t in rows if t["arm"] == arm]
        if pts:
            ax.scatter([t["losses"][metric][x_domain] for t in pts], [t["losses"][metric][y_domain] for t in pts],
                       color=arm_color(arm, analysis["arms"]), label=arm, zorder=3, s=26)
    ax.set_xlabel(f"{x_domain} {METRIC_LABEL[metric]}  (higher: more removed)")
    ax.set_ylabel(f"{y_domain} {METRIC_LABEL[metric]}  (lower: better kept)")
    ax.set_title(f"{x_domain} vs {y_domain} per model size\n{_metric_title(analysis, metric)}\n(no compute axis; "
                 f"report convention {_conv_label(analysis)})", fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_slowdown_vs_size(analysis: dict, metric: str, path: str) -> str | None:
    base = analysis["options"]["baseline_arm"]
    rows = [s for s in analysis["slowdowns"] if s["metric"] == metric and s["arm"] != base and s["slowdown"]]
    if not rows:
        return None
    domains = ordered_domains({s["domain"] for s in rows})
    plt = pyplot()
    fig, axes = plt.subplots(1, len(domains), figsize=(4.8 * len(domains), 3.9), squeeze=False,
                             layout="constrained")
    for ax, dom in zip(axes[0], domains):
        for arm in analysis["arms"]:
            pts = sorted((s for s in rows if s["domain"] == dom and s["arm"] == arm),
                         key=lambda s: (s["N"] or s["compute"]))
            pts = [s for s in pts if s["variant"] == arm]
            if not pts:
                continue
            color = arm_color(arm, analysis["arms"])
            xs = [s["N"] or s["compute"] for s in pts]
            ax.plot(xs, [s["slowdown"] for s in pts], color=color, lw=1.2, label=arm)
            for x, s in zip(xs, pts):
                ax.scatter([x], [s["slowdown"]], s=28, zorder=3, color=color if not s["extrapolated"] else "white",
                           edgecolors=color)
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_y(ax)
        _size_ticks(ax, sorted({s["N"] or s["compute"] for s in rows}))
        ax.set_xlabel("parameters N" if all(s["N"] for s in rows) else "compute C")
        ax.set_ylabel("compute slowdown C_f / C_none(L_f)")
        ax.set_title(dom)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"compute slowdown, {_conv_label(analysis)}\n({_metric_title(analysis, metric)}; hollow = "
                 "extrapolated: loss outside the baseline's measured range)", fontsize=9)
    return save_figure(fig, path)


def plot_frontier(analysis: dict, path: str) -> str | None:
    """All-token forget loss (x) vs retain loss (y), one curve per filter type through its filtered shares, the
    baseline as a star; one panel per size."""
    rows = [r for r in analysis.get("frontier", []) if r["forget_loss"] is not None and r["retain_loss"] is not None]
    if not rows:
        return None
    base = analysis["options"]["baseline_arm"]
    sizes = [s for s in analysis["sizes"] if any(r["size"] == s for r in rows)]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.6 * len(sizes), 4.6), squeeze=False, layout="constrained")
    for ax, size in zip(axes[0], sizes):
        here = [r for r in rows if r["size"] == size]
        for r in (r for r in here if r["arm"] == base):
            ax.scatter([r["forget_loss"]], [r["retain_loss"]], marker="*", s=140, color=arm_color(base, []),
                       zorder=4, label=f"{base} (no filter)")
        for arm in [a for a in analysis["arms"] if a != base]:
            pts = sorted((r for r in here if r["arm"] == arm), key=lambda r: (r["share"] is not None, r["share"] or 0))
            if not pts:
                continue
            color = arm_color(arm, analysis["arms"])
            ax.plot([r["forget_loss"] for r in pts], [r["retain_loss"] for r in pts], "-o", color=color, lw=1.2,
                    ms=4, label=arm, zorder=3)
            for r in pts:
                ax.annotate(r["share_label"].split(" (")[0], (r["forget_loss"], r["retain_loss"]), fontsize=7,
                            xytext=(4, 3), textcoords="offset points", color=color)
        ax.set_xlabel("forget all-token loss (nats/token; right: more removed)")
        ax.set_ylabel("retain all-token loss (nats/token; lower: better kept)")
        ax.set_title(f"{size}; points: filtered share of training tokens (achieved %, or nominal f=)", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("threshold frontier: token vs document filtering (all-token loss; no compute axis; report "
                 f"convention {_conv_label(analysis)})", fontsize=9)
    return save_figure(fig, path)


def plot_all(analysis: dict, out_dir: str) -> dict[str, str]:
    """Every figure for every metric of the analysis: {key: path}."""
    os.makedirs(out_dir, exist_ok=True)
    out = {}
    for metric in analysis["options"]["metrics"]:
        for key, fn in (("loss_vs_compute", plot_loss_vs_compute), ("pareto", plot_pareto),
                        ("slowdown_vs_size", plot_slowdown_vs_size)):
            p = fn(analysis, metric, os.path.join(out_dir, f"{key}_{metric}.png"))
            if p:
                out[f"{key}_{metric}"] = p
    p = plot_frontier(analysis, os.path.join(out_dir, "frontier.png"))
    if p:
        out["frontier"] = p
    return out
