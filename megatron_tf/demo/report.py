"""The demo's comparison of arms: rows, text tables, plots and report.md (numbers straight from the eval JSON).

Headline order (issue 13, docs/evaluation.md): the all-token held-out losses (the paper's primary metric), then the
forget-domain token-level loss with labels the filter never used (the held-out half of the blocklist), then the
knowledge probe. The token-level loss with the filter's own labels is privileged (it only shows the model was not
trained on those tokens) and is printed apart, under that name. Compute: C = 6 N D with N = total parameters and D =
tokens seen (every token runs forward and backward, masked or not); the arms are matched on tokens learned.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

from ..utils.io import atomic_write

ROLES = ("forget", "retain", "general")
KNOWLEDGE = ("medical", "biology")


def delta_key(key: str) -> str:
    """The key of a loss's change against `none`: forget_loss -> forget_loss_delta (all-token, per domain),
    forget_token_level_loss -> forget_token_level_delta, forget_filter_labels_loss -> forget_filter_labels_delta."""
    stem = key[: -len("_loss")]
    return key + "_delta" if stem in ROLES else stem + "_delta"


def _token_level(entry: dict | None) -> float | None:
    return None if not entry else entry.get("nats_per_token")


def comparison_rows(results: dict[str, dict]) -> list[dict]:
    """One row per arm: compute, all-token losses per domain, the forget set's token-level loss with the
    evaluation's labels (and whether they are privileged), the same with the filter's labels, knowledge accuracy,
    MCQ acc_norm; every loss also as its change against `none`."""
    rows = []
    base = results.get("none")
    for arm, r in results.items():
        run = r["run"]
        n = r.get("model", {}).get("n_params")
        row = {"arm": arm, "tokens_seen": run.get("tokens_seen"), "tokens_learned": run.get("tokens_learned"),
               "train_flops": run.get("train_flops") or (6 * n * run["tokens_seen"] if n and run.get("tokens_seen")
                                                         else None),
               "train_tokens_count": run.get("train_tokens_count", "learned")}
        for role in ROLES:
            row[f"{role}_loss"] = r["loss"][role]["nats_per_token"]
        fl = r["loss"]["forget"].get("token_level") or {}
        row["forget_token_level_loss"] = fl.get("nats_per_token")
        row["forget_token_level_privileged"] = fl.get("privileged")
        row["forget_filter_labels_loss"] = _token_level((r.get("filter_label_losses") or {}).get("forget"))
        for dom in KNOWLEDGE:
            k = r.get("knowledge", {}).get(dom)
            row[f"knowledge_{dom}_acc"] = None if k is None else k["acc"]
            row[f"knowledge_{dom}_chance"] = None if k is None else k["chance"]
        for name, m in r.get("mcq", {}).items():
            row[f"mcq_{name}_acc_norm"] = m["acc_norm"]
        rows.append(row)
    if base is not None:
        b = next(x for x in rows if x["arm"] == "none")
        for row in rows:
            for key in [k for k in row if k.endswith("_loss")]:
                row[delta_key(key)] = None if row[key] is None or b.get(key) is None else row[key] - b[key]
    return rows


def _cell(row: dict, key: str, w: int, fmt: str = ".3f") -> str:
    v = row.get(key)
    if v is None:
        return f"{'n/a':>{w}}"
    d = row.get(delta_key(key)) if key.endswith("_loss") else None
    s = f"{v:{fmt}}" if row["arm"] == "none" or d is None else f"{v:{fmt}} ({d:+.2f})"
    return f"{s:>{w}}"


def format_comparison(rows: list[dict], eval_labels: str = "the evaluation's labels") -> str:
    """The headline table: compute per arm, all-token losses, independent token-level forget loss, knowledge."""
    w = 14
    lines = ["compute: C = 6 N D, N = total parameters, D = tokens seen; arms matched on tokens "
             f"{rows[0]['train_tokens_count'] if rows else 'learned'}",
             f"{'arm':<9} {'tokens seen':>12} {'tokens learned':>15} {'FLOPs':>10}"]
    for r in rows:
        flops = f"{r['train_flops']:.3g}" if r.get("train_flops") else "n/a"
        lines.append(f"{r['arm']:<9} {r['tokens_seen']:>12,} {r['tokens_learned']:>15,} {flops:>10}")
    priv = any(r.get("forget_token_level_privileged") for r in rows)
    lines += ["", "held-out loss, nats/token (change vs none). all-token: every token of the held-out text (the "
              "paper's primary metric);",
              f"forget tok: forget-set tokens labeled by {eval_labels}"
              + (" (PRIVILEGED: the filter's own labels)" if priv else ", labels the filter never used")
              + "; knowledge: probe cloze accuracy (chance in brackets)"]
    head = (f"{'arm':<9} | {'forget':>{w}} {'retain':>{w}} {'general':>{w}} | {'forget tok':>{w}} | "
            f"{'know. medical':>14} {'know. biology':>14}")
    lines += [head, "-" * len(head)]
    for r in rows:
        know = []
        for dom in KNOWLEDGE:
            acc, ch = r.get(f"knowledge_{dom}_acc"), r.get(f"knowledge_{dom}_chance")
            know.append(f"{'n/a':>14}" if acc is None else f"{f'{acc:.3f} ({ch:.2f})':>14}")
        lines.append(f"{r['arm']:<9} | " + " ".join(_cell(r, f"{role}_loss", w) for role in ROLES)
                     + f" | {_cell(r, 'forget_token_level_loss', w)} | " + " ".join(know))
    return "\n".join(lines)


def format_privileged(rows: list[dict], filter_labels: str) -> str | None:
    """The forget-set token-level loss with the filter's own labels: what the filter never trained on."""
    if not any(r.get("forget_filter_labels_loss") is not None for r in rows):
        return None
    lines = [f"PRIVILEGED (not a result): forget-set loss on the tokens {filter_labels} labels, the labels the "
             "training filters used;", "it shows the filtered arms were not trained on those tokens, nothing more."]
    lines += [f"{r['arm']:<9} {_cell(r, 'forget_filter_labels_loss', 16)}" for r in rows]
    return "\n".join(lines)


