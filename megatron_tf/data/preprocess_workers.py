"""Preprocessing workers: parse and tokenize one block of JSON lines (data/preprocess.py runs a pool of these).

A block arrives as raw bytes; `BlockEncoder.encode` returns, per JSON key, one numpy array of tokens in the output
dtype and one array of document lengths (two buffers cross the process boundary per block, not a Python list per
document), plus counts of blank and bad lines. The encoder is built once per worker from a picklable spec
(`worker_init`); an error there is kept and raised from the first task, since multiprocessing.Pool restarts a
worker whose initializer raises forever.
"""

from __future__ import annotations

import gc
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..tokenizer.bytelevel_cache import ByteLevelChunkEncoder, check_bytelevel_cache
from ..tokenizer.tokenizer import HFTokenizer, SentencePieceTokenizer, Tokenizer, build_tokenizer
from ..tokenizer.word_cache import WordCacheEncoder, check_word_cache
from ..utils.jsonl import InputError, LineIssue, parse_line, split_lines


class PreprocessError(InputError):
    pass


@dataclass
class BlockResult:
    tokens: list[np.ndarray]  # per key: all tokens of the block's written documents, in the output dtype
    lengths: list[np.ndarray]  # per key: int32 tokens per written document (0 = kept empty document)
    empty: list[int]  # per key: documents with no tokens (skipped or kept)
    lines: int
    blank: int
    issue_counts: dict[str, int]
    issues: list[tuple[int, str, str]]  # (line, kind, detail), the first few
    fatal: tuple[int, str, str] | None = None  # the first line that stops the run (fail policies)


