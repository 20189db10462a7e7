"""Train a tokenizer with the three reserved tokens on JSONL corpora (tools/train_tokenizer.py).

`--type sp` (default): SentencePiece BPE, lossless on normal text:
- identity normalization, `add_dummy_prefix=False`, `remove_extra_whitespaces=False`: decode(encode(t)) == t.
  SentencePiece's defaults are not lossless: NFKC rewrites characters ("ﬁ" -> "fi", full-width digits) and
  whitespace folding turns "a  b" into "a b" and drops leading and trailing spaces. The dummy prefix on its own is
  lossless (checked with sentencepiece 0.2: it encodes " Hello" as "▁", "▁H", ... and decode drops the one "▁" it
  added), but that added "▁" covers no character of the text (offsets), and a document's ids stop being the
  concatenation of its words' ids, which the word cache relies on; we leave it off. Without it the first word of a
  document is encoded without a leading "▁" (like GPT-2's byte-level BPE). The one text that does not round-trip is
  a literal U+2581 ("▁"), which SentencePiece uses for the space and decodes as " ".
- byte fallback: characters outside the vocabulary become their UTF-8 bytes (`<0xNN>` pieces), never `<unk>`.
- `<|endoftext|>` is SentencePiece's eos piece (id 1), `<|pad|>` its pad piece (id 2), `<|hidden|>` a control symbol
  (id 3); `<unk>` is 0 and there is no bos. Control pieces are never produced from text. Making `<|endoftext|>` the eos
  piece means Megatron-LM's SentencePieceTokenizer (eod = eos_id) uses the same end-of-document id.
- no whitespace-only pieces and digits split: no piece spans a space, which keeps the word-cache encoder exact
  (tokenizer/word_cache.py) and runs of spaces cost one token per space.
- deterministic: fixed seed; documents are cut into training sentences at line breaks (SentencePiece skips
  sentences over `--max-sentence-length` bytes) in input order. Same input and options give the same model bytes,
  whatever `--num-threads` is.

`--type hf`: a Hugging Face `tokenizers` byte-level BPE (GPT-2 style: ByteLevel pre-tokenizer without prefix space,
ByteLevel decoder, so decode(encode(t)) == t for any text) with the reserved strings as special tokens (ids 0-2),
written as tokenizer.json and loaded by HFTokenizer (which encodes reserved strings inside text as plain text).

The model is written atomically (temporary name, fsync, rename).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..config.cli import opt
from ..utils.io import atomic_write
from ..utils.jsonl import iter_texts
from ..utils.logging import get_logger
from .tokenizer import (
    EOD_TOKEN,
    HIDDEN_TOKEN,
    PAD_TOKEN,
    RESERVED_TOKENS,
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
)

log = get_logger("megatron_tf.train_tokenizer")


@dataclass
class TrainTokenizerConfig:
    """Train a BPE tokenizer with <|endoftext|>, <|hidden|>, <|pad|> on JSONL corpora."""

    input: list[str] = field(default_factory=list, metadata=opt("Input JSONL files (plain, .gz, .xz or .zst)."))
    output: str = field(default="", metadata=opt(
        "Output file: a SentencePiece .model (--type sp) or a tokenizer.json (--type hf)."))
    type: str = field(default="sp", metadata=opt("sp: SentencePiece BPE; hf: HF tokenizers byte-level BPE.",
                                                 choices=("sp", "hf")))
    vocab_size: int = field(default=8192, metadata=opt(
        "Vocabulary size including the reserved tokens (and, for sp, <unk> and the 256 byte pieces)."))
    json_key: str = field(default="text", metadata=opt("JSON key holding the text."))
    on_bad_line: str = field(default="fail", metadata=opt("A line without a string under the key: stop or skip.",
                                                          choices=("fail", "skip")))
    character_coverage: float = field(default=0.9995, metadata=opt(
        "sp: fraction of characters covered by the vocabulary; the rarest fall back to bytes."))
    split_digits: bool = field(default=True, metadata=opt("sp: every digit is its own piece."))
    max_sentence_length: int = field(default=8192, metadata=opt(
        "sp: documents are cut at line breaks (and, for longer lines, spaces) into training sentences of at most "
        "this many UTF-8 bytes."))
    input_sentence_size: int = field(default=0, metadata=opt(
        "sp: train on a seeded sample of this many sentences (0: all)."))
    min_frequency: int = field(default=2, metadata=opt("hf: minimum pair frequency for a merge."))
    num_threads: int = field(default=2, metadata=opt("Training threads."))
    seed: int = field(default=1234, metadata=opt("sp: random seed (sentence sampling)."))


def training_sentences(texts: Iterator[str], max_bytes: int) -> Iterator[str]:
    """Cut documents into pieces of at most `max_bytes` UTF-8 bytes at line breaks (kept inside the pieces, so the
    vocabulary learns them), cutting over-long lines at a space (or anywhere, for a line without one)."""
    for text in texts:
        buf: list[str] = []
        size = 0
        for line in _lines(text):
            n = len(line.encode("utf-8"))
            if size + n > max_bytes and buf:
                yield "".join(buf)
                buf, size = [], 0
            while n > max_bytes:
                head, line = _cut(line, max_bytes)
                yield head
                n = len(line.encode("utf-8"))
            buf.append(line)
            size += n
        if buf:
            yield "".join(buf)


def _lines(text: str) -> list[str]:
    """Lines split on "\n" only (texts may hold U+2028), each keeping its "\n"."""
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _cut(line: str, max_bytes: int) -> tuple[str, str]:
    """Split `line` into a head of at most max_bytes UTF-8 bytes (ending after a space if there is one) and rest."""
    head = line.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
    sp = head.rfind(" ")
    if sp > 0:
        head = head[: sp + 1]
    return head, line[len(head):]


class _Texts:
    """The input texts; keeps an error raised while reading, which the trainers re-raise as their own."""

    def __init__(self, cfg: TrainTokenizerConfig):
        self.cfg = cfg
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            yield from iter_texts(self.cfg.input, self.cfg.json_key, self.cfg.on_bad_line)
        except BaseException as e:
            self.error = e
            raise

    def reraise(self, e: BaseException) -> None:
        if self.error is not None:
            raise self.error from None
        raise e


def train_sentencepiece(cfg: TrainTokenizerConfig) -> bytes:
    import sentencepiece as spm

    spm.set_random_generator_seed(cfg.seed)
    buf = io.BytesIO()
    texts = _Texts(cfg)
    try:
        _train_sp(spm, cfg, training_sentences(iter(texts), cfg.max_sentence_length), buf)
    except Exception as e:  # noqa: BLE001 - SentencePiece wraps the reader's error in a RuntimeError
        texts.reraise(e)
    # The thread count does not change the pieces (checked: 1 vs 2 threads give the same pieces and scores) but
    # SentencePiece stores it in the model's trainer_spec; drop it so the model bytes do not depend on it.
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(buf.getvalue())
    m.trainer_spec.ClearField("num_threads")
    return m.SerializeToString()


def _train_sp(spm, cfg: TrainTokenizerConfig, sentences: Iterator[str], buf: io.BytesIO) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences,
        model_writer=buf,
        model_type="bpe",
        vocab_size=cfg.vocab_size,
        unk_id=0,
        unk_piece="<unk>",
        eos_id=1,
        eos_piece=EOD_TOKEN,
        pad_id=2,
        pad_piece=PAD_TOKEN,
        bos_id=-1,
        control_symbols=[HIDDEN_TOKEN],
        byte_fallback=True,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=False,
        split_digits=cfg.split_digits,
        character_coverage=cfg.character_coverage,
        max_sentence_length=cfg.max_sentence_length,
        input_sentence_size=cfg.input_sentence_size,
        shuffle_input_sentence=True,
        num_threads=cfg.num_threads,
        minloglevel=2,
    )


def train_hf(cfg: TrainTokenizerConfig) -> bytes:
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(RESERVED_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = _Texts(cfg)
    try:
        tok.train_from_iterator(iter(texts), trainer=trainer)
    except Exception as e:  # noqa: BLE001 - tokenizers wraps the reader's error
        texts.reraise(e)
    return (tok.to_str(pretty=True) + "\n").encode("utf-8")


def train_tokenizer(cfg: TrainTokenizerConfig) -> Tokenizer:
    """Train, write `cfg.output` atomically, load it back through the project's tokenizer classes and return it."""
    if not cfg.input:
        raise ValueError("no --input files given")
    if not cfg.output:
        raise ValueError("no --output given")
    model = train_sentencepiece(cfg) if cfg.type == "sp" else train_hf(cfg)
    with atomic_write(cfg.output) as f:
        f.write(model)
    tok = SentencePieceTokenizer(cfg.output) if cfg.type == "sp" else HFTokenizer(cfg.output)
    log.info(f"wrote {cfg.output}: {tok.type_name}, vocab {tok.vocab_size}, eod {tok.eod}, hidden {tok.hidden}, "
             f"pad {tok.pad}, fingerprint {tok.fingerprint[:16]}")
    return tok