def plot_demo(results: dict[str, dict], curves: dict[str, list[dict]], out_dir: str) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arms = list(results)
    paths = {}
    panels = (("all", "held-out loss, all tokens (headline)",
               lambda r, role: r["loss"][role]["nats_per_token"], ROLES),
              ("token_level", "forget set, token-level loss (privileged = the filter's own labels)",
               None, ("independent labels", "filter's labels (privileged)")))
    for key, title, get, groups in panels:
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.8 / max(len(arms), 1)
        for i, arm in enumerate(arms):
            r = results[arm]
            if get is not None:
                vals = [get(r, role) for role in groups]
            else:
                vals = [_token_level(r["loss"]["forget"].get("token_level")) or np.nan,
                        _token_level((r.get("filter_label_losses") or {}).get("forget")) or np.nan]
            ax.bar(np.arange(len(groups)) + i * width, vals, width, label=arm)
        ax.set_xticks(np.arange(len(groups)) + width * (len(arms) - 1) / 2)
        ax.set_xticklabels(["forget (medical)", "retain (biology)", "general"] if get else list(groups))
        ax.set_ylabel("nats / token")
        ax.set_title(title, fontsize=10)
        finite = [p.get_height() for p in ax.patches if np.isfinite(p.get_height())]
        if finite:
            ax.set_ylim(bottom=max(0.0, min(finite) - 0.5))
        ax.legend()
        fig.tight_layout()
        paths[key] = os.path.join(out_dir, f"losses_{key}.png")
        fig.savefig(paths[key], dpi=120)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, rows in curves.items():
        if rows:
            ax.plot([r["tokens_learned"] for r in rows], [r["loss"] for r in rows], label=arm)
    ax.set_xlabel("learned tokens")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title("training curves")
    ax.legend()
    fig.tight_layout()
    paths["curves"] = os.path.join(out_dir, "training_curves.png")
    fig.savefig(paths["curves"], dpi=120)
    plt.close(fig)
    return paths


def write_report(out_dir: str, title: str, setup: list[str], filter_table: str, comparison: str,
                 privileged: str | None, rows: list[dict], results: dict[str, dict], plots: dict[str, str],
                 config) -> str:
    report_dir = os.path.join(out_dir, "report")
    mcq = []
    for arm, r in results.items():
        for name, m in r.get("mcq", {}).items():
            mcq.append(f"| {arm} | {name} | {m['acc']:.3f} ± {m['acc_stderr']:.3f} | {m['acc_norm']:.3f} | "
                       f"{m['chance']:.3f} | {m['n']} |")
    md = [f"# {title}", "", *setup, "",
          "## What the filters did to the training data", "", "```", filter_table, "```", "",
          "## Held-out losses and knowledge", "", "```", comparison, "```", "",
          *(["## Privileged (computed with the filter's labels)", "", "```", privileged, "```", ""] if privileged
            else []),
          f"![losses]({os.path.relpath(plots['all'], report_dir)})",
          f"![token-level]({os.path.relpath(plots['token_level'], report_dir)})",
          f"![curves]({os.path.relpath(plots['curves'], report_dir)})", "",
          "## Multiple choice (cloze, acc ± stderr, acc_norm, chance)", "",
          "| arm | set | acc | acc_norm | chance | n |", "|---|---|---|---|---|---|", *mcq, ""]
    path = os.path.join(report_dir, "report.md")
    with atomic_write(path, "w") as f:
        f.write("\n".join(md))
    with atomic_write(os.path.join(report_dir, "comparison.json"), "w") as f:
        json.dump({"config": asdict(config) if hasattr(config, "__dataclass_fields__") else config, "rows": rows},
                  f, indent=1)
    return path
