"""Demo, data stage: bundled corpus -> indexed datasets -> forget sidecars -> filtered samples, with a summary.

Uses only what ships in the repository (data/demo: three domains, held-out slices, the demo SentencePiece tokenizer
and the medical blocklist) and what the repository's own generator writes (the synthetic knowledge probe), so it runs
offline. Each domain gets its own prefix so the per-domain effect of every filter can be reported; training blends
the three training prefixes and the probe's two.

Labels (the held-out-terms protocol, docs/evaluation.md): the blocklist's terms are split in two halves by a seeded
hash (`--terms-split`). Half 1/2 labels every prefix as annotation `forget`: the labels the training filters use.
Half 2/2 labels the held-out prefixes as annotation `heldout_terms`: the token-level evaluation's labels, which the
filter never saw. A token-level loss computed with `forget` only shows that the model was not trained on those
tokens (the evaluation marks it privileged); one computed with `heldout_terms` measures generalisation beyond the
labeled tokens.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..data.builder import AllDocumentsFiltered, build_gpt_datasets
from ..data.config import FilterConfig, GPTDatasetConfig
from ..data.preprocess import PreprocessConfig, output_prefix_for, preprocess
from ..labeling.annotate import annotate, frac_column
from ..labeling.blocklist import BlocklistLabeler
from ..tokenizer.tokenizer import build_tokenizer
from ..utils.io import atomic_write
from ..utils.logging import get_logger

log = get_logger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_DIR = os.path.join(REPO, "data", "demo")
DOMAINS = ("medical", "biology", "general")
FILTER_MODES = ("none", "mask", "remove", "document")
FILTER_TERMS, EVAL_TERMS = "1/2", "2/2"  # blocklist halves: the filter's labels, the evaluation's labels
EVAL_LABELS = "heldout_terms"  # annotation name of the evaluation's labels
PROBE_DOMAINS = ("medical", "biology")  # the knowledge probe's forget and retain domains


@dataclass
class DemoData:
    out_dir: str
    tokenizer_model: str
    terms: str
    train: dict[str, str] = field(default_factory=dict)  # domain -> dataset prefix
    heldout: dict[str, str] = field(default_factory=dict)
    annotation: dict[str, str] = field(default_factory=dict)  # prefix -> summary text
    # the annotation the training filters read: "forget" (blocklist) or "cls" (the biLM classifier, --classifier)
    filter_name: str = "forget"
    terms_split: str | None = None  # the blocklist half that labels `forget` (None: every term)
    eval_labels: str | None = None  # the held-out half's annotation on the held-out prefixes (None: none made)
    probe_train: dict[str, str] = field(default_factory=dict)  # probe domain -> dataset prefix
    probe_test: str | None = None  # the probe's cloze questions (test.jsonl)

    @property
    def tokenizer_args(self) -> dict:
        return {"tokenizer_type": "SentencePieceTokenizer", "tokenizer_model": self.tokenizer_model}


def write_probe_files(out_dir: str, seed: int = 0) -> tuple[dict[str, str], str]:
    """The knowledge probe (evaluation/knowledge_probe.py, default options): its training documents split by
    domain into one JSONL file each, and the path of its cloze test. Deterministic in `seed`."""
    from ..evaluation.knowledge_probe import ProbeConfig, write_probe

    pdir = os.path.join(out_dir, "probe")
    test = os.path.join(pdir, "test.jsonl")
    files = {dom: os.path.join(pdir, f"train_{dom}.jsonl") for dom in PROBE_DOMAINS}
    if not (os.path.exists(test) and all(os.path.exists(f) for f in files.values())):
        write_probe(ProbeConfig(output=pdir, seed=seed))
        with open(os.path.join(pdir, "train.jsonl"), encoding="utf-8") as f:
            lines = f.read().splitlines(keepends=True)
        for dom, path in files.items():
            with atomic_write(path, "w") as f:
                f.writelines(line for line in lines if json.loads(line)["domain"] == dom)
    return files, test


def _annotate_once(prefix: str, name: str, labeler, tok, data: DemoData, progress: bool) -> None:
    if not os.path.exists(f"{prefix}.{name}.tokscores"):
        data.annotation[f"{prefix} ({name})"] = annotate(prefix, labeler, tok, name=name, progress=progress).format()


def prepare_demo_data(out_dir: str, demo_dir: str = DEMO_DIR, workers: int = 1,
                      domains: tuple[str, ...] = DOMAINS, progress: bool = True,
                      tokenizer_model: str | None = None, classifier: str | None = None,
                      terms_split: str | None = FILTER_TERMS, probe: bool = True, probe_seed: int = 0) -> DemoData:
    """Preprocess every demo file into its own prefix and annotate it with the blocklist labeler: annotation
    "forget" with the terms of `terms_split` (the filter's labels; None: every term) and, when `terms_split` is
    given, annotation "heldout_terms" of the held-out prefixes with the other half (EVAL_TERMS: the token-level
    evaluation's labels). `probe`: the knowledge probe's training documents become two more training prefixes
    (probe_medical, probe_biology), labeled like any text. With `classifier` (a biLM artifact,
    tools/train_classifier.py) every prefix is also annotated by it as "cls", and the training filters read "cls".

    Every step skips work whose outputs already exist and resumes interrupted work (their own guarantees).
    """
    if terms_split is not None and terms_split == EVAL_TERMS:
        raise ValueError(f"terms_split {terms_split!r} is the evaluation's half ({EVAL_TERMS}): the filter and the "
                         f"evaluation must use different halves")
    data = DemoData(out_dir, tokenizer_model or os.path.join(demo_dir, "tokenizer", "demo_sp.model"),
                    os.path.join(demo_dir, "medical_terms.txt"), terms_split=terms_split)
    tok = build_tokenizer(**data.tokenizer_args)
    labeler = BlocklistLabeler.from_file(data.terms, tok, terms_split=terms_split)
    held_labeler = BlocklistLabeler.from_file(data.terms, tok, terms_split=EVAL_TERMS) if terms_split else None
    os.makedirs(os.path.join(out_dir, "data"), exist_ok=True)
    sources = {("train", dom): [os.path.join(demo_dir, "train", f"{dom}.jsonl.xz")] for dom in domains}
    sources.update({("heldout", dom): [os.path.join(demo_dir, "heldout", f"{dom}.jsonl.xz")] for dom in domains})
    if probe:
        files, data.probe_test = write_probe_files(out_dir, probe_seed)
        sources.update({("probe", dom): [files[dom]] for dom in PROBE_DOMAINS})
    targets = {"train": data.train, "heldout": data.heldout, "probe": data.probe_train}
    for (split, dom), inputs in sources.items():
        base = os.path.join(out_dir, "data", f"{split}_{dom}")
        prefix = output_prefix_for(base, "text")
        if not os.path.exists(prefix + ".idx"):
            preprocess(PreprocessConfig(input=inputs, output_prefix=base, tokenizer_model=data.tokenizer_model,
                                        append_eod=True, workers=workers))
        _annotate_once(prefix, "forget", labeler, tok, data, progress)
        if held_labeler is not None and split == "heldout":
            _annotate_once(prefix, EVAL_LABELS, held_labeler, tok, data, progress)
            data.eval_labels = EVAL_LABELS
        targets[split][dom] = prefix
    if classifier:
        from ..labeling.classifier.labeler import ClassifierLabeler

        cls = ClassifierLabeler(classifier, device="auto")
        cls.check_tokenizer(tok)
        for target in (data.train, data.heldout, data.probe_train):
            for prefix in target.values():
                if not os.path.exists(prefix + ".cls.tokscores"):
                    data.annotation[prefix + " (cls)"] = annotate(prefix, cls, tok, name="cls",
                                                                   progress=progress).format()
        data.filter_name = "cls"
    return data


def doc_score_column(forget_threshold: float) -> str:
    """The demo's document score: the fraction of a document's tokens that are forget at the token threshold
    (frac_ge_T; for the blocklist's 0/1 scores the same as the mean score, for a classifier's probabilities not)."""
    return frac_column(forget_threshold)[0]


def training_prefixes(data: DemoData) -> dict[str, str]:
    """Every training component by display name: the three domains, then the probe's prefixes."""
    return {**data.train, **{f"probe_{dom}": p for dom, p in data.probe_train.items()}}


def filter_summary(data: DemoData, seq_length: int = 128, forget_threshold: float = 0.5,
                   document_threshold: float = 0.05, num_samples: int = 256, seed: int = 1234) -> list[dict]:
    """For each filter mode and training component: tokens seen, targets learned (loss_mask), inputs replaced by
    <|hidden|>, documents dropped, measured on `num_samples` real samples of that component's dataset."""
    tok = build_tokenizer(**data.tokenizer_args)
    rows = []
    for mode in FILTER_MODES:
        for dom, prefix in training_prefixes(data).items():
            fcfg = FilterConfig(token_filter=mode, forget_threshold=forget_threshold,
                                document_threshold=document_threshold, forget_sidecar_name=data.filter_name,
                                document_score_column=doc_score_column(forget_threshold))
            cfg = GPTDatasetConfig(data_path=[prefix], split="1,0,0", seq_length=seq_length, seed=seed,
                                   data_cache_path=os.path.join(data.out_dir, "cache"))
            try:
                ds = build_gpt_datasets(cfg, fcfg, tok, [num_samples, None, None]).train
            except AllDocumentsFiltered:  # the document filter removes this whole component
                rows.append({"mode": mode, "domain": dom, "samples": 0, "learned_fraction": 0.0,
                             "hidden_fraction": 0.0, "forget_input_fraction": float("nan"), "all_dropped": True})
                continue
            n = min(num_samples, len(ds))
            samples = [ds[i] for i in range(n)]
            loss = np.concatenate([s["loss_mask"] for s in samples])
            tokens = np.concatenate([s["tokens"] for s in samples])
            forget_in = np.concatenate([s["forget"] for s in samples])
            rows.append({
                "mode": mode, "domain": dom, "samples": n,
                "learned_fraction": float(loss.mean()),
                "hidden_fraction": float((tokens == tok.hidden).mean()),
                "forget_input_fraction": float(forget_in.mean()),
            })
    return rows


def matched_document_filter(data: DemoData, data_path: list[str], split: str, seq_length: int,
                            forget_threshold: float = 0.5) -> dict:
    """The demo's matched baseline. `token_share`: the share of the train split's tokens (every component pooled,
    as --document-filter-fraction counts them) whose token score is forget at `forget_threshold`, i.e. what
    `mask`/`remove` take out of the loss. The `document` arm drops that share of tokens (--document-filter-fraction
    token_share); `document_threshold` and `achieved_fraction` are what the builder resolves it to (the trainer
    resolves it again, identically, and logs it)."""
    tok = build_tokenizer(**data.tokenizer_args)
    cfg = GPTDatasetConfig(data_path=data_path, split=split, seq_length=seq_length, seed=1234,
                           data_cache_path=os.path.join(data.out_dir, "cache"))
    mask = FilterConfig(token_filter="mask", forget_threshold=forget_threshold, forget_sidecar_name=data.filter_name)
    share = float(build_gpt_datasets(cfg, mask, tok, [1, 1, 1]).stats["train"]["tokens_filtered_fraction"])
    doc = FilterConfig(token_filter="document", forget_threshold=forget_threshold,
                       forget_sidecar_name=data.filter_name, document_filter_fraction=share,
                       document_score_column=doc_score_column(forget_threshold))
    rec = build_gpt_datasets(cfg, doc, tok, [1, 1, 1]).stats["filter"]
    return {"token_share": share, "document_threshold": float(rec["document_threshold"]),
            "achieved_fraction": float(rec["achieved_fraction"])}


def format_filter_table(rows: list[dict]) -> str:
    lines = [f"{'filter':<9} {'component':<14} {'targets learned':>16} {'inputs hidden':>14} {'forget inputs':>14}"]
    for r in rows:
        if r.get("all_dropped"):
            lines.append(f"{r['mode']:<9} {r['domain']:<14} {'0.0%':>16} {'-':>14} {'-':>14}   "
                         "(every document dropped)")
            continue
        lines.append(f"{r['mode']:<9} {r['domain']:<14} {r['learned_fraction']:>16.1%} "
                     f"{r['hidden_fraction']:>14.1%} {r['forget_input_fraction']:>14.1%}")
    return "\n".join(lines)
