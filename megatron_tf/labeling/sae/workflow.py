"""The steps of tools/sae_label.py: select latents, compute thresholds, label datasets, report.

    select      domain vs other documents -> stats.npz, latents.json (top-k latents with thresholds), latents.html/.md
    thresholds  a given latent list (e.g. from Neuronpedia) + a reference sample -> the list with thresholds filled
    label       annotate datasets with the SAE labeler (sidecars, as tools/annotate.py --labeler sae) + report
    report      per-dataset forget fractions and highlighted sample documents, for any labeler's sidecars

Every step takes either the paths in its config (models loaded here) or ready `ref_lm` / `encoder` objects (tests).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ...config.cli import opt
from ...tokenizer.tokenizer import TOKENIZER_TYPES, build_tokenizer
from ...utils.io import atomic_write
from ...utils.logging import get_logger
from .config import ModelOptions, SAELabelerOptions
from .latents import read_latents, write_latents

log = get_logger(__name__)


@dataclass
class TokenizerOptions:
    """The training tokenizer (to decode indexed datasets)."""

    tokenizer_type: str | None = field(default=None, metadata=opt("Tokenizer the datasets were made with.",
                                                                  choices=TOKENIZER_TYPES))
    tokenizer_model: str | None = field(default=None, metadata=opt("Tokenizer model file."))
    vocab_size: int | None = field(default=None, metadata=opt("Vocabulary size (NullTokenizer only)."))

    def tokenizer(self):
        return build_tokenizer(self.tokenizer_type, self.tokenizer_model, self.vocab_size) if self.tokenizer_type \
            else None


@dataclass
class SampleOptions(TokenizerOptions):
    """Document samples."""

    json_key: str = field(default="text", metadata=opt("Text field of JSONL records."))
    max_docs: int | None = field(default=500, metadata=opt("Documents sampled per source (random, fixed seed)."))
    max_chars: int | None = field(default=20000, metadata=opt("Cut sampled documents to this many characters."))
    seed: int = field(default=0, metadata=opt("Sampling seed."))
    top_contexts: int = field(default=8, metadata=opt("Top-activating contexts kept per latent for the report."))
    progress: bool = field(default=True, metadata=opt("Show progress bars."))


@dataclass
class SelectConfig(ModelOptions, SampleOptions):
    """Choose domain latents contrastively from in-domain and out-of-domain documents."""

    domain: list[str] = field(default_factory=list, metadata=opt("In-domain sources (JSONL or dataset prefixes).",
                                                                 metavar="SRC"))
    other: list[str] = field(default_factory=list, metadata=opt("Out-of-domain sources.", metavar="SRC"))
    top_k: int = field(default=32, metadata=opt("Latents to keep."))
    min_freq: float = field(default=1e-3, metadata=opt("Minimum activation frequency on domain tokens."))
    min_ratio: float = field(default=2.0, metadata=opt("Minimum domain/other activation-frequency ratio."))
    threshold_k: float = field(default=4.0, metadata=opt("Threshold = mean + k std over the whole sample."))
    output_dir: str = field(default="", metadata=opt("Output directory.", metavar="DIR"))


@dataclass
class ThresholdsConfig(ModelOptions, SampleOptions):
    """Fill in the thresholds of a latent list: mean + k std over a reference sample."""

    sae_latents: str | None = field(default=None, metadata=opt("Input latent list JSON.", metavar="FILE"))
    reference: list[str] = field(default_factory=list, metadata=opt("Reference sample sources.", metavar="SRC"))
    threshold_k: float = field(default=4.0, metadata=opt("k in mean + k std."))
    overwrite: bool = field(default=False, metadata=opt("Recompute thresholds the list already has."))
    output_dir: str = field(default="", metadata=opt("Output directory (latents.json, stats.npz, latents.html).",
                                                     metavar="DIR"))


@dataclass
class ReportConfig(TokenizerOptions):
    """Per-dataset forget fractions and highlighted sample documents from sidecars."""

    data_prefix: list[str] = field(default_factory=list, metadata=opt("Annotated datasets (one per source corpus).",
                                                                      metavar="P"))
    name: str = field(default="forget", metadata=opt("Annotation name N (sidecars P.N.*)."))
    threshold: float = field(default=0.5, metadata=opt("Score threshold for 'forget'."))
    sample_docs: int = field(default=5, metadata=opt("Documents rendered per dataset."))
    seed: int = field(default=0, metadata=opt("Sampling seed for the rendered documents."))
    output_dir: str = field(default="", metadata=opt("Output directory (summary.json, labels.html).", metavar="DIR"))


@dataclass
class LabelConfig(SAELabelerOptions, ReportConfig):
    """Annotate datasets with the SAE labeler, then report."""

    workers: int = field(default=1, metadata=opt("Labeling processes (each loads its own models)."))
    chunk_docs: int = field(default=256, metadata=opt("Documents per chunk (unit of work and of resumption)."))
    write_mask_threshold: float | None = field(default=None, metadata=opt("Also write P.N.tokmask.", metavar="T"))
    restart: bool = field(default=False, metadata=opt("Discard an unfinished run with other settings."))
    progress: bool = field(default=True, metadata=opt("Show progress bars."))


# ---- model + sample helpers ------------------------------------------------------------------------------------
def open_models(o: ModelOptions, ref_lm=None, encoder=None):
    """(ref_lm, encoder) from the options unless given."""
    from .labeler import resolve_hook_layer

    if encoder is None:
        if not o.sae:
            raise ValueError("--sae is required")
        from .sae_io import load_sae

        encoder = load_sae(o.sae, device=o.sae_device)
    if ref_lm is None:
        if not o.sae_reference_lm:
            raise ValueError("--sae-reference-lm is required")
        from .reference_lm import load_reference_lm

        ref_lm = load_reference_lm(o.sae_reference_lm, resolve_hook_layer(o.sae_hook_layer, encoder),
                                   device=o.sae_device, dtype=o.sae_dtype, context_size=o.sae_context_size,
                                   attn_implementation=o.sae_attn_implementation, bos=o.sae_bos)
    return ref_lm, encoder


def scan_groups(pipeline, groups: dict[str, list[str]], s: SampleOptions, chunk: int = 16, progress: bool = True):
    """Sample each group's sources, run the SAE, accumulate LatentStats. Returns (stats, texts, ref offsets)."""
    from tqdm import tqdm

    from .documents import read_sample
    from .stats import LatentStats

    tok = s.tokenizer()
    stats = LatentStats(pipeline.d_sae, list(groups), s.top_contexts)
    texts, offsets = [], []
    for g, sources in enumerate(groups.values()):
        gtexts = [t for src in sources for t in read_sample(src, max_docs=s.max_docs, max_chars=s.max_chars,
                                                            seed=s.seed, key=s.json_key, tokenizer=tok)]
        if not gtexts:
            raise ValueError(f"group {list(groups)[g]!r}: no non-empty documents in {sources}")
        docs = pipeline.tokenize(gtexts)
        bar = tqdm(total=sum(d.ids.size for d in docs), unit="tok", unit_scale=True, disable=not progress,
                   desc=f"SAE stats {list(groups)[g]}")
        for i in range(0, len(docs), chunk):
            stats.scan(pipeline, g, docs[i : i + chunk], len(texts) + i)
            bar.update(sum(d.ids.size for d in docs[i : i + chunk]))
        bar.close()
        texts += gtexts
        offsets += [d.offsets for d in docs]
    return stats, texts, offsets


