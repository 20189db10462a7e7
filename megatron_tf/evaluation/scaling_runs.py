"""Runs of a scaling report: one `RunRecord` per trained model, read from evaluation JSON (tools/evaluate.py, format
megatron_tf.eval/1, fields in docs/evaluation.md) and/or a run manifest.

What a record keeps beyond the point losses:
- `per_document` (metric -> domain -> (tokens, nats)) for the document bootstrap, `stderr` for the normal fallback;
- `privileged` (domain -> True / False / None) of the token-level loss: True when the evaluation labels are the
  filter's own labels (the JSON's `loss[set]["token_level"]["privileged"]`, else its `labels.privileged`); None when
  the JSON predates the labels block (privileged unknown; the old evaluations used the filter's labeler);
- the compute disclosure: `train_flops` (+ its convention), `train_tokens_count` ("learned" / "seen": which count the
  --train-tokens budget matched; None when not recorded, read as "learned", the trainer's default);
- filtered shares for the threshold frontier: `filtered_share` (achieved: `run.tokens_filtered_fraction`) and
  `target_share` (nominal: `run.filter_fraction` / `run.document_filter_fraction` / `run.token_filter_fraction`,
  else the run name's `-f<F>` suffix, e.g. `t2-remove-f0.05`, as examples/threshold_sweep.sh names its runs).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .compute import compute_of

METRICS = ("loss", "token_loss")
SHARE_IN_NAME = re.compile(r"-f(\d*\.?\d+)(?=$|[-_])")


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
    compute: float | None = None  # explicit C, used under every convention
    losses: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> domain -> nats/token
    mcq: dict[str, dict] = field(default_factory=dict)  # set -> {acc, acc_stderr, acc_norm, ...}
    source: str | None = None
    stderr: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> domain -> stderr
    per_document: dict[str, dict[str, tuple]] = field(default_factory=dict)  # metric -> domain -> (tokens, nats)
    privileged: dict[str, bool | None] = field(default_factory=dict)  # domain -> token-level privileged
    eval_labels: dict | None = None
    filter_labels: dict | None = None
    train_flops: float | None = None
    train_flops_convention: str | None = None
    train_tokens_count: str | None = None
    filtered_share: float | None = None
    target_share: float | None = None
    share_source: str | None = None

    def c(self, convention: str) -> float:
        if self.compute is not None:
            return float(self.compute)
        return compute_of(convention, n_total=self.n_params, n_non_embedding=self.n_params_non_embedding,
                          tokens_seen=self.tokens_seen, tokens_learned=self.tokens_learned,
                          where=f"run {self.name!r} ({self.source or 'manifest'})")


_RECORD_FIELDS = ("name", "arm", "size", "n_params", "n_params_non_embedding", "tokens_seen", "tokens_learned",
                  "compute", "losses", "mcq", "train_flops", "train_tokens_count", "filtered_share", "target_share")
_SHARE_KEYS = ("filter_fraction", "document_filter_fraction", "token_filter_fraction")


def _token_level_privileged(ev: dict, tl: dict) -> bool | None:
    if "privileged" in tl:
        return None if tl["privileged"] is None else bool(tl["privileged"])
    labels = ev.get("labels")
    if isinstance(labels, dict) and isinstance(labels.get("privileged"), bool):
        return labels["privileged"]
    return None


def _losses(ev: dict) -> tuple[dict, dict, dict, dict]:
    losses: dict[str, dict[str, float]] = {"loss": {}, "token_loss": {}}
    stderr: dict[str, dict[str, float]] = {"loss": {}, "token_loss": {}}
    docs: dict[str, dict[str, tuple]] = {"loss": {}, "token_loss": {}}
    privileged: dict[str, bool | None] = {}
    for dom, v in ev.get("loss", {}).items():
        pd = v.get("per_document") or {}
        if v.get("nats_per_token") is not None:
            losses["loss"][dom] = float(v["nats_per_token"])
            if v.get("nats_per_token_stderr") is not None:
                stderr["loss"][dom] = float(v["nats_per_token_stderr"])
            if pd.get("tokens") is not None and pd.get("nats") is not None:
                docs["loss"][dom] = (pd["tokens"], pd["nats"])
        tl = v.get("token_level")
        if tl and tl.get("nats_per_token") is not None:
            losses["token_loss"][dom] = float(tl["nats_per_token"])
            privileged[dom] = _token_level_privileged(ev, tl)
            if tl.get("nats_per_token_stderr") is not None:
                stderr["token_loss"][dom] = float(tl["nats_per_token_stderr"])
            if pd.get("token_level_tokens") is not None and pd.get("token_level_nats") is not None:
                docs["token_loss"][dom] = (pd["token_level_tokens"], pd["token_level_nats"])
    drop = [k for k, v in losses.items() if not v]
    return ({k: v for k, v in losses.items() if k not in drop}, {k: v for k, v in stderr.items() if v},
            {k: v for k, v in docs.items() if v}, privileged)


def _shares(run: dict, name: str | None) -> tuple[float | None, float | None, str | None]:
    achieved = run.get("tokens_filtered_fraction")
    target, src = None, None
    for k in _SHARE_KEYS:
        if run.get(k) is not None:
            target, src = float(run[k]), f"run.{k}"
            break
    if target is None and name:
        m = SHARE_IN_NAME.search(name)
        if m:
            target, src = float(m.group(1)), "run name"
    return (None if achieved is None else float(achieved)), target, src


def record_from_eval(ev: dict, source: str | None = None, overrides: dict | None = None) -> RunRecord:
    """A RunRecord from an evaluation JSON (tools/evaluate.py), with manifest fields overriding."""
    run, model = ev.get("run", {}), ev.get("model", {})
    losses, stderr, docs, privileged = _losses(ev)
    mcq = {k: {m: v.get(m) for m in ("n", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "chance", "p_correct")}
           for k, v in ev.get("mcq", {}).items()}
    name = run.get("name") or (os.path.splitext(os.path.basename(source))[0] if source else None)
    achieved, target, share_src = _shares(run, name)
    labels = ev.get("labels") if isinstance(ev.get("labels"), dict) else {}
    rec = dict(name=name, arm=run.get("arm"), size=run.get("size"),
               n_params=run.get("n_params", model.get("n_params")),
               n_params_non_embedding=run.get("n_params_non_embedding", model.get("n_params_non_embedding")),
               tokens_seen=run.get("tokens_seen"), tokens_learned=run.get("tokens_learned"),
               compute=run.get("compute"), losses=losses, mcq=mcq, train_flops=run.get("train_flops"),
               train_tokens_count=run.get("train_tokens_count"), filtered_share=achieved, target_share=target)
    rec.update({k: v for k, v in (overrides or {}).items() if k in _RECORD_FIELDS})
    r = RunRecord(**rec, source=source, stderr=stderr, per_document=docs, privileged=privileged,
                  eval_labels=labels.get("eval_labels"), filter_labels=labels.get("filter_labels"),
                  train_flops_convention=run.get("train_flops_convention"),
                  share_source="manifest" if overrides and "target_share" in overrides else share_src)
    return check_record(r)


def check_record(r: RunRecord) -> RunRecord:
    where = r.source or "manifest"
    if not r.name:
        raise ValueError(f"{where}: run has no name")
    if not r.arm:
        raise ValueError(f"{where}: run {r.name!r} has no arm (expected none / mask / remove / document or another "
                         "label); pass --arm to tools/evaluate.py or set 'arm' in the manifest")
    for k in ("n_params", "n_params_non_embedding", "tokens_seen", "tokens_learned", "compute", "train_flops"):
        v = getattr(r, k)
        if v is not None and (not isinstance(v, (int, float)) or not v > 0):
            raise ValueError(f"{where}: run {r.name!r}: {k} must be a positive number, found {v!r}")
    for k in ("filtered_share", "target_share"):
        v = getattr(r, k)
        if v is not None and not (isinstance(v, (int, float)) and 0 <= v <= 1):
            raise ValueError(f"{where}: run {r.name!r}: {k} must be a fraction in [0, 1], found {v!r}")
    if r.train_tokens_count not in (None, "learned", "seen"):
        raise ValueError(f"{where}: run {r.name!r}: train_tokens_count must be 'learned' or 'seen', found "
                         f"{r.train_tokens_count!r}")
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
            try:
                ev = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}: not valid JSON ({e})") from None
        out.append(record_from_eval(ev, p))
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
            out.append(check_record(RunRecord(**{k: e.get(k) for k in _RECORD_FIELDS if k in e}, source=where)))
    return out
