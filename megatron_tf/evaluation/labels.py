"""Which labels a token-level metric used, which labels the evaluated run filtered with, and whether they are the same
("privileged": the metric then measures "never trained on these token types", not generalisation). docs/evaluation.md,
"Evaluation labels".

A labels record is {"name": annotation name (None for a labeler run on the fly), "labeler": "blocklist" | "sae" |
"classifier" | ... (None when unknown), "spec": the parameters that define the labels}. The spec is the labeler's
describe() (as annotate stores it in every sidecar header's metadata, key "labeler") without the keys that describe
how it ran or are implied by the others (SPEC_IGNORED: file names, paths, devices, batch sizes, counts).

privileged(filter, eval):
    no filter labels (--token-filter none)                        -> False
    different labeler kinds                                       -> False
    blocklist, different terms files (terms_sha256)              -> False (terms shared by two different files are
                                                                    not detected: best effort)
    blocklist, same file: both split with the same seed and N and a different part K (--terms-split K/N) -> False,
                          anything else (no split on either side, other seed or N: the parts overlap) -> True
    classifier (the filter's or the evaluation's): the same spec -> True; otherwise its labels derive from its
                          teacher's (the labels it was trained on, config.json "teacher" in the spec): compared
                          through the teacher with these rules; teacher not recorded (an older artifact) -> None
    other labelers: same spec                                     -> True, else False
    filter labeler unknown (its sidecars were not found): True when the annotation names are equal (conservative),
                          else None (unknown).
The threshold is not part of the comparison: the same labeler at another threshold still marks mostly the same tokens.
"""

from __future__ import annotations

import os

from megatron_tf.data.blending import parse_blend
from megatron_tf.data.sidecar import KIND_DOC_SCORES, KIND_TOKEN_MASK, KIND_TOKEN_SCORES, read_header, sidecar_path
from megatron_tf.utils.logging import get_logger

log = get_logger(__name__)

SPEC_IGNORED = frozenset({
    "labeler", "terms_file", "num_terms", "num_terms_file", "case_insensitive", "match", "artifact", "device_type",
    "dtype", "batch_tokens", "group_tokens", "batch_size", "latents_file", "reference_lm", "rule"})


def labels_record(name: str | None, describe: dict | None, **extra) -> dict:
    """{"name", "labeler", "spec", **extra} from a labeler's describe() (None: unknown labeler; a bare string, as some
    hand-written sidecars carry: the labeler's name with an empty spec)."""
    if isinstance(describe, str):
        describe = {"labeler": describe}
    elif describe is not None and not isinstance(describe, dict):
        describe = {"labeler": str(describe)}
    d = describe or {}
    spec = {k: v for k, v in sorted(d.items()) if k not in SPEC_IGNORED} if describe is not None else None
    return {"name": name, "labeler": d.get("labeler"), "spec": spec, **extra}


def sidecar_labeler(prefix: str, name: str) -> tuple[dict | None, str | None]:
    """(labeler describe() from the first existing sidecar of annotation `name` beside `prefix`, its path)."""
    for kind in (KIND_TOKEN_MASK, KIND_TOKEN_SCORES, KIND_DOC_SCORES):
        path = sidecar_path(prefix, kind, name)
        if os.path.isfile(path):
            return read_header(path).metadata.get("labeler"), path
    return None, None


def _get(obj, *names):
    for n in names:
        obj = obj.get(n) if isinstance(obj, dict) else getattr(obj, n, None)
        if obj is None:
            return None
    return obj


def filter_labels_from_configs(configs) -> dict | None:
    """The labels a training run filtered with, from its saved configs (a Configs or its to_dict()): None for
    --token-filter none. The labeler and spec come from the sidecar headers of the run's training prefixes
    (--data-path or --train-data-path; relative paths as the run saw them); when none is found (moved data), labeler
    and spec are None and "note" says so. Prefixes annotated by different labelers give labeler "mixed" and the
    records under "per_prefix"."""
    mode = _get(configs, "filter", "token_filter")
    if mode in (None, "none"):
        return None
    name = _get(configs, "filter", "forget_sidecar_name") or "forget"
    threshold = _get(configs, "filter", "forget_threshold")
    blend = parse_blend(_get(configs, "data", "train_data_path") or _get(configs, "data", "data_path"))
    prefixes = blend[0] if blend else []
    found = {}
    for p in prefixes:
        desc, path = sidecar_labeler(p, name)
        if path is not None:
            found[p] = labels_record(name, desc)
    base = {"token_filter": mode, "threshold": threshold}
    if not found:
        return {**labels_record(name, None), **base,
                "note": f"no sidecar of annotation {name!r} found beside the training prefixes {prefixes}"}
    recs = list(found.values())
    if all(r == recs[0] for r in recs):
        return {**recs[0], **base}
    return {"name": name, "labeler": "mixed", "spec": None, **base, "per_prefix": found}


