"""Labeled documents for training and evaluating probes: tokens of an indexed dataset, labels from its sidecars.

Labels: token t is forget iff its stored score q >= ceil(255 T) in the sidecar P.N.tokscores (or the bit mask
P.N.tokmask made at T) of annotation name N (data/filters.py `open_forget_flags`, the rule training uses).
Token sampling (`class_sample`): probe training needs balanced classes, not every token: each class keeps each of
its tokens with probability p_c = min(1, cap / n_c) (seeded uniform draws), and a kept token carries the weight
1 / p_c, so weighted sums over the sample estimate sums over all tokens (natural-rate metrics on a sample).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...data.filters import open_forget_flags
from ...data.indexed_dataset import IndexedDataset
from ...data.sidecar import KIND_TOKEN_SCORES, TokenScores, sidecar_path


@dataclass
class DocSet:
    """Documents of one prefix (token arrays in document order) with their forget labels."""

    prefix: str
    doc_ids: np.ndarray
    docs: list[np.ndarray]
    labels: list[np.ndarray]

    @property
    def num_tokens(self) -> int:
        return int(sum(len(d) for d in self.docs))


def split_documents(num_docs: int, valid_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train ids, valid ids), both sorted: a seeded permutation's first ceil(f * D) documents are validation."""
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid fraction must be in [0, 1), got {valid_fraction}")
    perm = np.random.default_rng(seed).permutation(num_docs)
    nv = int(np.ceil(valid_fraction * num_docs))
    return np.sort(perm[nv:]), np.sort(perm[:nv])


def load_docset(prefix: str, doc_ids: np.ndarray | None, label_name: str, label_threshold: float) -> DocSet:
    ds = IndexedDataset(prefix)
    fp = ds.fingerprint()
    flags = open_forget_flags(ds, fp, label_name, label_threshold, required=True)
    offs = ds.document_token_offsets()
    ids = np.arange(ds.num_documents) if doc_ids is None else np.asarray(doc_ids)
    docs, labels = [], []
    for d in ids.tolist():
        a, b = int(offs[d]), int(offs[d + 1])
        docs.append(np.asarray(ds.tokens(a, b), dtype=np.int64))
        labels.append(flags.gather(np.array([a]), np.array([b])).astype(bool) if b > a else np.zeros(0, bool))
    return DocSet(prefix, ids, docs, labels)


def sidecar_scores(docset: DocSet, name: str) -> list[np.ndarray]:
    """Scores q / 255 of annotation `name` (P.name.tokscores) for the documents of `docset` (lexical baselines)."""
    ds = IndexedDataset(docset.prefix)
    ts = TokenScores(sidecar_path(docset.prefix, KIND_TOKEN_SCORES, name), ds)
    offs = ds.document_token_offsets()
    q = np.asarray(ts.q)
    return [q[int(offs[d]) : int(offs[d + 1])].astype(np.float32) / 255.0 for d in docset.doc_ids.tolist()]


def class_sample(labels: list[np.ndarray], cap: int | None, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Per document, the kept-token mask; and the weights (1 / p_c) of the kept tokens in document order."""
    y = np.concatenate(labels) if labels else np.zeros(0, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    p_pos = 1.0 if cap is None or n_pos <= cap else cap / n_pos
    p_neg = 1.0 if cap is None or n_neg <= cap else cap / n_neg
    u = np.random.default_rng(seed).random(y.size)
    keep = u < np.where(y, p_pos, p_neg)
    weights = np.where(y, 1.0 / p_pos, 1.0 / p_neg)[keep]
    offs = np.cumsum([0] + [len(lab) for lab in labels])
    return [keep[offs[k] : offs[k + 1]] for k in range(len(labels))], weights


@dataclass
class FeatureSample:
    """Kept tokens' features per layer (forward [K, h], reversed [K, h] or None), labels [K], weights [K]."""

    features: dict[int, tuple[torch.Tensor, torch.Tensor | None]]
    labels: np.ndarray
    weights: np.ndarray

    def x(self, layer: int, bidirectional: bool = True) -> torch.Tensor:
        f, r = self.features[layer]
        return torch.cat([f, r], 1) if bidirectional and r is not None else f


def collect_features(bilm, docsets: list[DocSet], layers: list[int], cap: int | None, seed: int,
                     group_tokens: int = 65536, progress: bool = False) -> FeatureSample:
    """Hidden states of the class-sampled tokens of `docsets` at every layer in `layers` (one pass per group)."""
    from tqdm import tqdm

    labels = [lab for s in docsets for lab in s.labels]
    docs = [d for s in docsets for d in s.docs]
    keep, weights = class_sample(labels, cap, seed)
    parts: dict[int, tuple[list, list]] = {layer: ([], []) for layer in layers}
    total = sum(len(d) for d in docs)
    bar = tqdm(total=total, unit="tok", unit_scale=True, desc="features", disable=not progress)
    i = 0
    while i < len(docs):
        j, n = i, 0
        while j < len(docs) and (j == i or n + len(docs[j]) <= group_tokens):
            n += len(docs[j])
            j += 1
        mask = torch.from_numpy(np.concatenate(keep[i:j]) if n else np.zeros(0, bool))
        if n and mask.any():
            hs = bilm.hidden_states(docs[i:j], layers)
            for layer, (f, r) in hs.items():
                parts[layer][0].append(f[mask.to(f.device)].cpu())
                if r is not None:
                    parts[layer][1].append(r[mask.to(r.device)].cpu())
        bar.update(n)
        i = j
    bar.close()
    feats = {layer: (torch.cat(f) if f else torch.zeros(0, bilm.forward_dir.hidden_size),
                     torch.cat(r) if r else None) for layer, (f, r) in parts.items()}
    y = np.concatenate([lab[k] for lab, k in zip(labels, keep)]) if labels else np.zeros(0, bool)
    return FeatureSample(feats, y, weights)
