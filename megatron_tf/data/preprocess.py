"""JSONL -> Megatron `.bin`/`.idx` (one dataset per JSON key), parallel, ordered, atomic and resumable; on one
process or across nodes.

Output for `--output-prefix P` and key `text` (Megatron-LM's naming, no sentence splitting):
`P_text_document.bin`, `P_text_document.idx` and `P_text_document.meta.json` (see docs/formats.md).

Pipeline (data/preprocess_run.py). The main process reads the inputs (plain/gzip/xz/zstd, see utils/jsonl.py) as
blocks of whole lines (`--batch-bytes`, 1 MiB by default) and hands each block to a pool of `--workers` processes. A
worker parses the lines, tokenizes the texts of a block in one batch (native code: SentencePiece / HF tokenizers) and
returns, per key, one numpy array of tokens in the output dtype and one array of document lengths (workers:
data/preprocess_workers.py): two buffers per block cross the process boundary, not a Python list per document.
Results are consumed in submission order, so the output is the same for any number of workers and any block size.
Word caches: when the tokenizer allows it exactly, the words of a block are encoded once each and copied as bytes
(SentencePiece BPE whose pieces never span a space: tokenizer/word_cache.py; HF byte-level BPE with GPT-2's
pre-tokenizer: tokenizer/bytelevel_cache.py). Measured by benchmarks/bench_preprocess.py against Megatron-LM's
tools/preprocess_data.py (same corpus, tokenizer and workers, byte-identical output): see docs/performance.md.

Atomic and resumable. Tokens and per-document lengths are appended to files in a work directory beside the output
(`P.tmp-preprocess/`). Every `--checkpoint-interval` seconds those files are fsynced and a `state.json` is
atomically replaced; it records the input position (file, decompressed byte offset, line, sha256 of the content read
so far), the output file sizes and the counters. After a kill, re-running the same command truncates the work files
to the last checkpoint, re-reads and verifies the consumed prefix of the current input (its sha256), and goes on:
the result is byte-identical to an uninterrupted run. A changed input, tokenizer or option is refused with the
differences named (or `--no-resume` starts over). When all input is read, the `.idx` and meta are written in the work
directory, then renamed into place: `.bin` first, meta next, `.idx` last (an older `.idx` at the target is removed
first), so a valid-looking dataset never exists before it is complete. A kill during the renames is finished by the
next run.

Across nodes (data/preprocess_dist.py). Under torchrun (WORLD_SIZE > 1) ranks take whole input files, each written
as a part dataset by the machinery above, and rank 0 merges the parts into the same bytes as one process writes.

Policies. `--on-bad-line fail` (default) stops at the first line that is not a JSON object holding every key as a
string, naming `file:line`; `skip` counts such lines and lists the first ones at the end and in the meta file.
`--on-empty` decides what happens to a text that tokenizes to no tokens: `skip` (default: counted, not written),
`keep` (Megatron-LM's behaviour: a document with no sequences, no end-of-document token) or `fail`.
Blank lines are skipped and counted.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from ..config.cli import opt
from ..tokenizer.tokenizer import TOKENIZER_TYPES
from ..utils.jsonl import InputError  # noqa: F401 (re-exported)
from ..utils.logging import get_logger
from .preprocess_run import (  # noqa: F401 (re-exported: the module's API and the tests' handles)
    _DTYPE_NAMES,
    ISSUE_KINDS,
    META_FORMAT,
    META_VERSION,
    _Run,
    meta_path,
    output_prefix_for,
    remove_work_dir,
    resolve_dtype,
    run_single,
)
from .preprocess_workers import PreprocessError, build_spec_tokenizer

log = get_logger("megatron_tf.preprocess")


@dataclass
class PreprocessConfig:
    """Tokenize JSONL corpora into Megatron indexed datasets (tools/preprocess_data.py)."""

    input: list[str] = field(default_factory=list, metadata=opt(
        "Input JSONL files (plain, .gz, .xz or .zst; detected from content), processed in the order given."))
    output_prefix: str = field(default="", metadata=opt(
        "Output prefix P: writes P_{key}_document.bin/.idx/.meta.json per JSON key."))
    tokenizer_type: str = field(default="SentencePieceTokenizer", metadata=opt(
        "Tokenizer type.", choices=TOKENIZER_TYPES))
    tokenizer_model: str | None = field(default=None, metadata=opt(
        "SentencePiece .model, or HF tokenizer.json (or a directory holding one)."))
    vocab_size: int | None = field(default=None, metadata=opt("Vocabulary size (NullTokenizer only)."))
    json_keys: list[str] = field(default_factory=lambda: ["text"], metadata=opt(
        "JSON keys to extract; one dataset per key."))
    append_eod: bool = field(default=False, metadata=opt(
        "Append <|endoftext|> to every non-empty document."))
    workers: int = field(default=1, metadata=opt(
        "Tokenizer worker processes (1: tokenize in the main process)."))
    tokenizer_threads: int = field(default=1, metadata=opt(
        "Native tokenizer threads per worker (SentencePiece num_threads / HF parallelism)."))
    word_cache: bool = field(default=True, metadata=opt(
        "Encode text word by word through a cache when the tokenizer allows it exactly: SentencePiece BPE "
        "(tokenizer/word_cache.py) and HF byte-level BPE (tokenizer/bytelevel_cache.py); same ids, 3-4x faster. "
        "--no-word-cache calls the tokenizer on whole documents."))
    partitions: int = field(default=1, metadata=opt(
        "Accepted for Megatron-LM compatibility and ignored: parallelism comes from --workers and the output is "
        "written once, with no partition files to merge."))
    log_interval: int = field(default=1000, metadata=opt(
        "Documents between progress log lines when stderr is not a terminal (a tqdm bar otherwise)."))
    on_bad_line: str = field(default="fail", metadata=opt(
        "A line that is not a JSON object with every key as a string: stop with file:line, or skip and count.",
        choices=("fail", "skip")))
    on_empty: str = field(default="skip", metadata=opt(
        "A text with no tokens: skip and count, keep as an empty document (Megatron-LM's behaviour), or stop.",
        choices=("skip", "keep", "fail")))
    dtype: str = field(default="auto", metadata=opt(
        "Token dtype in .bin: auto = Megatron's optimal_dtype(vocab_size) (uint16 below 65500, else int32).",
        choices=("auto", *sorted(_DTYPE_NAMES))))
    batch_bytes: int = field(default=1 << 20, metadata=opt(
        "Input bytes per worker task (whole lines; does not change the output)."))
    checkpoint_interval: float = field(default=60.0, metadata=opt(
        "Seconds between resumable checkpoints (fsync + state.json); does not change the output."))
    resume: bool = field(default=True, metadata=opt(
        "Resume an interrupted run from its work directory (--no-resume: delete it and start over)."))
    work_dir: str | None = field(default=None, metadata=opt(
        "Work directory for partial output (default: P.tmp-preprocess beside the output)."))
    max_issues_listed: int = field(default=10, metadata=opt(
        "How many bad-line locations the summary and the meta file list."))
    dist_timeout: float = field(default=600.0, metadata=opt(
        "torchrun only: seconds within which every rank must join, and after which a rank whose heartbeat stopped "
        "(died, node lost) makes the others fail instead of waiting (a rank that is alive may take hours)."))
    keep_parts: bool = field(default=False, metadata=opt(
        "torchrun only: keep the per-input part datasets (P.parts/) after the merge."))

    def resolved_work_dir(self) -> str:
        return self.work_dir or f"{self.output_prefix}.tmp-preprocess"

    def parts_dir(self) -> str:
        """Where a torchrun run writes one part dataset per input file (data/preprocess_dist.py)."""
        return f"{self.output_prefix}.parts"

    def validate(self) -> None:
        if not self.input:
            raise PreprocessError("no --input files given")
        if not self.output_prefix:
            raise PreprocessError("no --output-prefix given")
        if not self.json_keys:
            raise PreprocessError("no --json-keys given")
        if len(set(self.json_keys)) != len(self.json_keys):
            raise PreprocessError(f"--json-keys has duplicates: {self.json_keys}")
        if self.workers < 1 or self.tokenizer_threads < 1:
            raise PreprocessError(f"--workers and --tokenizer-threads must be >= 1, found {self.workers}, "
                                  f"{self.tokenizer_threads}")
        for p in self.input:
            if not os.path.isfile(p):
                raise PreprocessError(f"input file not found: {p}")


# ---- entry point -----------------------------------------------------------------------------------------------
def preprocess(cfg: PreprocessConfig, environ=None) -> dict[str, dict]:
    """Run (or resume) preprocessing; returns the meta record of each key's dataset. Under torchrun (WORLD_SIZE > 1
    in `environ`, os.environ by default) every rank calls this and all return the merged meta."""
    cfg.validate()
    spec = {"tokenizer_type": cfg.tokenizer_type, "tokenizer_model": cfg.tokenizer_model,
            "vocab_size": cfg.vocab_size, "tokenizer_threads": cfg.tokenizer_threads}
    tok = build_spec_tokenizer(spec)
    dtype = resolve_dtype(cfg.dtype, tok.vocab_size)
    if cfg.partitions != 1:
        log.info("--partitions is ignored: workers share one ordered pipeline (no partition files)")
    from ..utils.dist_work import rank_env

    env = rank_env(environ)
    t0 = time.monotonic()
    if env.distributed:
        from .preprocess_dist import preprocess_distributed

        metas = preprocess_distributed(cfg, tok, dtype, env)
        if env.rank != 0:
            return metas
    else:
        metas = run_single(cfg, tok, dtype)
    _log_summary(cfg, metas, time.monotonic() - t0)
    return metas


def _log_summary(cfg: PreprocessConfig, metas: dict[str, dict], seconds: float) -> None:
    for key, m in metas.items():
        c = m["counts"]
        log.info(f"{output_prefix_for(cfg.output_prefix, key)}: {c['documents']:,} documents, {c['tokens']:,} tokens "
                 f"({m['dataset']['dtype']}), max token id {m['max_token_id']}; empty documents skipped "
                 f"{c['empty_documents_skipped']}, kept {c['empty_documents_kept']}; blank lines {c['blank_lines']}")
    first = next(iter(metas.values()))
    for key, m in metas.items():
        if m["counts"]["documents"] == 0:
            prefix = output_prefix_for(cfg.output_prefix, key)
            c = m["counts"]
            log.warning(f"EMPTY DATASET: wrote {prefix}.bin (0 bytes), {prefix}.idx and {prefix}.meta.json with 0 "
                        f"documents and 0 tokens for JSON key {key!r}: the input(s) {list(cfg.input)} gave "
                        f"{c['lines']} line(s), {c['blank_lines']} blank, bad lines skipped "
                        f"{c['bad_lines_skipped'] or 'none'}, empty documents skipped "
                        f"{c['empty_documents_skipped']}. Check --input and --json-keys; training on it will fail.")
    bad = first["counts"]["bad_lines_skipped"]
    if bad:
        log.warning(f"skipped {sum(bad.values())} bad line(s): {bad}; first ones:\n  "
                    + "\n  ".join(first["bad_lines_listed"]))
    log.info(f"done in {seconds:.1f} s")
