"""biLM token features: forward-LM and reversed-LM hidden states of every token, re-aligned to document order.

For a document x_0 .. x_{n-1} (a trailing <|endoftext|> included, as stored) and a chosen layer l:

    forward LM   reads [eod] x_0 x_1 ... x_{n-1}                      hidden f_l(t) at x_t has seen x_0 .. x_t
    reversed LM  reads [eod] reverse_document(x) (data/reverse.py)    hidden r_l(t) at x_t has seen x_t .. x_{C-1}
    feature(t) = concat(f_l(t), r_l(t))                               (forward-only features: f_l(t))

Both directions include the token itself: this is the biLM of Peters et al. 2018 (ELMo) and of the paper's
classifier; the feature of x_t is a function of the whole document (within the window context, windows.py), and
x_t enters from both sides. Excluding x_t (f(t-1) with r(t+1), a "cloze" feature) is not what is done here. The
trailing eod stays last in both directions (it is the end-of-document token of both LMs), so its two hidden states
have both seen the whole document; it is scored like any other token. Content token t sits at reversed position
C - 1 - t (C = content length), i.e. u position C - t; the eod at u position n in both.

Layers: `l` in [0, L) is the output of decoder block l (the residual stream block l + 1 reads; the SAE labeler's
convention), l = -1 the embedding output (token identity only, no context). Hidden states are read with forward
hooks on `model.embedding` / `model.decoder.layers[str(l)]`; the hook of the deepest requested layer stops the
forward pass (no later blocks, no final norm, no logits are computed). The model code is untouched.

Batching: the windows of a group of documents (windows.py) are sorted by length (longest first; ties by document
and start, so the order is a pure function of the input) and packed into batches of at most `batch_tokens` padded
positions, padded on the right; with causal attention the outputs at real positions do not depend on the padding
(tested). Documents are not concatenated into one row: the GPT has no block-diagonal attention mask, so a packed
document would attend to its neighbours and its scores would depend on how the corpus was chunked.
"""

from __future__ import annotations

import numpy as np
import torch

from ...data.reverse import reversal_permutation
from ...model.taps import LayerTap
from .windows import Window, check_window, plan_windows


