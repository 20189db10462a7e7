"""tools/annotate.py: the command line of the annotation runner (flags, labeler construction, torchrun ranks).

The runner itself (chunks, worker pool, resume, merge into the sidecars P.N.tokscores / P.N.docscores / P.N.tokmask)
is labeling/annotate_runner.py; the labelers `--labeler` can name, their flags and how each is built are
labeling/registry.py; a torchrun rank's share is labeling/annotate_dist.py (docs/annotation.md). The runner's names
are re-exported here (`from megatron_tf.labeling.annotate import annotate, work_dir_for, ...`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config.cli import opt
from ..data.sidecar import quantize_threshold
from ..tokenizer.tokenizer import TOKENIZER_TYPES, build_tokenizer
from .annotate_runner import (
    AnnotateSummary,
    annotate,
    check_tokenizer,
    doc_columns,
    document_stats,
    frac_column,
    lock_path_for,
    missing_chunks,
    work_dir_for,
)
from .registry import LABELERS, add_labeler_args, build_labeler, labeler_spec, options_from_args

__all__ = ["LABELERS", "AnnotateConfig", "AnnotateSummary", "annotate", "build_labeler", "build_parser",
           "check_tokenizer", "doc_columns", "document_stats", "frac_column", "lock_path_for", "main",
           "missing_chunks", "run", "work_dir_for"]


@dataclass
class AnnotateConfig:
    """Annotate a dataset with forget scores (tools/annotate.py)."""

    data_prefix: str = field(default="", metadata=opt("Dataset prefix P (P.bin + P.idx)."))
    labeler: str = field(default="blocklist", metadata=opt("Token labeler.", choices=LABELERS))
    terms: str | None = field(default=None, metadata=opt("Blocklist terms file (one term per line).",
                                                          metavar="FILE"))
    plurals: bool = field(default=True, metadata=opt("Blocklist: terms also match with 's'/'es' appended."))
    terms_split: str | None = field(default=None, metadata=opt(
        "Blocklist: label with part K of N of the terms (held-out terms; blocklist.split_terms).", metavar="K/N"))
    split_seed: int = field(default=0, metadata=opt("Blocklist: seed of the --terms-split assignment."))
    tokenizer_type: str | None = field(default=None, metadata=opt("Tokenizer the dataset was made with.",
                                                                  choices=TOKENIZER_TYPES))
    tokenizer_model: str | None = field(default=None, metadata=opt("Tokenizer model file."))
    vocab_size: int | None = field(default=None, metadata=opt("Vocabulary size (NullTokenizer only)."))
    name: str = field(default="forget", metadata=opt("Annotation name N: sidecars are P.N.tokscores etc."))
    write_mask_threshold: float | None = field(default=None, metadata=opt(
        "Also write the packed bit mask P.N.tokmask of tokens with q >= ceil(255 T).", metavar="T"))
    doc_frac_threshold: float = field(default=0.5, metadata=opt(
        "Document column frac_ge_T: fraction of the document's tokens with q >= ceil(255 T).", metavar="T"))
    workers: int = field(default=1, metadata=opt("Labeling processes."))
    chunk_docs: int = field(default=1024, metadata=opt("Documents per chunk (unit of work and of resumption)."))
    restart: bool = field(default=False, metadata=opt(
        "Discard a work directory left by a run with different settings instead of failing."))
    progress: bool = field(default=True, metadata=opt("Show a progress bar."))
    merge_only: bool = field(default=False, metadata=opt(
        "Label nothing: merge the chunks of the work directory into the sidecars; refuse, naming them, when chunks "
        "are missing."))
    dist_timeout: float = field(default=600.0, metadata=opt(
        "Under torchrun: seconds to wait for a rank that has not joined or has stopped responding (died, node "
        "lost) before failing with its rank.", metavar="S"))

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if not self.dist_timeout > 0:
            raise ValueError(f"--dist-timeout must be > 0 seconds, got {self.dist_timeout}")
        if self.chunk_docs < 1:
            raise ValueError(f"--chunk-docs must be >= 1, got {self.chunk_docs}")
        quantize_threshold(self.doc_frac_threshold)
        if self.terms_split is not None:
            from .blocklist import parse_terms_split

            if self.labeler != "blocklist":
                raise ValueError(f"--terms-split needs --labeler blocklist, got --labeler {self.labeler}")
            parse_terms_split(self.terms_split)
        if self.write_mask_threshold is not None:
            quantize_threshold(self.write_mask_threshold)


def run(cfg: AnnotateConfig, options=None):
    """One process, or one rank of a torchrun job (RANK/WORLD_SIZE set; labeling/annotate_dist.py). `options`: the
    labeler's options dataclass (registry.LabelerSpec.options: a ClassifierOptions for --labeler classifier, a
    SAELabelerOptions for --labeler sae; None for the blocklist). Returns the AnnotateSummary (rank 0 and single
    processes) or annotate_dist.RankSummary (other ranks)."""
    if not cfg.data_prefix:
        raise ValueError("--data-prefix is required")
    if not cfg.tokenizer_type:
        raise ValueError("--tokenizer-type is required (the tokenizer the dataset was made with)")
    from ..utils.dist_work import WorkGroup, pin_device, rank_env

    env = rank_env()
    if not env.distributed:
        return _run_one(cfg, options)
    spec = labeler_spec(cfg.labeler)
    device = pin_device(env, "auto")  # GPU ranks: cuda:<LOCAL_RANK % device count>, made current
    if device != "cpu" and spec.pin_device is not None:
        if cfg.workers > 1:
            raise ValueError(f"--workers {cfg.workers} with --labeler {cfg.labeler} under torchrun: each rank has "
                             "one GPU; use one rank per GPU (--nproc-per-node) and --workers 1")
        options = spec.pin_device(options, device)
    with WorkGroup(env, cfg.dist_timeout, name="annotate") as group:
        from .annotate_dist import annotate_distributed

        tokenizer = build_tokenizer(cfg.tokenizer_type, cfg.tokenizer_model, cfg.vocab_size)
        labeler = build_labeler(cfg, tokenizer, options)
        summary = annotate_distributed(group, cfg.data_prefix, labeler, tokenizer, name=cfg.name,
                                       write_mask_threshold=cfg.write_mask_threshold,
                                       doc_frac_threshold=cfg.doc_frac_threshold, workers=cfg.workers,
                                       chunk_docs=cfg.chunk_docs, restart=cfg.restart, progress=cfg.progress,
                                       merge_only=cfg.merge_only)
    if env.rank == 0:
        _labeler_notes(cfg, summary, labeler, options)
    return summary


def _run_one(cfg: AnnotateConfig, options) -> AnnotateSummary:
    tokenizer = build_tokenizer(cfg.tokenizer_type, cfg.tokenizer_model, cfg.vocab_size)
    labeler = build_labeler(cfg, tokenizer, options)
    summary = annotate(cfg.data_prefix, labeler, tokenizer, name=cfg.name,
                       write_mask_threshold=cfg.write_mask_threshold, doc_frac_threshold=cfg.doc_frac_threshold,
                       workers=cfg.workers, chunk_docs=cfg.chunk_docs, restart=cfg.restart, progress=cfg.progress,
                       merge_only=cfg.merge_only)
    _labeler_notes(cfg, summary, labeler, options)
    return summary


def _labeler_notes(cfg: AnnotateConfig, summary: AnnotateSummary, labeler, options) -> None:
    """The labeler's own summary lines (registry.LabelerSpec.summary_lines: the classifier's cost accounting)."""
    spec = labeler_spec(cfg.labeler)
    if spec.summary_lines is not None:
        summary.notes += spec.summary_lines(cfg, labeler, options)


def build_parser():
    import argparse

    from ..config.cli import add_dataclass_args

    p = argparse.ArgumentParser(description="Label every token of a Megatron dataset and write forget sidecars.")
    add_dataclass_args(p, AnnotateConfig)
    add_labeler_args(p)  # each registered labeler's options, one group each (registry order)
    return p


def main(argv: list[str] | None = None) -> int:
    """tools/annotate.py: parse flags, run, print the summary. Errors in the inputs exit with status 2."""
    import sys

    from ..config.cli import dataclass_from_args
    from ..utils.dist_work import DistWorkError

    args = build_parser().parse_args(argv)
    try:
        cfg = dataclass_from_args(AnnotateConfig, args)
        summary = run(cfg, options_from_args(cfg.labeler, args))
    except (ValueError, OSError, ImportError) as e:  # OSError: unreadable input, disk full (the message names it)
        print(f"annotate: error: {e}", file=sys.stderr)
        return 2
    except DistWorkError as e:  # another rank failed, died or never joined (the message names it)
        print(f"annotate: error: {e}", file=sys.stderr)
        return 1
    print(summary.format())
    return 0
