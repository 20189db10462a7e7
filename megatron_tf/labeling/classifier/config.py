"""Options of the classifier labeler (`tools/annotate.py --labeler classifier --classifier DIR`).

Free of heavy imports: tools/annotate.py builds its parser from these without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config.cli import opt


@dataclass
class ClassifierOptions:
    """biLM classifier labeler (--labeler classifier; docs/classifier.md)."""

    classifier: str | None = field(default=None, metadata=opt(
        "Classifier artifact directory (tools/train_classifier.py).", metavar="DIR"))
    classifier_device: str = field(default="auto", metadata=opt(
        "cpu, cuda (annotation worker k uses GPU k mod the GPU count), cuda:N, or auto (cuda when available)."))
    classifier_dtype: str = field(default="auto", metadata=opt(
        "LM compute dtype: bfloat16 (autocast; GPU), float32, or auto (bfloat16 on GPU, float32 on CPU).",
        choices=("auto", "float32", "bfloat16")))
    classifier_batch_tokens: int = field(default=16384, metadata=opt(
        "Padded positions per LM forward batch (windows of a group are batched longest first)."))
    classifier_group_tokens: int = field(default=65536, metadata=opt(
        "Tokens of whole documents whose features are held at once (memory: tokens x features x 4 bytes)."))
    classifier_threads: int | None = field(default=None, metadata=opt(
        "CPU threads per annotation process (default: CPU cores / --workers)."))
    classifier_calibration: str = field(default="balanced", metadata=opt(
        "Scores written: balanced (the probe's class-balanced probabilities, as trained) or natural (shifted to the "
        "training base rate stored in the artifact; probe.py).", choices=("balanced", "natural")))
    pretrain_params: float | None = field(default=None, metadata=opt(
        "Cost accounting: parameters N of the model whose pretraining data is being annotated (e.g. 1.8e9); the "
        "summary reports annotation FLOPs as a percentage of its pretraining FLOPs 6 N D."))
    pretrain_tokens: float | None = field(default=None, metadata=opt(
        "Cost accounting: pretraining tokens D (default: the tokens of the annotated dataset, one epoch)."))

    def __post_init__(self) -> None:
        if self.classifier_batch_tokens < 1 or self.classifier_group_tokens < 1:
            raise ValueError("--classifier-batch-tokens and --classifier-group-tokens must be >= 1")
        if self.classifier_threads is not None and self.classifier_threads < 1:
            raise ValueError(f"--classifier-threads must be >= 1, got {self.classifier_threads}")
        for name in ("pretrain_params", "pretrain_tokens"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {v}")
