"""Train a small SAE with sae-lens on a reference LM's residual stream (tools/train_sae.py).

sae-lens's own runners load models and data from the Hugging Face hub; here the activations come from our
`ReferenceLM` (BOS excluded, same windows as labeling) and go straight into sae-lens's `SAETrainer`, which accepts
any iterator of [batch, d_in] tensors. The activations of `buffer_tokens` tokens are collected, shuffled with a fixed
seed and served in batches; the documents are cycled until `total_tokens` training samples have been used. The result
is saved with `save_inference_model` (cfg.json + sae_weights.safetensors) with the hook recorded in its metadata as
`blocks.L.hook_resid_post`, so `--sae DIR` finds its layer.

Meant for small reference LMs and small budgets (tests, the demo, a model trained here); for Gemma-2 use Gemma Scope.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from ...config.cli import opt
from ...utils.io import honour_umask
from ...utils.logging import get_logger
from .config import ModelOptions

log = get_logger(__name__)


@dataclass
class TrainSAEConfig(ModelOptions):
    """Train an SAE on the reference LM's residual stream after block L."""

    data: list[str] = field(default_factory=list, metadata=opt(
        "Training documents: JSONL files (.jsonl/.xz/.gz) or indexed dataset prefixes.", metavar="SRC"))
    json_key: str = field(default="text", metadata=opt("Text field of the JSONL records."))
    max_docs: int | None = field(default=None, metadata=opt("Use at most this many documents per source."))
    max_chars: int | None = field(default=20000, metadata=opt("Cut documents to this many characters."))
    architecture: str = field(default="standard", metadata=opt("SAE architecture.", choices=("standard", "topk")))
    d_sae: int = field(default=1024, metadata=opt("Number of latents."))
    topk: int = field(default=32, metadata=opt("Active latents per token (--architecture topk)."))
    l1_coefficient: float = field(default=5.0, metadata=opt("Sparsity penalty (--architecture standard)."))
    lr: float = field(default=3e-4, metadata=opt("Adam learning rate (constant)."))
    total_tokens: int = field(default=200_000, metadata=opt("Training samples (tokens) in total."))
    train_batch_tokens: int = field(default=1024, metadata=opt("Tokens per SAE training step."))
    buffer_tokens: int = field(default=65536, metadata=opt("Activations collected before shuffling."))
    normalize_activations: str = field(default="expected_average_only_in", metadata=opt(
        "sae-lens activation normalisation, folded into the weights after training: expected_average_only_in scales "
        "inputs to mean norm sqrt(d_in), so the defaults work whatever the model's residual scale (an SAE trained "
        "on a tiny random Llama with 'none' ended with every latent dead).",
        choices=("none", "expected_average_only_in")))
    seed: int = field(default=0, metadata=opt("Seed for the SAE initialisation, the sample and the shuffling."))
    output: str = field(default="", metadata=opt("Output directory (cfg.json + sae_weights.safetensors).",
                                                 metavar="DIR"))


class _Identity:
    """An 'encoder' that returns the residual itself: reuses the pipeline's windows to collect activations."""

    def __init__(self, d: int):
        self.d_in = self.d_sae = d

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


def activation_batches(pipeline, docs, batch: int, buffer_tokens: int, seed: int, device: str = "cpu",
                       doc_chunk: int = 16) -> Iterator[torch.Tensor]:
    """Endless iterator of [batch, d_model] float32 residual rows, shuffled within buffers, cycling over `docs`."""
    if not any(d.ids.size for d in docs):
        raise ValueError("no reference tokens in the training documents")
    gen = torch.Generator().manual_seed(seed)
    buf: list[torch.Tensor] = []
    n = 0
    while True:
        for i in range(0, len(docs), doc_chunk):
            for rb in pipeline.iter_rows(docs[i : i + doc_chunk]):
                buf.append(rb.acts.float().cpu())
                n += rb.acts.shape[0]
            if n >= buffer_tokens:
                x = torch.cat(buf)
                x = x[torch.randperm(x.shape[0], generator=gen)]
                full = x.shape[0] // batch * batch
                for b in range(0, full, batch):
                    yield x[b : b + batch].to(device)
                buf, n = [x[full:]], x.shape[0] - full


