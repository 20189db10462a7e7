"""Loss of a model on held-out documents, in sliding windows of the model's sequence length.

Each document d = (t_1 .. t_n) is scored as the sequence x = (x_0 = start token, t_1, .., t_n): x_0 is the end-of-
document id, the state the model is in at a document start during training (documents follow an <|endoftext|>), and
every t_j is scored exactly once, as -log p(x_j | x_<j), with as much left context as the window allows.

Windows (`plan_windows`; L = seq_length, S = stride, 1 <= S <= L): the first window is x[0:L'] with L' = min(L, n)
and scores t_1..t_L'. While c < n tokens are covered, the next window ends at e = min(c + S, n), starts at
max(0, e - L) (it is filled with as much left context as fits) and scores only t_(c+1)..t_e. Token t_j is thus
predicted from min(j, L) tokens in the first window and from at least L - S + 1 tokens after it (x_0 counts);
S = L gives disjoint windows (the last one moved left to be full), S = 1 gives every token min(j, L) tokens of
context at about L times the cost. Default S = L // 2.
Example, n = 10, L = 4, S = 2: windows x[0:4] scores t1..t4, x[2:6] scores t5 t6, x[4:8] t7 t8, x[6:10] t9 t10.

Metrics (sums over all scored tokens of the set; docs/evaluation.md):
    nats_per_token = sum(-ln p) / tokens
    bits_per_byte  = sum(-ln p) / (ln 2 * bytes)       bytes = UTF-8 bytes the scored tokens stand for
    perplexity     = exp(nats_per_token)
    nats_per_token_stderr: the standard error of the ratio estimate with documents as clusters (tokens of one
        document are not independent): sqrt(D / (D - 1) * sum_d (s_d - r c_d)^2) / sum_d c_d, r = nats_per_token,
        s_d, c_d the summed loss and the token count of document d.
With forget labels (one flag per token), also the loss on forget tokens only and on unlabeled tokens only.
`per_document` keeps the per-document sums (tokens, nats; and per label part) so reports can bootstrap over documents.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from tqdm import tqdm

from .scoring import eval_mode, token_logprobs
from .text_sets import Document


def plan_windows(n: int, seq_length: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """Windows (s, e, k) over x = (x_0, t_1 .. t_n): input x[s:e], targets x[s+1 : e+1] = t_(s+1)..t_e, of which
    the first k are context only (already scored) and the rest are scored. See the module docstring."""
    L = int(seq_length)
    S = L // 2 if stride is None else int(stride)
    if L < 1 or not 1 <= S <= L:
        raise ValueError(f"windows need seq_length >= 1 and 1 <= stride <= seq_length, got {L} and {S}")
    if n <= 0:
        return []
    e = min(L, n)
    out = [(0, e, 0)]
    covered = e
    while covered < n:
        e = min(covered + S, n)
        s = max(0, e - L)
        out.append((s, e, covered - s))
        covered = e
    return out


class LossAccumulator:
    """Per-document sums of the loss (all tokens, forget tokens, unlabeled tokens)."""

    def __init__(self):
        self.doc_sum: list[float] = []
        self.doc_count: list[int] = []
        self.bytes = 0
        self.bytes_known = True
        self.labeled = None  # None until the first document says whether it carries labels
        self.doc_forget_sum: list[float] = []
        self.doc_forget_count: list[int] = []
        self.doc_unlabeled_sum: list[float] = []
        self.doc_unlabeled_count: list[int] = []

    def new_document(self, doc: Document) -> int:
        has = doc.forget is not None
        if self.labeled is None:
            self.labeled = has
        elif self.labeled != has:
            raise ValueError("documents of one text set must all have forget labels or all have none")
        if doc.nbytes is None:
            self.bytes_known = False
        else:
            self.bytes += int(doc.nbytes)
        for lst, zero in ((self.doc_sum, 0.0), (self.doc_count, 0), (self.doc_forget_sum, 0.0),
                          (self.doc_forget_count, 0), (self.doc_unlabeled_sum, 0.0), (self.doc_unlabeled_count, 0)):
            lst.append(zero)
        return len(self.doc_sum) - 1

    def add(self, d: int, nll: np.ndarray, forget: np.ndarray | None) -> None:
        self.doc_sum[d] += float(nll.sum())
        self.doc_count[d] += int(nll.size)
        if forget is not None:
            self.doc_forget_sum[d] += float(nll[forget].sum())
            self.doc_forget_count[d] += int(forget.sum())
            self.doc_unlabeled_sum[d] += float(nll[~forget].sum())
            self.doc_unlabeled_count[d] += int((~forget).sum())

    def result(self) -> dict:
        s = np.asarray(self.doc_sum, dtype=np.float64)
        c = np.asarray(self.doc_count, dtype=np.float64)
        total, tokens = float(s.sum()), int(c.sum())
        out: dict = {"documents": len(self.doc_sum), "tokens": tokens}
        per_doc = {"tokens": list(self.doc_count), "nats": list(self.doc_sum)}
        if self.labeled:
            per_doc.update(forget_tokens=list(self.doc_forget_count), forget_nats=list(self.doc_forget_sum),
                           unlabeled_tokens=list(self.doc_unlabeled_count), unlabeled_nats=list(self.doc_unlabeled_sum))
        out["per_document"] = per_doc
        if tokens == 0:
            out.update(nats_per_token=None, nats_per_token_stderr=None, perplexity=None, bits_per_byte=None,
                       bytes=self.bytes if self.bytes_known else None)
            return out
        r = total / tokens
        se = _cluster_stderr(s, c)
        out.update(nats_per_token=r, nats_per_token_stderr=se, perplexity=math.exp(r),
                   bytes=self.bytes if self.bytes_known else None,
                   bits_per_byte=total / (math.log(2) * self.bytes) if self.bytes_known and self.bytes else None)
        if self.labeled:
            out["forget_tokens"] = _part(self.doc_forget_sum, self.doc_forget_count, tokens)
            out["unlabeled_tokens"] = _part(self.doc_unlabeled_sum, self.doc_unlabeled_count, tokens)
        return out


def _cluster_stderr(s: np.ndarray, c: np.ndarray) -> float | None:
    """Standard error of sum(s) / sum(c) with documents as clusters (module docstring); documents with c_d = 0 are
    left out; None with fewer than 2 documents."""
    keep = c > 0
    s, c = s[keep], c[keep]
    D = len(s)
    if D < 2:
        return None
    r = float(s.sum() / c.sum())
    return math.sqrt(D / (D - 1) * float(((s - r * c) ** 2).sum())) / float(c.sum())


def _part(doc_sum: list[float], doc_count: list[int], all_tokens: int) -> dict:
    """Loss over one label part (forget or unlabeled tokens): tokens, fraction, nats_per_token and its clustered
    standard error (documents without such tokens left out)."""
    s, c = np.asarray(doc_sum, dtype=np.float64), np.asarray(doc_count, dtype=np.float64)
    count, total = int(c.sum()), float(s.sum())
    return {"tokens": count, "fraction": count / all_tokens if all_tokens else None,
            "nats_per_token": total / count if count else None,
            "nats_per_token_stderr": _cluster_stderr(s, c) if count else None}


def evaluate_documents(model, documents: Iterable[Document], *, seq_length: int, start_id: int, pad_id: int,
                       stride: int | None = None, batch_size: int = 8, bf16: bool = True, progress: bool = False,
                       desc: str = "loss") -> dict:
    """Score every token of every document once (module docstring); returns the metrics dict."""
    acc = LossAccumulator()
    pending: list[tuple[int, int, list[int], list[int], np.ndarray | None]] = []  # doc, k, inputs, targets, flags
    bar = tqdm(desc=desc, unit="tok", disable=not progress, dynamic_ncols=True)

    def flush():
        lps = token_logprobs(model, [p[2] for p in pending], [p[3] for p in pending], pad_id, bf16)
        for (d, k, _, _, flags), lp in zip(pending, lps):
            acc.add(d, -lp[k:], flags)
            bar.update(len(lp) - k)
        pending.clear()

    with eval_mode(model):
        for doc in documents:
            d = acc.new_document(doc)
            x = np.concatenate([[start_id], np.asarray(doc.tokens, dtype=np.int64)])
            for s, e, k in plan_windows(len(doc.tokens), seq_length, stride):
                flags = None if doc.forget is None else np.asarray(doc.forget[s + k : e], dtype=bool)
                pending.append((d, k, x[s:e].tolist(), x[s + 1 : e + 1].tolist(), flags))
                if len(pending) >= batch_size:
                    flush()
        if pending:
            flush()
    bar.close()
    return acc.result()