def context_activations(pipeline, ll, stats, texts: list[str]) -> dict:
    """{(latent, doc): activations of that latent on the doc's reference tokens} for the report's contexts."""
    need = sorted({d for x in ll.latents for _, d, _ in stats.top_occurrences(x.id)})
    if not need:
        return {}
    acts = pipeline.document_activations(pipeline.tokenize([texts[d] for d in need]), ll.ids)
    return {(x.id, d): acts[k][:, j] for k, d in enumerate(need) for j, x in enumerate(ll.latents)}


def _write_latent_outputs(out: str, ll, stats, pipeline, texts, offsets, title: str) -> dict:
    from .report import latent_report_html, latent_report_markdown

    os.makedirs(out, exist_ok=True)
    paths = {"latents": os.path.join(out, "latents.json"), "stats": os.path.join(out, "stats.npz"),
             "html": os.path.join(out, "latents.html"), "markdown": os.path.join(out, "latents.md")}
    write_latents(paths["latents"], ll)
    stats.save(paths["stats"])
    ctx = context_activations(pipeline, ll, stats, texts)
    with atomic_write(paths["html"], "w") as f:
        f.write(latent_report_html(ll, stats, texts, offsets, ctx, title))
    with atomic_write(paths["markdown"], "w") as f:
        f.write(latent_report_markdown(ll, stats, texts, offsets))
    return paths


