"""The threshold frontier: all-token forget loss against all-token retain loss, one curve per filter type, each point
a filtered share (examples/threshold_sweep.sh; the paper's threshold figure at 521M).

A point is a group of the scaling analysis (scaling.py: runs sharing size and variant) whose runs state a filtered
share: the achieved share `run.tokens_filtered_fraction` (the fraction of training tokens the filter removed or
masked, as the trainer measured it) when the evaluation recorded it, else the nominal share the run was asked for
(`run.*filter_fraction`, or the run name's `-f<F>` suffix). The baseline (`none`) of the same size is the reference
point. A filter of a swept size without a stated share (e.g. the blocklist's token filters, whose 0/1 scores allow
one operating point) is shown as its single point, labelled "share not recorded". Right of the baseline: the forget
domain was learned less; above it: retain paid for it.
"""

from __future__ import annotations


def share_label(g: dict) -> str:
    """'4.8%' (achieved) or 'f=0.05 (nominal, from the run name)'; '' without a share."""
    if g.get("filtered_share") is not None:
        return f"{100 * g['filtered_share']:.1f}%"
    if g.get("target_share") is not None:
        return f"f={g['target_share']:g} (nominal, {g.get('share_source') or 'manifest'})"
    return ""


def frontier_rows(analysis: dict) -> list[dict]:
    """One row per group of every size that has a group with a filtered share (baseline included), ordered by size,
    arm and share; empty when no run states a share."""
    base = analysis["options"]["baseline_arm"]
    groups = analysis.get("groups", [])
    swept = [g for g in groups if g["arm"] != base and (g["target_share"] is not None or
                                                        g["filtered_share"] is not None)]
    if not swept:
        return []
    sizes = [s for s in analysis["sizes"] if any(g["size"] == s for g in swept)]
    rows = []
    for g in groups:  # every group of a swept size: a filter without a stated share is its one operating point
        if g["size"] not in sizes:
            continue
        loss = g["losses"].get("loss", {})
        share = g["filtered_share"] if g["filtered_share"] is not None else g["target_share"]
        kind = "achieved" if g["filtered_share"] is not None else "nominal" if g["target_share"] is not None else \
            "baseline" if g["arm"] == base else "not recorded"
        rows.append({"size": g["size"], "arm": g["arm"], "variant": g["variant"], "runs": g["runs"],
                     "share": 0.0 if g["arm"] == base else share, "share_kind": kind,
                     "share_label": "0%" if kind == "baseline" else (share_label(g) or "share not recorded"),
                     "tokens_seen": g.get("tokens_seen"), "tokens_learned": g.get("tokens_learned"),
                     "train_flops": g.get("train_flops"),
                     **{f"{d}_loss": (loss.get(d) or {}).get("loss") for d in ("forget", "retain", "general")},
                     **{f"{d}_delta": (loss.get(d) or {}).get("delta_vs_baseline") for d in ("forget", "retain")},
                     **{f"{d}_delta_ci95": (loss.get(d) or {}).get("delta_ci95") for d in ("forget", "retain")}})
    order = {a: i for i, a in enumerate(analysis["arms"])}
    rows.sort(key=lambda r: (sizes.index(r["size"]), order.get(r["arm"], 99), r["share"] is not None,
                             r["share"] or 0.0))
    return rows