def _split(spec: dict) -> tuple[int, int, int] | None:
    s = spec.get("terms_split")
    if not s:
        return None
    k, n = (int(x) for x in str(s).split("/"))
    return k, n, int(spec.get("split_seed") or 0)


def _any(values) -> bool | None:
    """True if any is True, else None if any is None (unknown), else False."""
    vals = list(values)
    return True if any(v is True for v in vals) else (None if None in vals else False)


def _teacher(rec: dict) -> dict | None:
    """The labels record of a classifier record's teacher (its describe()'s "teacher", from the artifact's
    config.json), None when not recorded."""
    t = (rec.get("spec") or {}).get("teacher")
    if not isinstance(t, dict) or t.get("labeler") is None:
        return None
    if t["labeler"] == "mixed":
        per = {p: labels_record(t.get("name"), d) for p, d in (t.get("per_prefix") or {}).items()}
        return {"name": t.get("name"), "labeler": "mixed", "spec": None, "per_prefix": per, "per_path": per}
    return labels_record(t.get("name"), t["labeler"])


def _via_teacher(filter_labels: dict, eval_labels: dict) -> bool | None:
    """privileged() when either side is a classifier: the same classifier, else compared through the teacher."""
    if filter_labels["labeler"] == eval_labels.get("labeler") and \
            (filter_labels.get("spec") or {}) == (eval_labels.get("spec") or {}):
        return True
    if filter_labels["labeler"] == "classifier":
        t = _teacher(filter_labels)
        return None if t is None else privileged(t, eval_labels)
    t = _teacher(eval_labels)
    return None if t is None else privileged(filter_labels, t)


def privileged(filter_labels: dict | None, eval_labels: dict | None) -> bool | None:
    """Module docstring."""
    if not filter_labels or not eval_labels:
        return False
    if eval_labels.get("labeler") == "mixed":
        return _any(privileged(filter_labels, r) for r in eval_labels.get("per_path", {}).values())
    if filter_labels.get("labeler") is None:
        return True if filter_labels.get("name") == eval_labels.get("name") else None
    if filter_labels.get("labeler") == "mixed":
        return _any(privileged(r, eval_labels) for r in filter_labels.get("per_prefix", {}).values())
    if "classifier" in (filter_labels["labeler"], eval_labels.get("labeler")):
        return _via_teacher(filter_labels, eval_labels)
    if filter_labels["labeler"] != eval_labels.get("labeler"):
        return False
    fs, es = filter_labels.get("spec") or {}, eval_labels.get("spec") or {}
    if filter_labels["labeler"] == "blocklist":
        if fs.get("terms_sha256") != es.get("terms_sha256"):
            return False
        a, b = _split(fs), _split(es)
        return not (a and b and a[1:] == b[1:] and a[0] != b[0])
    return fs == es


def source_labels(source, sidecar_name: str) -> dict | None:
    """Labels record of one opened text source (text_sets.TextSource), None when it has no labels."""
    lab = source.labels
    if lab is None:
        return None
    if lab["source"] == "sidecar":
        desc = read_header(lab["path"]).metadata.get("labeler")
        return labels_record(sidecar_name, desc, threshold=lab["threshold"])
    return labels_record(None, lab.get("labeler"), threshold=lab["threshold"])


def set_labels(sources, sidecar_name: str) -> dict | None:
    """One record for a text set: its sources' common record, or labeler "mixed" with the records per path."""
    recs = [source_labels(s, sidecar_name) for s in sources]
    if recs[0] is None:
        return None
    if all(r == recs[0] for r in recs):
        return recs[0]
    return {"name": sidecar_name, "labeler": "mixed", "spec": None,
            "per_path": {s.path: r for s, r in zip(sources, recs)}}
