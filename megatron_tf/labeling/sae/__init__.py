"""Weak token labels from sparse-autoencoder latents (Rathi & Radford's labeling method; docs/sae_labels.md).

Modules (none imports sae-lens or transformers at import time):
    rule          the labeling rule on activations: thresholds, seeds, expansion to the fixpoint (numpy)
    transfer      document bytes <-> text with an exact byte map; reference-token -> training-token labels
    reference_lm  ReferenceLM adapters (Hugging Face directory; callable hook for megatron_tf checkpoints)
    sae_io        SAEs through sae-lens (from disk, or a pretrained release from the local cache)
    pipeline      texts -> BOS-prefixed windows -> residual after block L -> SAE activations
    stats/select  per-latent statistics; contrastive choice of domain latents (frequency ratio, AUROC)
    latents       the domain-latent list file (ids, descriptions, thresholds, scores)
    labeler       SAELabeler, a TokenLabeler for the annotation runner (tools/annotate.py --labeler sae)
    report        latent reports with top contexts; labeled-document HTML; per-dataset summaries
    train         small SAEs trained with sae-lens on a reference LM (tools/train_sae.py)
    workflow/cli  tools/sae_label.py select | thresholds | label | report
"""

from .config import SAELabelerOptions
from .latents import Latent, LatentList, read_latents, write_latents
from .rule import expand, label_tokens, seed_mask

__all__ = ["Latent", "LatentList", "SAELabelerOptions", "expand", "label_tokens", "read_latents", "seed_mask",
           "write_latents"]