class BlockEncoder:
    """Parses and tokenizes one block of JSONL lines. Lives in each worker (or in the main process for 1 worker)."""

    def __init__(self, tokenizer: Tokenizer, keys: Sequence[str], append_eod: bool, on_empty: str,
                 on_bad_line: str, dtype: np.dtype, max_issues: int, word_cache: bool = False, threads: int = 1):
        self.tok = tokenizer
        self.keys = tuple(keys)
        self.append_eod = append_eod
        self.on_empty = on_empty
        self.fail_fast = on_bad_line == "fail"
        self.dtype = np.dtype(dtype)
        self.max_issues = max_issues
        self._cache = build_word_cache(tokenizer, threads) if word_cache else None

    def encode_texts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(all tokens in the output dtype, tokens per text as int64)."""
        if self._cache is not None:
            return self._cache.encode_batch(texts, self.dtype)
        ids = self.tok.tokenize_batch(texts) if texts else []
        lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        try:
            tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype=self.dtype, count=int(lens.sum()))
        except OverflowError as e:
            raise PreprocessError(f"token id does not fit --dtype {self.dtype.name}: {e}") from e
        return tokens, lens

    def encode(self, data: bytes, first_line: int) -> BlockResult:
        keys = self.keys
        texts: list[list[str]] = [[] for _ in keys]
        line_nos: list[int] = []
        issues: list[tuple[int, str, str]] = []
        counts: dict[str, int] = {}
        blank = 0
        lines = split_lines(data)
        for i, line in enumerate(lines):
            if not line or line.isspace():
                blank += 1
                continue
            got = _fast_parse(line, keys)
            if got is None:
                got = parse_line(line, keys)
            if isinstance(got, LineIssue):
                counts[got.kind] = counts.get(got.kind, 0) + 1
                if len(issues) < self.max_issues:
                    issues.append((first_line + i, got.kind, got.detail))
                if self.fail_fast:
                    break
                continue
            for k, v in enumerate(got):
                texts[k].append(v)
            line_nos.append(first_line + i)
        fatal = issues[0] if (self.fail_fast and issues) else None
        tokens, lengths, empties = [], [], []
        eod = self.tok.eod if self.append_eod else 0
        for k, key in enumerate(keys):
            arr, lens = self.encode_texts(texts[k])
            empty = lens == 0
            n_empty = int(empty.sum())
            if n_empty and self.on_empty == "fail":
                j = int(np.flatnonzero(empty)[0])
                if fatal is None or line_nos[j] < fatal[0]:
                    fatal = (line_nos[j], "empty", f"key {key!r} has no tokens (text {texts[k][j]!r:.60})")
            if self.append_eod and n_empty < len(lens):
                # one <|endoftext|> after each non-empty document (Megatron: none after an empty one)
                arr = np.insert(arr, np.cumsum(lens)[~empty], np.array(eod, dtype=self.dtype))
                lens = lens + ~empty
            if self.on_empty == "skip" and n_empty:
                lens = lens[~empty]
            tokens.append(arr)
            lengths.append(lens.astype(np.int32))
            empties.append(n_empty)
        return BlockResult(tokens, lengths, empties, len(lines), blank, counts, issues, fatal)


def _fast_parse(line: bytes, keys: tuple[str, ...]) -> list[str] | None:
    """The values of `keys` through orjson when it parses the line and all are strings; else None, and
    utils/jsonl.parse_line decides (with its error messages). orjson rejects what json.loads alone accepts (NaN,
    a BOM, lone surrogate escapes, integers beyond 64 bits) and agrees with it on what both accept (duplicate keys:
    the last wins), so the values are the same."""
    if _orjson_loads is None:
        return None
    try:
        rec = _orjson_loads(line)
        vals = [rec[k] for k in keys]
    except Exception:  # noqa: BLE001 - orjson.JSONDecodeError, KeyError, TypeError: parse_line says what is wrong
        return None
    for v in vals:
        if type(v) is not str:
            return None
    return vals


try:
    from orjson import loads as _orjson_loads  # optional: ~4x faster than json.loads on these lines
except ImportError:  # pragma: no cover
    _orjson_loads = None

# Cyclic GC thresholds while encoding: a block allocates tens of thousands of lists (words per document) and no
# reference cycles; collecting young objects every 100k allocations instead of Python's 700 cut the word cache's CPU
# time by ~12% (SentencePiece, the 45 MB benchmark corpus in 1 MiB blocks, 4 alternating runs each: 2.38-2.56 s vs
# 2.65-2.84 s of process time on the busy 2-core machine).
GC_THRESHOLD = (100_000, 50, 100)

_WORKER: BlockEncoder | BaseException | None = None


def make_encoder(spec: dict) -> BlockEncoder:
    tok = build_spec_tokenizer(spec)
    if tok.fingerprint != spec["fingerprint"]:
        raise PreprocessError(f"tokenizer {spec['tokenizer_model']} changed while preprocessing (fingerprint "
                              f"{tok.fingerprint}, expected {spec['fingerprint']})")
    return BlockEncoder(tok, spec["keys"], spec["append_eod"], spec["on_empty"], spec["on_bad_line"],
                        np.dtype(spec["dtype"]), spec["max_issues"], spec["word_cache"], spec["tokenizer_threads"])


def worker_init(spec: dict) -> None:
    # An initializer that raises makes multiprocessing.Pool restart the worker forever: keep the error and raise it
    # from the first task instead.
    global _WORKER
    # HF tokenizers: one process per core unless --tokenizer-threads asks for more (read when first used)
    if spec["tokenizer_threads"] == 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = str(spec["tokenizer_threads"])
    gc.set_threshold(*GC_THRESHOLD)  # a pool worker only runs encode
    try:
        _WORKER = make_encoder(spec)
    except BaseException as e:  # noqa: BLE001
        _WORKER = e


def worker_encode(args: tuple[bytes, int]) -> BlockResult:
    if isinstance(_WORKER, BaseException):
        raise _WORKER
    assert _WORKER is not None
    return _WORKER.encode(*args)


def _model_bytes(tok: Tokenizer) -> bytes:
    with open(tok.path, "rb") as f:
        return f.read()


def word_cache_status(tok: Tokenizer) -> str | None:
    """None if a word cache encodes `tok` exactly, else why not: SentencePiece BPE without pieces across spaces
    (tokenizer/word_cache.py) or HF byte-level BPE with GPT-2's pre-tokenizer (tokenizer/bytelevel_cache.py)."""
    if isinstance(tok, SentencePieceTokenizer):
        return check_word_cache(_model_bytes(tok))
    if isinstance(tok, HFTokenizer):
        return check_bytelevel_cache(_model_bytes(tok).decode("utf-8"))
    return f"{tok.type_name} has no word cache"


def build_word_cache(tok: Tokenizer, threads: int = 1) -> WordCacheEncoder | ByteLevelChunkEncoder:
    if isinstance(tok, HFTokenizer):
        return ByteLevelChunkEncoder(_model_bytes(tok).decode("utf-8"))
    return WordCacheEncoder(_model_bytes(tok), threads)


def build_spec_tokenizer(spec: dict) -> Tokenizer:
    kwargs = {"num_threads": spec["tokenizer_threads"]} if spec["tokenizer_type"] in (
        "SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer") else {}
    return build_tokenizer(spec["tokenizer_type"], spec["tokenizer_model"], spec["vocab_size"], **kwargs)
