"""Options of the SAE pipeline (flags of tools/sae_label.py, tools/annotate.py --labeler sae, tools/train_sae.py).

Kept free of heavy imports: tools/annotate.py builds its parser from these without importing torch or sae-lens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config.cli import opt


@dataclass
class ModelOptions:
    """Reference LM and SAE."""

    sae_reference_lm: str | None = field(default=None, metadata=opt(
        "Reference LM: a Hugging Face causal LM directory (config.json, weights, tokenizer.json), local files only.",
        metavar="DIR"))
    sae: str | None = field(default=None, metadata=opt(
        "SAE: a directory written by sae-lens / tools/train_sae.py, or RELEASE:SAE_ID from the local HF cache, e.g. "
        "gemma-scope-9b-pt-res-canonical:layer_31/width_16k/canonical.", metavar="SPEC"))
    sae_hook_layer: int | None = field(default=None, metadata=opt(
        "Block L whose output (residual stream after block L) the SAE reads; default: from the SAE's hook name "
        "blocks.L.hook_resid_post."))
    sae_context_size: int = field(default=1024, metadata=opt(
        "Reference-LM window length in tokens, BOS included (Gemma Scope SAEs were trained with 1024)."))
    sae_batch_size: int = field(default=8, metadata=opt("Windows per reference-LM forward pass."))
    sae_device: str = field(default="cpu", metadata=opt("Device for the reference LM and the SAE (cpu, cuda, cuda:1)."))
    sae_dtype: str = field(default="float32", metadata=opt(
        "Reference-LM weights dtype (float32, bfloat16, float16); the SAE runs in its own dtype.",
        choices=("float32", "bfloat16", "float16")))
    sae_bos: str = field(default="auto", metadata=opt(
        "Token put before every window and excluded from all statistics: auto (tokenizer BOS, else EOS), none, or "
        "an id."))
    sae_attn_implementation: str | None = field(default=None, metadata=opt(
        "Hugging Face attn_implementation (eager, sdpa); default: the model's."))


@dataclass
class RuleOptions:
    """The labeling rule."""

    sae_latents: str | None = field(default=None, metadata=opt(
        "Domain latents JSON (ids, descriptions, thresholds) from `sae_label.py select` or `thresholds`.",
        metavar="FILE"))
    sae_min_seed_latents: int = field(default=2, metadata=opt(
        "Seed: a token is forget if at least this many domain latents exceed their thresholds (m)."))

    def __post_init__(self) -> None:
        if self.sae_min_seed_latents < 1:
            raise ValueError(f"--sae-min-seed-latents must be >= 1, got {self.sae_min_seed_latents}")


@dataclass
class SAELabelerOptions(ModelOptions, RuleOptions):
    """SAE labeler (--labeler sae)."""
