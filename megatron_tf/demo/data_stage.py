"""Demo, data stage: bundled corpus -> indexed datasets -> forget sidecars -> filtered samples, with a summary.

Uses only what ships in the repository (data/demo: three domains, held-out slices, the demo SentencePiece tokenizer
and the medical blocklist), so it runs offline. Each domain gets its own prefix so the per-domain effect of every
filter can be reported; training blends the three training prefixes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..data.builder import AllDocumentsFiltered, build_gpt_datasets
from ..data.config import FilterConfig, GPTDatasetConfig
from ..data.preprocess import PreprocessConfig, output_prefix_for, preprocess
from ..labeling.annotate import annotate, frac_column
from ..labeling.blocklist import BlocklistLabeler
from ..tokenizer.tokenizer import build_tokenizer
from ..utils.logging import get_logger

log = get_logger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_DIR = os.path.join(REPO, "data", "demo")
DOMAINS = ("medical", "biology", "general")
FILTER_MODES = ("none", "mask", "remove", "document")


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

    @property
    def tokenizer_args(self) -> dict:
        return {"tokenizer_type": "SentencePieceTokenizer", "tokenizer_model": self.tokenizer_model}


def prepare_demo_data(out_dir: str, demo_dir: str = DEMO_DIR, workers: int = 1,
                      domains: tuple[str, ...] = DOMAINS, progress: bool = True,
                      tokenizer_model: str | None = None, classifier: str | None = None) -> DemoData:
    """Preprocess every demo file into its own prefix and annotate it with the blocklist labeler (annotation
    "forget": the teacher labels, also used by the token-level evaluation). With `classifier` (a biLM artifact,
    tools/train_classifier.py) every prefix is also annotated by it as "cls", and the training filters read "cls".

    Both steps skip work whose outputs already exist and resume interrupted work (their own guarantees).
    """
    data = DemoData(out_dir, tokenizer_model or os.path.join(demo_dir, "tokenizer", "demo_sp.model"),
                    os.path.join(demo_dir, "medical_terms.txt"))
    tok = build_tokenizer(**data.tokenizer_args)
    labeler = BlocklistLabeler.from_file(data.terms, tok)
    os.makedirs(os.path.join(out_dir, "data"), exist_ok=True)
    for split, target in (("train", data.train), ("heldout", data.heldout)):
        for dom in domains:
            src = os.path.join(demo_dir, split, f"{dom}.jsonl.xz")
            base = os.path.join(out_dir, "data", f"{split}_{dom}")
            prefix = output_prefix_for(base, "text")
            if not os.path.exists(prefix + ".idx"):
                preprocess(PreprocessConfig(input=[src], output_prefix=base, tokenizer_model=data.tokenizer_model,
                                            append_eod=True, workers=workers))
            if not os.path.exists(prefix + ".forget.tokscores"):
                summary = annotate(prefix, labeler, tok, progress=progress)
                data.annotation[prefix] = summary.format()
            target[dom] = prefix
    if classifier:
        from ..classifier.labeler import ClassifierLabeler

        cls = ClassifierLabeler(classifier, device="auto")
        cls.check_tokenizer(tok)
        for target in (data.train, data.heldout):
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


def filter_summary(data: DemoData, seq_length: int = 128, forget_threshold: float = 0.5,
                   document_threshold: float = 0.05, num_samples: int = 256, seed: int = 1234) -> list[dict]:
    """For each filter mode and training domain: tokens seen, targets learned (loss_mask), inputs replaced by
    <|hidden|>, documents dropped, measured on `num_samples` real samples of that domain's dataset."""
    tok = build_tokenizer(**data.tokenizer_args)
    rows = []
    for mode in FILTER_MODES:
        for dom, prefix in data.train.items():
            fcfg = FilterConfig(token_filter=mode, forget_threshold=forget_threshold,
                                document_threshold=document_threshold, forget_sidecar_name=data.filter_name,
                                document_score_column=doc_score_column(forget_threshold))
            cfg = GPTDatasetConfig(data_path=[prefix], split="1,0,0", seq_length=seq_length, seed=seed,
                                   data_cache_path=os.path.join(data.out_dir, "cache"))
            try:
                ds = build_gpt_datasets(cfg, fcfg, tok, [num_samples, None, None]).train
            except AllDocumentsFiltered:  # the document filter removes this whole domain
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


def format_filter_table(rows: list[dict]) -> str:
    lines = [f"{'filter':<9} {'domain':<8} {'targets learned':>16} {'inputs hidden':>14} {'forget inputs':>14}"]
    for r in rows:
        if r.get("all_dropped"):
            lines.append(f"{r['mode']:<9} {r['domain']:<8} {'0.0%':>16} {'-':>14} {'-':>14}   (every document dropped)")
            continue
        lines.append(f"{r['mode']:<9} {r['domain']:<8} {r['learned_fraction']:>16.1%} {r['hidden_fraction']:>14.1%} "
                     f"{r['forget_input_fraction']:>14.1%}")
    return "\n".join(lines)
