"""PNG curves of the finetuning sweep: forget loss vs attack tokens (mean over seeds), the baseline target dashed."""

from __future__ import annotations

from megatron_tf.evaluation.plots import ARM_COLORS, EXTRA_COLORS, pyplot, save_figure


def _color(i: int, name: str) -> str:
    return ARM_COLORS.get(name) or EXTRA_COLORS[i % len(EXTRA_COLORS)]


def plot_model_curves(res: dict, model: str, path: str) -> str | None:
    e = res["models"][model]
    items = [(d, k, v) for d, dd in e["data"].items() for k, v in dd["settings"].items()]
    if not items:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    cmap = plt.get_cmap("tab10")
    keys = sorted({k for _, k, _ in items})
    for d, k, v in items:
        c = v["mean_curve"]
        ax.plot(c["tokens"], c["forget_loss"], color=cmap(keys.index(k) % 10), ls="-" if d == "attack" else ":",
                marker="o", ms=2.5, label=f"{k} ({d})")
    ax.axhline(res["baseline_loss"], color="black", ls="--", lw=1, label=f"baseline {res['baseline']}")
    ax.set(xlabel="finetuning tokens", ylabel="held-out forget loss (nats/token)",
           title=f"{model}: attack (solid) vs benign control (dotted)")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_best_curves(res: dict, path: str) -> str | None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    drawn = False
    for i, (m, e) in enumerate(res["models"].items()):
        for d, ls in (("attack", "-"), ("benign", ":")):
            dd = e["data"].get(d)
            if not dd or not dd.get("best"):
                continue
            c = dd["settings"][dd["best"]]["mean_curve"]
            ax.plot(c["tokens"], c["forget_loss"], ls=ls, color=_color(i, e.get("arm") if not e.get("derived_from")
                                                                       else m), marker="o", ms=2.5,
                    label=f"{m} {d} ({dd['best']})")
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.axhline(res["baseline_loss"], color="grey", ls="--", lw=1, label=f"target: {res['baseline']} before attack")
    ax.set(xlabel="finetuning tokens", ylabel="held-out forget loss (nats/token)",
           title="best setting per model: forget-domain attack (solid), benign control (dotted)")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
