"""The labelers tools/annotate.py can run, by name (`--labeler NAME`): one `LabelerSpec` per labeler.

    blocklist   terms file -> BlocklistLabeler (flags: AnnotateConfig's --terms, --plurals, --terms-split, ...)
    sae         SAE latents -> SAELabeler (flags: labeling/sae/config.py SAELabelerOptions)
    classifier  biLM classifier -> ClassifierLabeler (flags: labeling/classifier/config.py ClassifierOptions)

A spec gives the labeler's options dataclass (its flags are added to the parser in registry order; None: the labeler
needs only AnnotateConfig's flags), a builder (AnnotateConfig, tokenizer, options) -> TokenLabeler, and optional
hooks: extra summary lines after the run (the classifier's cost accounting) and the rewrite of the options for a
torchrun rank pinned to one GPU. Options dataclasses are loaded through light modules (no torch, no sae-lens); the
builders import their labeler lazily, so building the parser or a blocklist labeler imports neither.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .labeler import TokenLabeler

if TYPE_CHECKING:
    from .annotate import AnnotateConfig


@dataclass(frozen=True)
class LabelerSpec:
    """One labeler of `--labeler`."""

    name: str
    build: Callable[[AnnotateConfig, Any, Any], TokenLabeler]  # (cfg, tokenizer, options) -> labeler
    options: Callable[[], type] | None = None  # loads the options dataclass (its flags); None: no extra flags
    options_title: str | None = None  # the parser's group title for those flags
    # (cfg, labeler, options) -> lines appended to the run summary (rank 0 / single process)
    summary_lines: Callable[[AnnotateConfig, TokenLabeler, Any], list[str]] | None = None
    # (options, device) -> options for a torchrun rank pinned to `device` (cuda:K); None: a CPU labeler, which may
    # run several --workers on such a rank
    pin_device: Callable[[Any, str], Any] | None = None

    def options_class(self) -> type | None:
        return self.options() if self.options is not None else None


# ---- blocklist -----------------------------------------------------------------------------------------------------
def _build_blocklist(cfg: AnnotateConfig, tokenizer, options) -> TokenLabeler:
    if not cfg.terms:
        raise ValueError("--labeler blocklist needs --terms FILE")
    from .blocklist import BlocklistLabeler

    return BlocklistLabeler.from_file(cfg.terms, tokenizer, plurals=cfg.plurals, terms_split=cfg.terms_split,
                                      split_seed=cfg.split_seed)


# ---- sae -----------------------------------------------------------------------------------------------------------
def _sae_options() -> type:
    from .sae.config import SAELabelerOptions

    return SAELabelerOptions


def _build_sae(cfg: AnnotateConfig, tokenizer, options) -> TokenLabeler:
    from .sae.labeler import SAELabeler

    if options is None:
        raise ValueError("--labeler sae needs the SAE labeler options (--sae-reference-lm, --sae, --sae-latents)")
    return SAELabeler.from_options(options, tokenizer)


def _pin_sae(options, device: str):
    if options is not None and options.sae_device == "cuda":
        return dataclasses.replace(options, sae_device=device)
    return options


# ---- classifier ----------------------------------------------------------------------------------------------------
def _classifier_options() -> type:
    from .classifier.config import ClassifierOptions

    return ClassifierOptions


def _build_classifier(cfg: AnnotateConfig, tokenizer, options) -> TokenLabeler:
    from .classifier.labeler import ClassifierLabeler

    if options is None:
        raise ValueError("--labeler classifier needs --classifier DIR")
    labeler = ClassifierLabeler.from_options(options, cfg.workers)
    labeler.check_tokenizer(tokenizer)
    return labeler


def _classifier_cost_lines(cfg: AnnotateConfig, labeler, options) -> list[str]:
    import numpy as np

    from ..data.indexed_dataset import IndexedDataset
    from .classifier.cost import cost_lines

    lengths = np.diff(IndexedDataset(cfg.data_prefix).document_token_offsets())
    return cost_lines(labeler.cost(lengths), options.pretrain_params, options.pretrain_tokens)


def _pin_classifier(options, device: str):
    if options is not None and options.classifier_device in ("auto", "cuda"):
        return dataclasses.replace(options, classifier_device=device)
    return options


# ---- the registry --------------------------------------------------------------------------------------------------
REGISTRY: dict[str, LabelerSpec] = {s.name: s for s in (
    LabelerSpec("blocklist", _build_blocklist),
    LabelerSpec("sae", _build_sae, _sae_options, "SAE labeler (--labeler sae; docs/sae_labels.md)",
                pin_device=_pin_sae),
    LabelerSpec("classifier", _build_classifier, _classifier_options,
                "classifier labeler (--labeler classifier; docs/classifier.md)",
                summary_lines=_classifier_cost_lines, pin_device=_pin_classifier),
)}
LABELERS: tuple[str, ...] = tuple(REGISTRY)  # the choices of --labeler, in registry order


def labeler_spec(name: str) -> LabelerSpec:
    """The spec registered as `name`; ValueError listing the registered names when there is none."""
    spec = REGISTRY.get(name)
    if spec is None:
        raise ValueError(f"unknown --labeler {name!r}; expected one of {LABELERS}")
    return spec


def build_labeler(cfg: AnnotateConfig, tokenizer, options=None) -> TokenLabeler:
    """The labeler `cfg.labeler` for `tokenizer`; `options`: an instance of that labeler's options dataclass (e.g.
    a classifier.config.ClassifierOptions for --labeler classifier), None for labelers without one."""
    spec = labeler_spec(cfg.labeler)
    cls = spec.options_class()
    if options is not None and (cls is None or not isinstance(options, cls)):
        expected = cls.__name__ if cls is not None else "no options"
        raise ValueError(f"--labeler {cfg.labeler} takes {expected}, got {type(options).__name__}")
    return spec.build(cfg, tokenizer, options)


def add_labeler_args(parser) -> None:
    """Add every registered labeler's options flags to `parser`, one group each, in registry order."""
    from ..config.cli import add_dataclass_args

    for spec in REGISTRY.values():
        cls = spec.options_class()
        if cls is not None:
            add_dataclass_args(parser, cls, spec.options_title)


def options_from_args(name: str, args):
    """Labeler `name`'s options dataclass built from parsed `args` (None for labelers without one)."""
    from ..config.cli import dataclass_from_args

    cls = labeler_spec(name).options_class()
    return dataclass_from_args(cls, args) if cls is not None else None
