"""Document samples for statistics and selection: JSONL files or indexed datasets, sampled reproducibly.

A source is either a JSON Lines file (`.jsonl`, `.jsonl.xz`, `.jsonl.gz`; one object per line with a text field) or
an indexed dataset prefix P (P.bin + P.idx; decoded with the training tokenizer's byte table, exactly like the
labeler sees it). `read_sample` takes `max_docs` documents chosen uniformly at random with a fixed seed (all of them
when there are fewer), in file order, each cut to its first `max_chars` characters.
"""

from __future__ import annotations

import gzip
import json
import lzma
import os

import numpy as np

from ..token_text import TokenBytes
from .transfer import document_text


def _open_text(path: str):
    if path.endswith(".xz"):
        return lzma.open(path, "rt", encoding="utf-8")
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _choose(n: int, max_docs: int | None, seed: int) -> np.ndarray:
    if max_docs is None or n <= max_docs:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_docs, replace=False))


def read_jsonl_texts(path: str, key: str = "text") -> list[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"document file not found: {path}")
    out = []
    with _open_text(path) as f:
        for ln, line in enumerate(f.read().split("\n"), 1):  # split on \n only: texts may hold U+2028
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{ln}: not valid JSON: {e}") from e
            if not isinstance(rec, dict) or not isinstance(rec.get(key), str):
                raise ValueError(f"{path}:{ln}: expected an object with a string field {key!r}")
            out.append(rec[key])
    return out


def read_sample(source: str, *, max_docs: int | None = None, max_chars: int | None = None, seed: int = 0,
                key: str = "text", tokenizer=None) -> list[str]:
    """Texts of a sample of documents of `source` (a JSONL file or a dataset prefix)."""
    if os.path.isfile(source + ".idx") and os.path.isfile(source + ".bin"):
        from ...data.indexed_dataset import IndexedDataset

        if tokenizer is None:
            raise ValueError(f"{source} is an indexed dataset: pass the tokenizer it was made with "
                             "(--tokenizer-type/--tokenizer-model)")
        ds = IndexedDataset(source)
        tb = TokenBytes.from_tokenizer(tokenizer)
        offs = ds.document_token_offsets()
        texts = []
        for d in _choose(ds.num_documents, max_docs, seed):
            data, _ = tb.decode(np.asarray(ds.tokens(int(offs[d]), int(offs[d + 1]))))
            texts.append(document_text(data)[0])
    else:
        all_texts = read_jsonl_texts(source, key)
        texts = [all_texts[i] for i in _choose(len(all_texts), max_docs, seed)]
    if max_chars is not None:
        texts = [t[:max_chars] for t in texts]
    return [t for t in texts if t.strip()]