def run_select(cfg: SelectConfig, ref_lm=None, encoder=None) -> dict:
    from .pipeline import LatentPipeline
    from .select import select_latents

    if not cfg.domain or not cfg.other:
        raise ValueError("select needs --domain and --other sources")
    if not cfg.output_dir:
        raise ValueError("--output-dir is required")
    ref_lm, encoder = open_models(cfg, ref_lm, encoder)
    pipe = LatentPipeline(ref_lm, encoder, cfg.sae_batch_size)
    stats, texts, offsets = scan_groups(pipe, {"domain": cfg.domain, "other": cfg.other}, cfg, progress=cfg.progress)
    ll, _ = select_latents(stats, cfg.top_k, cfg.min_freq, cfg.min_ratio, cfg.threshold_k)
    ll.header.update({"sae": cfg.sae, "reference_lm": cfg.sae_reference_lm, "hook_layer": ref_lm.layer,
                      "domain": cfg.domain, "other": cfg.other})
    if not ll.latents:
        raise ValueError(f"no latent fires on >= {cfg.min_freq} of domain tokens with a domain/other ratio >= "
                         f"{cfg.min_ratio}; lower --min-freq / --min-ratio or use more documents")
    return _write_latent_outputs(cfg.output_dir, ll, stats, pipe, texts, offsets, "Domain latents (contrastive)")


def run_thresholds(cfg: ThresholdsConfig, ref_lm=None, encoder=None) -> dict:
    from .pipeline import LatentPipeline
    from .select import fill_thresholds

    if not cfg.sae_latents or not cfg.reference or not cfg.output_dir:
        raise ValueError("thresholds needs --sae-latents, --reference and --output-dir")
    ll = read_latents(cfg.sae_latents)
    ref_lm, encoder = open_models(cfg, ref_lm, encoder)
    ll.check_range(int(encoder.d_sae))
    pipe = LatentPipeline(ref_lm, encoder, cfg.sae_batch_size)
    stats, texts, offsets = scan_groups(pipe, {"reference": cfg.reference}, cfg, progress=cfg.progress)
    fill_thresholds(ll, stats, cfg.threshold_k, cfg.overwrite)
    ll.header.update({"sae": cfg.sae, "reference_lm": cfg.sae_reference_lm, "hook_layer": ref_lm.layer,
                      "reference": cfg.reference})
    return _write_latent_outputs(cfg.output_dir, ll, stats, pipe, texts, offsets, "Domain latents")


def run_report(cfg: ReportConfig, tokenizer=None) -> dict:
    from .report import dataset_summary, labeled_documents_html, summary_html

    if not cfg.data_prefix or not cfg.output_dir:
        raise ValueError("report needs --data-prefix and --output-dir")
    tokenizer = tokenizer or cfg.tokenizer()
    if tokenizer is None:
        raise ValueError("--tokenizer-type is required (the tokenizer the datasets were made with)")
    summaries = [dataset_summary(p, cfg.name, cfg.threshold) for p in cfg.data_prefix]
    frags = [f for p in cfg.data_prefix for f in labeled_documents_html(p, tokenizer, cfg.name, cfg.threshold,
                                                                         cfg.sample_docs, seed=cfg.seed)]
    os.makedirs(cfg.output_dir, exist_ok=True)
    paths = {"summary": os.path.join(cfg.output_dir, "summary.json"),
             "html": os.path.join(cfg.output_dir, "labels.html")}
    with atomic_write(paths["summary"], "w") as f:
        json.dump(summaries, f, indent=1)
    with atomic_write(paths["html"], "w") as f:
        f.write(summary_html(summaries, frags, f"Token labels ({cfg.name})"))
    for s in summaries:
        log.info("%s: %.2f%% of %d tokens forget, %.1f%% of documents with any", s["name"],
                 100 * s["token_fraction"], s["num_tokens"], 100 * s["doc_fraction_any"])
    return {**paths, "summaries": summaries}


def run_label(cfg: LabelConfig, ref_lm=None, encoder=None) -> dict:
    from ..annotate import annotate
    from .labeler import SAELabeler

    if not cfg.data_prefix:
        raise ValueError("--data-prefix is required")
    tokenizer = cfg.tokenizer()
    if tokenizer is None:
        raise ValueError("--tokenizer-type is required (the tokenizer the datasets were made with)")
    if ref_lm is None and encoder is None:
        labeler = SAELabeler.from_options(cfg, tokenizer)
    else:
        labeler = SAELabeler(tokenizer.token_bytes_table(), read_latents(cfg.sae_latents),
                             min_seed_latents=cfg.sae_min_seed_latents, ref_lm=ref_lm, encoder=encoder,
                             batch_size=cfg.sae_batch_size)
    results = {}
    for p in cfg.data_prefix:
        s = annotate(p, labeler, tokenizer, name=cfg.name, write_mask_threshold=cfg.write_mask_threshold,
                     workers=cfg.workers, chunk_docs=cfg.chunk_docs, restart=cfg.restart, progress=cfg.progress)
        log.info("%s", s.format())
        results[p] = s
    out = {"annotate": results}
    if cfg.output_dir:
        out.update(run_report(cfg, tokenizer))
    return out

