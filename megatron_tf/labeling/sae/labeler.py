"""`SAELabeler`: the paper's SAE labeling rule as a `TokenLabeler` for the annotation runner (scores in {0, 1}).

Per batch of training documents (token ids from an indexed dataset):
1. decode each document with the training tokenizer's byte table -> bytes + per-token byte spans, then to text with
   an exact character -> byte map (transfer.document_text);
2. tokenize the text with the reference LM's tokenizer (character spans), run the reference LM in BOS-prefixed
   windows, read the residual stream after block L, encode it with the SAE, keep the domain latents (pipeline.py);
3. apply the rule (rule.py: thresholds, seeds with >= m latents over threshold, expansion through active tokens);
4. transfer: a training token is forget iff its bytes overlap a forget reference token's characters (transfer.py).

The reference LM and the SAE are loaded lazily on first use and are not pickled: annotation workers load their own.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from ..token_text import TokenBytes
from .config import SAELabelerOptions
from .latents import LatentList, read_latents
from .rule import label_tokens
from .transfer import document_text, transfer_labels


def _config_sha(path: str) -> str | None:
    f = os.path.join(path, "config.json")
    if not os.path.isfile(f):
        return None
    with open(f, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


class SAELabeler:
    name = "sae"

    def __init__(self, token_bytes: TokenBytes | list[bytes], latents: LatentList, *, min_seed_latents: int = 2,
                 options: SAELabelerOptions | None = None, ref_lm=None, encoder=None, batch_size: int = 8):
        """Either `options` (paths: loaded lazily, picklable) or ready `ref_lm` and `encoder` objects (tests)."""
        self.token_bytes = token_bytes if isinstance(token_bytes, TokenBytes) else TokenBytes(token_bytes)
        self.latents = latents
        self.latent_ids = latents.ids
        self.thresholds = latents.thresholds()
        self.min_seed_latents = int(min_seed_latents)
        if self.min_seed_latents < 1:
            raise ValueError(f"min_seed_latents must be >= 1, got {min_seed_latents}")
        if options is None and (ref_lm is None or encoder is None):
            raise ValueError("SAELabeler needs options (paths) or both ref_lm and encoder")
        self.options = options
        self.batch_size = options.sae_batch_size if options is not None else int(batch_size)
        self._ref_lm, self._encoder = ref_lm, encoder
        self._pipeline = None

    @classmethod
    def from_options(cls, options: SAELabelerOptions, tokenizer) -> SAELabeler:
        missing = [f for f in ("sae_reference_lm", "sae", "sae_latents") if not getattr(options, f)]
        if missing:
            raise ValueError("--labeler sae needs " + ", ".join("--" + m.replace("_", "-") for m in missing))
        if not os.path.isdir(options.sae_reference_lm):
            raise FileNotFoundError(f"--sae-reference-lm {options.sae_reference_lm}: not a directory")
        return cls(TokenBytes.from_tokenizer(tokenizer), read_latents(options.sae_latents),
                   min_seed_latents=options.sae_min_seed_latents, options=options)

    # ---- lazy model loading ----------------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.options is not None:
            state.update(_ref_lm=None, _encoder=None, _pipeline=None)
        return state

    @property
    def pipeline(self):
        if self._pipeline is None:
            from .pipeline import LatentPipeline

            if self._encoder is None:
                from .sae_io import load_sae

                self._encoder = load_sae(self.options.sae, device=self.options.sae_device)
            if self._ref_lm is None:
                from .reference_lm import load_reference_lm

                o = self.options
                layer = resolve_hook_layer(o.sae_hook_layer, self._encoder)
                self._ref_lm = load_reference_lm(o.sae_reference_lm, layer, device=o.sae_device, dtype=o.sae_dtype,
                                                 context_size=o.sae_context_size,
                                                 attn_implementation=o.sae_attn_implementation, bos=o.sae_bos)
            self.latents.check_range(int(self._encoder.d_sae))
            self._pipeline = LatentPipeline(self._ref_lm, self._encoder, self.batch_size)
        return self._pipeline

    def describe(self) -> dict:
        d = {"labeler": self.name, "rule": "seed: >= m latents > threshold; expand through tokens with a latent > 0",
             "min_seed_latents": self.min_seed_latents, "num_latents": int(self.latent_ids.size),
             "latents_sha256": self.latents.sha256(), "latents_file": self.latents.path and
             os.path.basename(self.latents.path)}
        if self.options is not None:
            o = self.options
            d.update({"reference_lm": os.path.abspath(o.sae_reference_lm),
                      "reference_lm_config_sha256": _config_sha(o.sae_reference_lm), "sae": o.sae,
                      "hook_layer": o.sae_hook_layer, "context_size": o.sae_context_size, "dtype": o.sae_dtype,
                      "bos": o.sae_bos, "batch_size": o.sae_batch_size})
        else:
            d.update({"reference_lm": _describe(self._ref_lm), "sae": _describe(self._encoder),
                      "batch_size": self.batch_size})
        return json.loads(json.dumps(d))

    # ---- labeling ----------------------------------------------------------------------------------------------
    def label_texts(self, texts: list[str]):
        """Per text: (reference token char offsets [R, 2], reference forget labels [R], activations [R, K])."""
        pipe = self.pipeline
        tdocs = pipe.tokenize(texts)
        acts = pipe.document_activations(tdocs, self.latent_ids)
        return [(td.offsets, label_tokens(a, self.thresholds, self.min_seed_latents), a)
                for td, a in zip(tdocs, acts)]

    def score_documents(self, docs: list[np.ndarray]) -> list[np.ndarray]:
        if not docs:
            return []
        decoded = [self.token_bytes.decode(np.asarray(d, dtype=np.int64)) for d in docs]
        texts, maps = [], []
        for data, _ in decoded:
            text, c2b = document_text(data)
            texts.append(text)
            maps.append(c2b)
        out = []
        for (_, offsets), c2b, (ref_offs, ref_forget, _) in zip(decoded, maps, self.label_texts(texts)):
            out.append(transfer_labels(ref_offs, ref_forget, c2b, offsets).astype(np.float32))
        return out


def _describe(obj) -> dict:
    return obj.describe() if hasattr(obj, "describe") else {"type": type(obj).__name__}


def resolve_hook_layer(requested: int | None, encoder) -> int:
    """--sae-hook-layer, else the SAE's hook name; an explicit layer that contradicts the SAE's is an error."""
    meta = getattr(encoder, "hook_layer", None)
    if requested is None:
        if meta is None:
            raise ValueError(f"the SAE's hook name {getattr(encoder, 'hook_name', None)!r} does not say which block "
                             "it reads (blocks.L.hook_resid_post); pass --sae-hook-layer L")
        return int(meta)
    if meta is not None and int(meta) != int(requested):
        raise ValueError(f"--sae-hook-layer {requested} contradicts the SAE's hook name {encoder.hook_name!r} "
                         f"(layer {meta})")
    return int(requested)