def train_sae(cfg: TrainSAEConfig, ref_lm=None):
    """Train and save; returns the trained sae-lens SAE. `ref_lm`: an already opened ReferenceLM (else loaded)."""
    from .documents import read_sample
    from .pipeline import LatentPipeline
    from .sae_io import import_sae_lens

    sl = import_sae_lens()
    from sae_lens.config import SAETrainerConfig

    if not cfg.output:
        raise ValueError("--output DIR is required")
    if not cfg.data:
        raise ValueError("--data needs at least one source")
    if ref_lm is None:
        from .reference_lm import load_reference_lm

        if not cfg.sae_reference_lm or cfg.sae_hook_layer is None:
            raise ValueError("--sae-reference-lm and --sae-hook-layer are required")
        ref_lm = load_reference_lm(cfg.sae_reference_lm, cfg.sae_hook_layer, device=cfg.sae_device,
                                   dtype=cfg.sae_dtype, context_size=cfg.sae_context_size,
                                   attn_implementation=cfg.sae_attn_implementation, bos=cfg.sae_bos)
    texts = [t for src in cfg.data for t in read_sample(src, max_docs=cfg.max_docs, max_chars=cfg.max_chars,
                                                          seed=cfg.seed, key=cfg.json_key)]
    pipe = LatentPipeline(ref_lm, _Identity(ref_lm.d_model), cfg.sae_batch_size)
    docs = pipe.tokenize(texts)
    log.info("training a %s SAE (%d latents) on block %d of %s: %d documents, %d reference tokens, %d samples",
             cfg.architecture, cfg.d_sae, ref_lm.layer, cfg.sae_reference_lm or "the given model", len(docs),
             sum(d.ids.size for d in docs), cfg.total_tokens)
    torch.manual_seed(cfg.seed)
    common = {"d_in": int(ref_lm.d_model), "d_sae": cfg.d_sae, "device": cfg.sae_device,
              "normalize_activations": cfg.normalize_activations}
    if cfg.architecture == "topk":
        sae = sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(k=cfg.topk, **common))
    else:
        sae = sl.StandardTrainingSAE(sl.StandardTrainingSAEConfig(l1_coefficient=cfg.l1_coefficient, **common))
    tcfg = SAETrainerConfig(total_training_samples=cfg.total_tokens, train_batch_size_samples=cfg.train_batch_tokens,
                            lr=cfg.lr, lr_end=cfg.lr, device=cfg.sae_device,
                            n_batches_for_norm_estimate=min(100, max(1, cfg.buffer_tokens // cfg.train_batch_tokens)))
    data = activation_batches(pipe, docs, cfg.train_batch_tokens, cfg.buffer_tokens, cfg.seed, cfg.sae_device)
    trained = sl.SAETrainer(tcfg, sae, data).fit()
    md = trained.cfg.metadata
    md.hook_name = f"blocks.{ref_lm.layer}.hook_resid_post"
    md.model_name = os.path.abspath(cfg.sae_reference_lm) if cfg.sae_reference_lm else "given"
    md.context_size = int(ref_lm.context_size)
    md.prepend_bos = ref_lm.bos_id is not None
    tmp = cfg.output.rstrip("/") + ".tmp-train"
    trained.save_inference_model(tmp)
    honour_umask(tmp)  # safetensors writes 0600: give the files the umask's modes (issue 14, item 12)
    if os.path.isdir(cfg.output):
        import shutil

        shutil.rmtree(cfg.output)
    os.replace(tmp, cfg.output)
    log.info("saved the SAE to %s (l0 %.1f, dead latents %s)", cfg.output, md.l0 or float("nan"),
             md.num_dead_features)
    return trained
