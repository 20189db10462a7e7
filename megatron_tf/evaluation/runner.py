"""Evaluate one in-memory model: per-domain held-out losses and cloze multiple choice, as one JSON-able dict.

    from megatron_tf.evaluation import EvaluationConfig, evaluate_model, write_results
    cfg = EvaluationConfig(forget_text=["data/demo/heldout/medical.jsonl.xz"], mmlu="data/demo/eval/mmlu.jsonl.xz")
    result = evaluate_model(model, tokenizer, cfg, seq_length=256, run={"name": "tiny-none", "arm": "none"})
    write_results(result, "evals/")          # evals/tiny-none.json + .csv
    print(result["summary"])

`model` is a whole GPTModel (tensor parallel allowed: every TP rank calls evaluate_model with the same arguments;
pipeline stages must be merged first). Output format: docs/evaluation.md ("Evaluation JSON").
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field

import torch

from megatron_tf.config.cli import opt
from megatron_tf.model.flops import num_parameters
from megatron_tf.utils.io import atomic_write

from . import report_tables
from .domain_loss import evaluate_documents
from .eval_sets import MEDMCQA_EXCLUDED_SUBJECTS, MMLU_BIOLOGY_SUBJECTS, MMLU_MEDICAL_SUBJECTS, build_mcq_sets
from .labels import filter_labels_from_configs, privileged, set_labels
from .mcq import DELIMITER, PROMPT_TEMPLATE, evaluate_mcq
from .scoring import model_device
from .text_sets import TextSetSpec, iter_set_documents, open_text_set

FORMAT = "megatron_tf.eval/1"
TOKEN_LEVEL_SELECTION = {"forget": "forget_tokens", "retain": "unlabeled_tokens", "general": "unlabeled_tokens"}


@dataclass
class EvaluationConfig:
    """Held-out losses per domain and cloze multiple choice."""

    forget_text: list[str] | None = field(default=None, metadata=opt(
        "Held-out forget-domain (medical) texts: JSONL files or indexed dataset prefixes (one set)."))
    retain_text: list[str] | None = field(default=None, metadata=opt(
        "Held-out retain-domain (biology) texts: JSONL files or indexed dataset prefixes."))
    general_text: list[str] | None = field(default=None, metadata=opt(
        "Held-out general texts: JSONL files or indexed dataset prefixes."))
    eval_stride: int | None = field(default=None, metadata=opt(
        "Stride of the sliding loss windows (default seq_length // 2; seq_length = disjoint windows)."))
    append_eod: bool = field(default=True, metadata=opt(
        "Append <|endoftext|> to each JSONL document (as preprocessing with --append-eod), so it is scored too."))
    forget_threshold: float | None = field(default=None, metadata=opt(
        "Forget-label threshold for the token-level loss (default: a bit-mask sidecar's own threshold, else 0.5)."))
    forget_sidecar_name: str = field(default="forget", metadata=opt(
        "Annotation name N of the sidecars P.N.tokscores / P.N.tokmask beside indexed text sets (used when present; "
        "--eval-labels makes it required)."))
    eval_labels: str | None = field(default=None, metadata=opt(
        "Annotation name N whose sidecars label tokens for the token-level metrics (instead of "
        "--forget-sidecar-name); every text set path must then be an indexed prefix with P.N.tokmask or "
        "P.N.tokscores. Use labels other than the filter's (e.g. the other --terms-split half) for a "
        "non-privileged token-level metric.", metavar="NAME"))
    use_sidecars: bool = field(default=True, metadata=opt(
        "Take forget labels of indexed text sets from their sidecars when present."))
    blocklist: str | None = field(default=None, metadata=opt(
        "Blocklist terms file: label tokens on the fly (megatron_tf.labeling.BlocklistLabeler) where no sidecar "
        "gives labels, e.g. data/demo/medical_terms.txt."))
    blocklist_terms_split: str | None = field(default=None, metadata=opt(
        "On-the-fly --blocklist labels with part K of N of the terms (as tools/annotate.py --terms-split).",
        metavar="K/N"))
    blocklist_split_seed: int = field(default=0, metadata=opt("Seed of --blocklist-terms-split."))
    knowledge: str | None = field(default=None, metadata=opt(
        "Knowledge probe test file (tools/make_knowledge_probe.py DIR/test.jsonl): cloze accuracy per domain.",
        metavar="FILE"))
    mmlu: str | None = field(default=None, metadata=opt("MMLU JSONL (subject, question, choices, answer)."))
    medqa: str | None = field(default=None, metadata=opt("MedQA JSONL (question, options, answer_idx)."))
    medmcqa: str | None = field(default=None, metadata=opt("MedMCQA JSONL (subject, question, options, answer_idx)."))
    mmlu_forget_subjects: list[str] = field(default_factory=lambda: list(MMLU_MEDICAL_SUBJECTS), metadata=opt(
        "MMLU subjects of the forget set mmlu_medical."))
    mmlu_retain_subjects: list[str] = field(default_factory=lambda: list(MMLU_BIOLOGY_SUBJECTS), metadata=opt(
        "MMLU subjects of the retain set mmlu_biology."))
    mmlu_exclude_subjects: list[str] = field(default_factory=list, metadata=opt(
        "MMLU subjects left out of mmlu_other (the general control), e.g. nutrition human_aging."))
    medmcqa_exclude_subjects: list[str] = field(default_factory=lambda: list(MEDMCQA_EXCLUDED_SUBJECTS),
                                                metadata=opt("MedMCQA subjects left out."))
    limit: int | None = field(default=None, metadata=opt(
        "At most this many documents per text set (the first ones) and questions per multiple-choice set "
        "(a sha256-ordered sample)."))
    eval_micro_batch_size: int = field(default=8, metadata=opt("Sequences per forward pass."))
    bf16: bool = field(default=True, metadata=opt("bf16 autocast on CUDA (CPU always evaluates in fp32)."))

    def __post_init__(self):
        if self.eval_stride is not None and self.eval_stride < 1:
            raise ValueError(f"--eval-stride must be >= 1, got {self.eval_stride}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if self.eval_micro_batch_size < 1:
            raise ValueError(f"--eval-micro-batch-size must be >= 1, got {self.eval_micro_batch_size}")
        if self.forget_threshold is not None and not 0.0 < self.forget_threshold <= 1.0:
            raise ValueError(f"--forget-threshold must be in (0, 1], got {self.forget_threshold}")
        if self.eval_labels is not None and not self.eval_labels.strip():
            raise ValueError("--eval-labels needs an annotation name, got an empty string")
        if self.blocklist_terms_split is not None:
            from megatron_tf.labeling.blocklist import parse_terms_split

            parse_terms_split(self.blocklist_terms_split, "--blocklist-terms-split")
            if not self.blocklist:
                raise ValueError("--blocklist-terms-split needs --blocklist FILE")

    @property
    def labels_name(self) -> str:
        """The annotation name the token-level metrics read: --eval-labels, else --forget-sidecar-name."""
        return self.eval_labels or self.forget_sidecar_name

    def text_sets(self) -> list[TextSetSpec]:
        return [TextSetSpec(role, role, list(paths)) for role, paths in
                (("forget", self.forget_text), ("retain", self.retain_text), ("general", self.general_text)) if paths]


def model_info(model_config) -> dict:
    """Parameter counts (full model, TP = 1 vocabulary padding) and the architecture."""
    return {"n_params": num_parameters(model_config, 1, include_embedding=True),
            "n_params_non_embedding": num_parameters(model_config, 1, include_embedding=False),
            "config": model_config.to_dict()}


_META_KEYS = {
    "seq_length": ("seq_length",),
    "arm": ("token_filter",),
    "forget_threshold": ("forget_threshold",),
    "tokens_seen": ("tokens_seen", "consumed_tokens", "seen_tokens", "consumed_train_tokens"),
    "tokens_learned": ("tokens_learned", "learned_tokens", "consumed_learned_tokens"),
    "iteration": ("iteration",),
    "train_tokens_count": ("train_tokens_count",),
}
TRAIN_FLOPS_CONVENTION = ("6 * n_params * tokens_seen; n_params = all parameters including embeddings and the "
                          "output layer (model.n_params), tokens_seen = input tokens processed in training")


def _find(obj, names: tuple[str, ...], depth: int = 4):
    """First non-None value under one of `names`, breadth-first through nested dicts / objects with __dict__."""
    level = [obj]
    for _ in range(depth):
        nxt = []
        for o in level:
            d = o if isinstance(o, dict) else getattr(o, "__dict__", None)
            if not isinstance(d, dict):
                continue
            for n in names:
                if d.get(n) is not None:
                    return d[n]
            nxt.extend(v for v in d.values() if isinstance(v, dict) or hasattr(v, "__dict__"))
        level = nxt
    return None


def run_metadata_from_configs(configs) -> dict:
    """What the evaluation needs from a checkpoint's configs (megatron_tf.checkpoint.read_run(path).configs): a dict
    or object, searched by key name at any nesting level: seq_length, token_filter (-> arm), forget_threshold,
    tokens seen / learned and the iteration. Missing keys are left out."""
    out = {}
    for key, names in _META_KEYS.items():
        v = _find(configs, names)
        if v is not None and not callable(v):
            out[key] = v
    return out


def _labeler(cfg: EvaluationConfig, tokenizer):
    if not cfg.blocklist:
        return None
    from megatron_tf.labeling.blocklist import BlocklistLabeler

    return BlocklistLabeler.from_file(cfg.blocklist, tokenizer, terms_split=cfg.blocklist_terms_split,
                                      split_seed=cfg.blocklist_split_seed)


_NOT_GIVEN = object()


def evaluate_model(model: torch.nn.Module, tokenizer, cfg: EvaluationConfig, *, seq_length: int,
                   run: dict | None = None, progress: bool = False, predictions: bool = False,
                   train_configs=None, filter_labels=_NOT_GIVEN) -> dict:
    """All configured evaluations of one model (module docstring). `run`: metadata copied into the result (name,
    arm, size, tokens_seen, tokens_learned, checkpoint, ...). With predictions=True, per-question records are
    kept under result["predictions"][set]. `train_configs`: the evaluated run's saved configs
    (megatron_tf.checkpoint.read_run(path).configs), from which the filter's labels are read
    (labels.filter_labels_from_configs); or give `filter_labels` directly (a labels record, None: no filter).
    Without either, result["labels"]["filter_labels"] is None and "filter_labels_from" says "not given"."""
    t0 = time.time()
    run = dict(run or {})
    result: dict = {"format": FORMAT, "run": run}
    if getattr(model, "config", None) is not None:
        result["model"] = model_info(model.config)
        if run.get("tokens_seen") is not None and run.get("train_flops") is None:
            run["train_flops"] = 6.0 * result["model"]["n_params"] * float(run["tokens_seen"])
            run["train_flops_convention"] = TRAIN_FLOPS_CONVENTION
    if train_configs is not None and run.get("train_tokens_count") is None:
        # which count the run's --train-tokens budget matched; checkpoints older than the flag matched learned tokens
        run["train_tokens_count"] = run_metadata_from_configs(train_configs).get("train_tokens_count", "learned")
    result["tokenizer"] = tokenizer.describe()
    device = model_device(model)
    result["settings"] = {
        "seq_length": seq_length, "eval_stride": cfg.eval_stride if cfg.eval_stride else seq_length // 2,
        "precision": "bf16 autocast" if device.type == "cuda" and cfg.bf16 else str(next(
            model.parameters()).dtype).removeprefix("torch."),
        "device": str(device), "tensor_parallel_size": getattr(model, "tp_size", 1),
        "prompt": PROMPT_TEMPLATE + "{delimiter}{answer}", "delimiter": DELIMITER,
        "acc_norm": "log-likelihood / characters of the answer text (lm-eval acc_norm)",
        "config": asdict(cfg)}
    labeler = _labeler(cfg, tokenizer)
    if filter_labels is _NOT_GIVEN:
        filt, filt_from = (filter_labels_from_configs(train_configs), "train_configs") if train_configs is not None \
            else (None, "not given")
    else:
        filt, filt_from = filter_labels, "argument"
    result["labels"] = {"filter_labels": filt, "filter_labels_from": filt_from, "eval_labels": None,
                        "privileged": False}
    set_recs: dict[str, dict | None] = {}
    set_priv: dict[str, bool | None] = {}
    result["loss"] = {}
    for spec in cfg.text_sets():
        sources = open_text_set(spec, tokenizer, labeler=labeler, threshold=cfg.forget_threshold,
                                sidecar_name=cfg.labels_name, use_sidecar=cfg.use_sidecars,
                                append_eod=cfg.append_eod, require_sidecar=cfg.eval_labels is not None)
        metrics = evaluate_documents(model, iter_set_documents(sources, cfg.limit), seq_length=seq_length,
                                     start_id=tokenizer.eod, pad_id=tokenizer.pad, stride=cfg.eval_stride,
                                     batch_size=cfg.eval_micro_batch_size, bf16=cfg.bf16, progress=progress,
                                     desc=f"loss {spec.name}")
        per_doc = metrics.pop("per_document")
        entry = {"name": spec.name, "role": spec.role, "paths": spec.paths, **metrics,
                 "labels": [s.labels for s in sources] if sources[0].labels is not None else None}
        sel = TOKEN_LEVEL_SELECTION[spec.role]
        doc_arrays = {"tokens": per_doc["tokens"], "nats": per_doc["nats"]}
        if sel in metrics:
            rec = set_recs[spec.name] = set_labels(sources, cfg.labels_name)
            priv = set_priv[spec.name] = None if filt_from == "not given" else privileged(filt, rec)
            entry["token_level"] = {"selection": sel.removesuffix("_tokens"), **metrics[sel], "privileged": priv,
                                    "eval_labels": rec}
            doc_arrays.update(token_level_tokens=per_doc[sel], token_level_nats=per_doc[sel.replace("tokens", "nats")])
        entry["per_document"] = doc_arrays
        result["loss"][spec.name] = entry
    _eval_labels_summary(result["labels"], set_recs, set_priv)
    result["mcq"] = {}
    preds = {}
    mcq_sets = build_mcq_sets(cfg.mmlu, cfg.medqa, cfg.medmcqa, mmlu_forget_subjects=cfg.mmlu_forget_subjects,
                              mmlu_retain_subjects=cfg.mmlu_retain_subjects,
                              mmlu_exclude_subjects=cfg.mmlu_exclude_subjects,
                              medmcqa_exclude_subjects=cfg.medmcqa_exclude_subjects, limit=cfg.limit)
    for s in mcq_sets:
        metrics, scored = evaluate_mcq(model, tokenizer, s, seq_length=seq_length,
                                       batch_size=cfg.eval_micro_batch_size, bf16=cfg.bf16, progress=progress)
        result["mcq"][s.name] = metrics
        if predictions:
            preds[s.name] = scored
    if predictions:
        result["predictions"] = preds
    if cfg.knowledge:
        from .knowledge import evaluate_knowledge

        result["knowledge"] = evaluate_knowledge(model, tokenizer, cfg.knowledge, seq_length=seq_length,
                                                 batch_size=cfg.eval_micro_batch_size, bf16=cfg.bf16,
                                                 progress=progress)
    result["elapsed_s"] = round(time.time() - t0, 3)
    result["host"] = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.node()}
    result["summary"] = summary_line(result)
    return result


def _eval_labels_summary(labels: dict, per_set: dict[str, dict | None], priv: dict[str, bool | None]) -> None:
    """result["labels"]: eval_labels is the record every token-level metric shares (labeler "mixed" with the records
    under per_set when sets differ); privileged is true when any token-level metric is, None when unknown."""
    recs = [r for r in per_set.values() if r is not None]
    if recs and all(r == recs[0] for r in recs):
        labels["eval_labels"] = recs[0]
    elif recs:
        labels["eval_labels"] = {"name": recs[0].get("name"), "labeler": "mixed", "spec": None, "per_set": per_set}
    vals = list(priv.values())
    labels["privileged"] = True if any(v is True for v in vals) else (None if None in vals else False)


def _fmt(v, digits=3):
    return "n/a" if v is None else f"{v:.{digits}f}"


def summary_line(result: dict) -> str:
    """One line: run, losses per set (nats/token, token-level in brackets), accuracies (acc_norm)."""
    run = result.get("run", {})
    name = run.get("name") or "model"
    head = f"{name}" + (f" [{run['arm']}]" if run.get("arm") else "")
    parts = []
    for k, v in result.get("loss", {}).items():
        tl = v.get("token_level")
        mark = " privileged" if tl and tl.get("privileged") else ""
        parts.append(f"{k} {_fmt(v['nats_per_token'])}" + (
            f" ({tl['selection']} {_fmt(tl['nats_per_token'])}{mark})" if tl else ""))
    accs = [f"{k} {_fmt(v['acc'])}/{_fmt(v['acc_norm'])}" for k, v in result.get("mcq", {}).items()]
    know = [f"{k} {_fmt(v['acc'])} (chance {_fmt(v['chance'], 2)})" for k, v in result.get("knowledge", {}).items()]
    out = head
    if parts:
        out += " | loss nats/tok: " + ", ".join(parts)
    if accs:
        out += " | acc/acc_norm: " + ", ".join(accs)
    if know:
        out += " | knowledge acc: " + ", ".join(know)
    return out


CSV_FIELDS = ("run", "arm", "size", "kind", "set", "role", "metric", "value", "stderr", "n")


def result_rows(result: dict) -> list[dict]:
    """Long-format rows (CSV_FIELDS): one per (set, metric), so files of several models concatenate."""
    run = result.get("run", {})
    base = {"run": run.get("name", ""), "arm": run.get("arm", ""), "size": run.get("size", "")}
    rows = []
    for name, v in result.get("loss", {}).items():
        def row(metric, value, stderr=None, n=None, _name=name, _v=v):
            rows.append({**base, "kind": "loss", "set": _name, "role": _v["role"], "metric": metric, "value": value,
                         "stderr": stderr, "n": n})
        row("nats_per_token", v["nats_per_token"], v.get("nats_per_token_stderr"), v["tokens"])
        row("bits_per_byte", v.get("bits_per_byte"), None, v.get("bytes"))
        for part in ("forget_tokens", "unlabeled_tokens"):
            if part in v:
                row(f"{part}_nats_per_token", v[part]["nats_per_token"], None, v[part]["tokens"])
        if "token_level" in v:
            tl = v["token_level"]
            row("token_level_nats_per_token", tl["nats_per_token"], tl.get("nats_per_token_stderr"), tl["tokens"])
            row("token_level_privileged", tl.get("privileged"), None, tl["tokens"])
    for name, v in result.get("mcq", {}).items():
        for metric in ("acc", "acc_norm"):
            rows.append({**base, "kind": "mcq", "set": name, "role": v["role"], "metric": metric, "value": v[metric],
                         "stderr": v[f"{metric}_stderr"], "n": v["n"]})
        for metric in ("p_correct", "chance"):
            rows.append({**base, "kind": "mcq", "set": name, "role": v["role"], "metric": metric, "value": v[metric],
                         "stderr": None, "n": v["n"]})
    for name, v in result.get("knowledge", {}).items():
        for metric in ("acc", "acc_norm", "p_correct", "chance"):
            rows.append({**base, "kind": "knowledge", "set": name, "role": v.get("role", ""), "metric": metric,
                         "value": v.get(metric), "stderr": v.get(f"{metric}_stderr"), "n": v["n"]})
    return rows


def csv_text(rows: list[dict]) -> str:
    """The long-format evaluation CSV (CSV_FIELDS) of result_rows()."""
    return report_tables.csv_text(rows, CSV_FIELDS)


def write_results(result: dict, out_dir: str, name: str | None = None) -> tuple[str, str]:
    """Write <out_dir>/<name>.json and .csv atomically (name: result['run']['name'])."""
    name = name or result.get("run", {}).get("name") or "model"
    os.makedirs(out_dir, exist_ok=True)
    jpath, cpath = os.path.join(out_dir, f"{name}.json"), os.path.join(out_dir, f"{name}.csv")
    with atomic_write(cpath, "w") as f:
        f.write(csv_text(result_rows(result)))
    with atomic_write(jpath, "w") as f:  # the JSON last: its presence marks a finished evaluation (resume)
        json.dump(result, f, indent=1)
        f.write("\n")
    return jpath, cpath