def _batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Greedy: window indices (already sorted longest first) in batches of rows * longest <= batch_tokens."""
    out, cur = [], []
    for i in range(len(lengths)):
        if cur and (len(cur) + 1) * lengths[cur[0]] > batch_tokens:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def plan_batches(doc_lengths: list[int], window: int, context: int, batch_tokens: int
                 ) -> tuple[list[tuple[int, Window]], list[list[int]]]:
    """The windows of a group of documents ((document index, Window), sorted longest first, ties by document and
    start) and the batches (lists of indices into that list) one direction runs."""
    wins = [(i, w) for i, n in enumerate(doc_lengths) for w in plan_windows(n + 1, window, context)]
    wins.sort(key=lambda iw: (-(iw[1].end - iw[1].start), iw[0], iw[1].start))
    return wins, _batches([w.end - w.start for _, w in wins], batch_tokens)


def padded_positions(doc_lengths: list[int], window: int, context: int, batch_tokens: int) -> tuple[int, int]:
    """(positions read, positions computed including right padding) of one direction over a group of documents."""
    wins, batches = plan_batches(doc_lengths, window, context, batch_tokens)
    lengths = [w.end - w.start for _, w in wins]
    return sum(lengths), sum(len(b) * lengths[b[0]] for b in batches)


class Direction:
    """One LM of the biLM: hidden states of every token of a group of documents, from overlapping windows."""

    def __init__(self, model: torch.nn.Module, reverse: bool, eod: int, window: int, context: int,
                 batch_tokens: int, autocast_dtype: torch.dtype | None = None):
        check_window(window, context)
        self.model, self.reverse, self.eod = model, reverse, int(eod)
        self.window, self.context, self.batch_tokens = int(window), int(context), int(batch_tokens)
        self.autocast_dtype = autocast_dtype
        self.device = next(model.parameters()).device
        self.hidden_size = model.config.hidden_size

    def hidden(self, docs: list[np.ndarray], layers: list[int]) -> dict[int, torch.Tensor]:
        """{layer: float32 [sum of len(docs), h]}: row j = token j of the concatenated documents, document order."""
        tap = LayerTap(self.model, layers)
        total = int(sum(len(d) for d in docs))
        out = {layer: torch.zeros(total, self.hidden_size, dtype=torch.float32, device=self.device)
               for layer in tap.layers}
        seqs, dests = [], []
        base = 0
        for d in docs:
            d = np.asarray(d, dtype=np.int64)
            if self.reverse:
                perm = reversal_permutation(d, self.eod)
                seqs.append(np.concatenate(([self.eod], d[perm])))
                dests.append(base + perm)  # u position p holds original token perm[p - 1]
            else:
                seqs.append(np.concatenate(([self.eod], d)))
                dests.append(base + np.arange(len(d), dtype=np.int64))
            base += len(d)
        wins, batches = plan_batches([len(d) for d in docs], self.window, self.context, self.batch_tokens)
        lengths = [w.end - w.start for _, w in wins]
        for batch in batches:
            width = lengths[batch[0]]
            ids = np.full((len(batch), width), self.eod, dtype=np.int64)
            rows, cols, dest = [], [], []
            for r, k in enumerate(batch):
                i, w = wins[k]
                ids[r, : w.end - w.start] = seqs[i][w.start : w.end]
                n = w.score_end - w.score_start
                rows.append(np.full(n, r, dtype=np.int64))
                cols.append(np.arange(w.score_start - w.start, w.score_end - w.start, dtype=np.int64))
                dest.append(dests[i][w.score_start - 1 : w.score_end - 1])
            hs = tap(torch.from_numpy(ids).to(self.device), self.autocast_dtype)
            r_t = torch.from_numpy(np.concatenate(rows)).to(self.device)
            c_t = torch.from_numpy(np.concatenate(cols)).to(self.device)
            d_t = torch.from_numpy(np.concatenate(dest)).to(self.device)
            for layer, h in hs.items():
                out[layer].index_copy_(0, d_t, h[r_t, c_t])
        return out


class BiLM:
    """Forward + reversed LM (reversed_model None: forward-only features). See the module docstring."""

    def __init__(self, forward_model: torch.nn.Module, reversed_model: torch.nn.Module | None, eod: int, *,
                 window: int, context: int, batch_tokens: int = 8192, autocast_dtype: torch.dtype | None = None):
        if batch_tokens < window:
            raise ValueError(f"batch_tokens {batch_tokens} must be >= window {window} (one full window per batch)")
        self.forward_dir = Direction(forward_model, False, eod, window, context, batch_tokens, autocast_dtype)
        self.reversed_dir = (Direction(reversed_model, True, eod, window, context, batch_tokens, autocast_dtype)
                             if reversed_model is not None else None)
        if self.reversed_dir is not None and self.reversed_dir.hidden_size != self.forward_dir.hidden_size:
            raise ValueError(f"forward and reversed LMs have different hidden sizes "
                             f"({self.forward_dir.hidden_size} vs {self.reversed_dir.hidden_size})")

    @property
    def bidirectional(self) -> bool:
        return self.reversed_dir is not None

    @property
    def feature_size(self) -> int:
        return self.forward_dir.hidden_size * (2 if self.bidirectional else 1)

    def hidden_states(self, docs: list[np.ndarray], layers: list[int]
                      ) -> dict[int, tuple[torch.Tensor, torch.Tensor | None]]:
        """{layer: (forward [N, h], reversed [N, h] or None)} over the concatenated documents."""
        fwd = self.forward_dir.hidden(docs, layers)
        rev = self.reversed_dir.hidden(docs, layers) if self.reversed_dir is not None else None
        return {layer: (fwd[layer], rev[layer] if rev is not None else None) for layer in fwd}

    def features(self, docs: list[np.ndarray], layer: int) -> torch.Tensor:
        """float32 [N, feature_size]: concat(forward, reversed) hidden states of layer `layer` per token."""
        f, r = self.hidden_states(docs, [layer])[layer]
        return f if r is None else torch.cat([f, r], dim=1)
