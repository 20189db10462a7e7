"""Texts -> reference-LM windows -> residual after block L -> SAE latent activations, batched.

A document's reference tokens are cut into windows of `context_size - 1` tokens (`context_size` without a BOS), and
each window gets the BOS in front; the BOS position is dropped before the SAE sees the rows, so it never enters a
statistic, a threshold, a selection or a label. Windows do not overlap: the first tokens of a window see less context
than in one long pass (the SAE was trained on `context_size` windows, so this matches its training distribution).
Windows of consecutive documents are batched together (right-padded), in document order, so the result of a batch of
documents is a deterministic function of that batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TokenizedDoc:
    ids: np.ndarray  # int64 [R] reference token ids (no BOS)
    offsets: np.ndarray  # int64 [R, 2] character spans in the text


@dataclass
class RowBatch:
    """SAE activations of a batch of rows (one row per non-BOS reference token)."""

    doc: np.ndarray  # int64 [rows] index of the document in the call's list
    pos: np.ndarray  # int64 [rows] index of the token in the document's reference tokens
    acts: torch.Tensor  # [rows, n] activations (all latents, or the selected ones)


class LatentPipeline:
    """Runs a `ReferenceLM` and an SAE encoder (`encode(x [T, d_in]) -> [T, d_sae]`) over texts."""

    def __init__(self, ref_lm, encoder, batch_size: int = 8):
        if int(encoder.d_in) != int(ref_lm.d_model):
            raise ValueError(f"the SAE reads {encoder.d_in}-dimensional activations but the reference LM's residual "
                             f"stream has d_model = {ref_lm.d_model}: wrong SAE for this model?")
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.ref_lm, self.encoder, self.batch_size = ref_lm, encoder, int(batch_size)
        has_bos = ref_lm.bos_id is not None
        self.window = int(ref_lm.context_size) - (1 if has_bos else 0)
        if self.window < 1:
            raise ValueError(f"context size {ref_lm.context_size} leaves no room for tokens after the BOS")

    @property
    def d_sae(self) -> int:
        return int(self.encoder.d_sae)

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedDoc]:
        out = []
        for t in texts:
            ids, offs = self.ref_lm.tokenize_with_offsets(t)
            out.append(TokenizedDoc(np.asarray(ids, dtype=np.int64),
                                    np.asarray(offs, dtype=np.int64).reshape(-1, 2)))
        return out

    def _windows(self, docs: Sequence[TokenizedDoc]) -> list[tuple[int, int, int]]:
        return [(d, a, min(a + self.window, doc.ids.size)) for d, doc in enumerate(docs)
                for a in range(0, doc.ids.size, self.window)]

    def iter_rows(self, docs: Sequence[TokenizedDoc], latents: np.ndarray | None = None) -> Iterator[RowBatch]:
        """SAE activations for every reference token of `docs`, one batch of windows at a time (document order).
        `latents`: keep only these latent columns (in this order); None keeps all."""
        bos = self.ref_lm.bos_id
        lat = None if latents is None else torch.as_tensor(np.asarray(latents, dtype=np.int64))
        wins = self._windows(docs)
        for b in range(0, len(wins), self.batch_size):
            batch = wins[b : b + self.batch_size]
            seqs = [([bos] if bos is not None else []) + docs[d].ids[a:e].tolist() for d, a, e in batch]
            res = self.ref_lm.residual_batch(seqs)
            skip = 1 if bos is not None else 0
            x = torch.cat([r[skip:] for r in res], dim=0)
            acts = self.encoder.encode(x)
            if lat is not None:
                acts = acts[:, lat.to(acts.device)]
            doc = np.concatenate([np.full(e - a, d, dtype=np.int64) for d, a, e in batch])
            pos = np.concatenate([np.arange(a, e, dtype=np.int64) for d, a, e in batch])
            yield RowBatch(doc, pos, acts)

    def document_activations(self, docs: Sequence[TokenizedDoc], latents: np.ndarray) -> list[np.ndarray]:
        """float32 [R_d, len(latents)] per document: the selected latents on every reference token."""
        out = [np.zeros((doc.ids.size, len(latents)), dtype=np.float32) for doc in docs]
        for rb in self.iter_rows(docs, latents):
            a = rb.acts.float().cpu().numpy()
            # rows of one window are contiguous and windows are in document order: scatter per document run
            bounds = np.flatnonzero(np.diff(rb.doc)) + 1
            for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, rb.doc.size]):
                out[int(rb.doc[lo])][rb.pos[lo] : rb.pos[hi - 1] + 1] = a[lo:hi]
        return out
