"""Held-out text sets for the per-domain loss: documents from JSONL files or preprocessed indexed datasets, with
optional per-token forget labels.

A text set is one or more paths; each path is either an indexed-dataset prefix (`P.bin` + `P.idx` exist, as written
by tools/preprocess_data.py) or a JSON Lines file (plain, gzip, xz or zstd; the `text` field). A `Document` holds
the token ids that are scored (JSONL: tokenize(text) + [eod] when append_eod, the same ids as preprocessing with
--append-eod; indexed: the document's tokens as stored), optional forget flags (one per token) and its size in UTF-8
bytes (for bits per byte).

Forget labels, per path (docs/evaluation.md):
- indexed prefix with a forget sidecar (`P.<name>.tokmask` or `P.<name>.tokscores`, megatron_tf/data/sidecar.py):
  flags from the sidecar at `threshold` (None: the bit mask's own threshold; token scores without a threshold: 0.5),
  exactly as training reads them (megatron_tf.data.filters.open_forget_flags);
- otherwise, when a labeler is given (e.g. megatron_tf.labeling.BlocklistLabeler.from_file(terms, tokenizer)):
  flags = labeler scores >= threshold (None: 0.5), computed on the fly on the same token ids;
- otherwise no labels. A set whose paths are only partly labeled is refused (the token-level loss would mix rules).
With `require_sidecar` (tools/evaluate.py --eval-labels NAME) every path must be an indexed prefix with annotation
NAME; a missing one is an error naming the flag, the value and the files looked for.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from megatron_tf.data.filters import open_forget_flags
from megatron_tf.data.indexed_dataset import IndexedDataset, data_file_path, index_file_path
from megatron_tf.data.sidecar import KIND_TOKEN_MASK, KIND_TOKEN_SCORES, sidecar_path
from megatron_tf.utils.jsonl import iter_texts

DEFAULT_THRESHOLD = 0.5
_CHUNK_DOCS = 256


@dataclass
class Document:
    tokens: np.ndarray  # int64 ids, scored in order (the first one conditioned on the start token)
    forget: np.ndarray | None = None  # bool per token, or None when the set has no labels
    nbytes: int | None = None  # UTF-8 bytes the tokens stand for


@dataclass
class TextSetSpec:
    """A named held-out text set: `role` is forget, retain or general."""

    name: str
    role: str
    paths: list[str] = field(default_factory=list)


def is_indexed_prefix(path: str) -> bool:
    return os.path.isfile(index_file_path(path)) and os.path.isfile(data_file_path(path))


def token_byte_lengths(tokenizer) -> np.ndarray | None:
    """Bytes of text each id stands for (tokenizer.token_bytes_table), or None when the tokenizer has no table."""
    try:
        table = tokenizer.token_bytes_table()
    except NotImplementedError:
        return None
    return np.fromiter((len(b) for b in table), dtype=np.int64, count=len(table))


def _label(labeler, docs: list[np.ndarray], threshold: float) -> list[np.ndarray]:
    scores = labeler.score_documents(docs)
    if len(scores) != len(docs):
        raise ValueError(f"labeler {getattr(labeler, 'name', labeler)} returned {len(scores)} score arrays for "
                         f"{len(docs)} documents")
    return [np.asarray(s) >= threshold for s in scores]


def _jsonl_documents(path: str, tokenizer, labeler, threshold: float, append_eod: bool, key: str,
                     byte_lengths: np.ndarray | None) -> Iterator[Document]:
    texts = iter_texts([path], key)
    while True:
        chunk = [t for _, t in zip(range(_CHUNK_DOCS), texts)]
        if not chunk:
            return
        ids = tokenizer.tokenize_batch(chunk)
        docs = [np.asarray(list(d) + ([tokenizer.eod] if append_eod else []), dtype=np.int64) for d in ids]
        flags = _label(labeler, docs, threshold) if labeler is not None else [None] * len(docs)
        for text, d, f in zip(chunk, docs, flags):
            nbytes = int(byte_lengths[d].sum()) if byte_lengths is not None else len(text.encode("utf-8"))
            yield Document(d, f, nbytes)


def _indexed_documents(ds: IndexedDataset, flags_src, labeler, threshold: float,
                       byte_lengths: np.ndarray | None) -> Iterator[Document]:
    offsets = ds.document_token_offsets()
    for a in range(0, ds.num_documents, _CHUNK_DOCS):
        docs, flags = [], []
        for d in range(a, min(a + _CHUNK_DOCS, ds.num_documents)):
            s, e = int(offsets[d]), int(offsets[d + 1])
            docs.append(np.asarray(ds.tokens(s, e), dtype=np.int64))
            if flags_src is not None:
                flags.append(np.asarray(flags_src.gather(np.array([s]), np.array([e])), dtype=bool))
        if flags_src is None:
            flags = _label(labeler, docs, threshold) if labeler is not None else [None] * len(docs)
        for d, f in zip(docs, flags):
            yield Document(d, f, int(byte_lengths[d].sum()) if byte_lengths is not None else None)


class TextSource:
    """One path of a text set, opened: `.labels` describes where its forget labels come from (None: unlabeled)."""

    def __init__(self, path: str, tokenizer, *, labeler=None, threshold: float | None = None,
                 sidecar_name: str = "forget", use_sidecar: bool = True, append_eod: bool = True,
                 key: str = "text", require_sidecar: bool = False):
        self.path, self.tokenizer, self.labeler = path, tokenizer, labeler
        self.append_eod, self.key = append_eod, key
        self.byte_lengths = token_byte_lengths(tokenizer)
        self.flags_src = None
        self.dataset = None
        if is_indexed_prefix(path):
            self.kind = "indexed"
            self.dataset = IndexedDataset(path)
            if require_sidecar:
                _check_annotation(path, sidecar_name)
            if use_sidecar or require_sidecar:
                fp = self.dataset.fingerprint()
                self.flags_src = open_forget_flags(self.dataset, fp, sidecar_name, threshold, required=False)
                if self.flags_src is None and threshold is None and os.path.isfile(
                        sidecar_path(path, KIND_TOKEN_SCORES, sidecar_name)):
                    self.flags_src = open_forget_flags(self.dataset, fp, sidecar_name, DEFAULT_THRESHOLD, True)
        elif os.path.isfile(path):
            self.kind = "jsonl"
            if require_sidecar:
                raise FileNotFoundError(
                    f"--eval-labels {sidecar_name}: {path} is a JSON Lines file; annotations (sidecars "
                    f"P.{sidecar_name}.tokmask / P.{sidecar_name}.tokscores) exist only beside indexed datasets: "
                    "preprocess it (tools/preprocess_data.py) and annotate it (tools/annotate.py --name "
                    f"{sidecar_name}), or label it on the fly with --blocklist instead of --eval-labels")
        else:
            raise FileNotFoundError(f"text set path not found: {path} (expected a JSONL file or an indexed dataset "
                                    f"prefix with {index_file_path(path)} and {data_file_path(path)})")
        if self.flags_src is not None:
            self.threshold = self.flags_src.threshold
            self.labels = {"source": "sidecar", "path": self.flags_src.path, "threshold": self.threshold}
        elif labeler is not None:
            self.threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
            self.labels = {"source": "labeler", "labeler": labeler.describe(), "threshold": self.threshold}
        else:
            self.threshold, self.labels = None, None

    def documents(self) -> Iterator[Document]:
        if self.kind == "indexed":
            return _indexed_documents(self.dataset, self.flags_src, self.labeler, self.threshold, self.byte_lengths)
        return _jsonl_documents(self.path, self.tokenizer, self.labeler, self.threshold, self.append_eod, self.key,
                                self.byte_lengths)


def _check_annotation(prefix: str, name: str) -> None:
    looked = [sidecar_path(prefix, k, name) for k in (KIND_TOKEN_MASK, KIND_TOKEN_SCORES)]
    if not any(os.path.isfile(p) for p in looked):
        raise FileNotFoundError(f"--eval-labels {name}: no annotation {name!r} for the text set prefix {prefix}: "
                                f"looked for {looked[0]} and {looked[1]} (make it with tools/annotate.py "
                                f"--data-prefix {prefix} --name {name})")


def open_text_set(spec: TextSetSpec, tokenizer, **kw) -> list[TextSource]:
    """Open every path of `spec` (keyword arguments: those of TextSource); checks the labels are all or nothing."""
    if not spec.paths:
        raise ValueError(f"text set {spec.name!r} has no paths")
    sources = [TextSource(p, tokenizer, **kw) for p in spec.paths]
    labeled = [s.labels is not None for s in sources]
    if any(labeled) and not all(labeled):
        bad = [s.path for s in sources if s.labels is None]
        raise ValueError(f"text set {spec.name!r}: some paths have forget labels and these have none: {bad} "
                         "(add a sidecar with tools/annotate.py or give a labeler, e.g. --blocklist)")
    return sources


def iter_set_documents(sources: Sequence[TextSource], limit: int | None = None) -> Iterator[Document]:
    """The documents of all sources in order; at most `limit` in total (the first ones)."""
    n = 0
    for s in sources:
        for doc in s.documents():
            if limit is not None and n >= limit:
                return
            n += 1
            yield doc
