"""Tokenizers behind one interface, with three reserved tokens found by their exact strings.

- `<|endoftext|>`: end of document (appended by preprocessing with --append-eod).
- `<|hidden|>`: the placeholder that `--token-filter remove` puts in place of forget input tokens.
- `<|pad|>`: padding (evaluation batches, RMU, finetuning).

Filtering never compares token values: masks are applied by position. The reserved ids are checked once at start-up
(distinct, inside the vocabulary); a tokenizer that lacks one of them is rejected with an error naming it.

Reserved strings in document *text* are never turned into reserved ids: SentencePiece models are trained with them as
control symbols (never produced by encoding text) and HF tokenizers encode special tokens in text as plain text
(`encode_special_tokens=True`). A document cannot inject an `<|endoftext|>` or `<|hidden|>` id.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence

EOD_TOKEN = "<|endoftext|>"
HIDDEN_TOKEN = "<|hidden|>"
PAD_TOKEN = "<|pad|>"
RESERVED_TOKENS = (EOD_TOKEN, HIDDEN_TOKEN, PAD_TOKEN)
_ROLE = {EOD_TOKEN: "end of document", HIDDEN_TOKEN: "removal placeholder", PAD_TOKEN: "padding"}


class TokenizerError(ValueError):
    pass


class Tokenizer(ABC):
    """Text <-> ids, with character offsets for label transfer between tokenizers."""

    type_name: str = ""
    path: str = ""

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """Id of an exact vocabulary entry, or None."""

    @abstractmethod
    def tokenize(self, text: str) -> list[int]: ...

    def tokenize_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.tokenize(t) for t in texts]

    @abstractmethod
    def tokenize_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and, per id, the [start, end) span of Python-string character indices it covers."""

    @abstractmethod
    def detokenize(self, ids: Sequence[int]) -> str: ...

    @abstractmethod
    def _fingerprint_bytes(self) -> bytes: ...

    def token_bytes_table(self) -> list[bytes]:
        """UTF-8 bytes each id stands for in the text, indexed by id: concatenating the entries of a token sequence
        gives the (normalized) text it encodes, so token i covers exactly the byte span of its own entry. Control and
        special tokens map to b"". Used to map text matches back to tokens without re-tokenizing."""
        raise NotImplementedError(f"{self.type_name} has no token byte table")

    # ---- reserved tokens -------------------------------------------------------------------------------------
    def _init_reserved(self) -> None:
        ids = {}
        for tok in RESERVED_TOKENS:
            i = self.token_to_id(tok)
            if i is None:
                raise TokenizerError(
                    f"tokenizer {self.path or self.type_name} ({self.type_name}) has no reserved token {tok!r} "
                    f"({_ROLE[tok]}); retrain it with tools/train_tokenizer.py or add {tok!r} as a special token"
                )
            ids[tok] = int(i)
        self._eod, self._hidden, self._pad = ids[EOD_TOKEN], ids[HIDDEN_TOKEN], ids[PAD_TOKEN]
        check_reserved_ids(self._eod, self._hidden, self._pad, self.vocab_size, self.path or self.type_name)

    @property
    def eod(self) -> int:
        return self._eod

    @property
    def hidden(self) -> int:
        return self._hidden

    @property
    def pad(self) -> int:
        return self._pad

    @property
    def fingerprint(self) -> str:
        """sha256 of the tokenizer's type and model content: stored in dataset metadata to catch a wrong vocab."""
        h = hashlib.sha256(self.type_name.encode())
        h.update(self._fingerprint_bytes())
        return h.hexdigest()

    def describe(self) -> dict:
        return {
            "type": self.type_name,
            "path": self.path,
            "vocab_size": self.vocab_size,
            "eod": self.eod,
            "hidden": self.hidden,
            "pad": self.pad,
            "fingerprint": self.fingerprint,
        }


def check_reserved_ids(eod: int, hidden: int, pad: int, vocab_size: int, where: str = "tokenizer") -> None:
    """The three reserved ids must differ and lie in [0, vocab_size)."""
    named = {"<|endoftext|>": eod, "<|hidden|>": hidden, "<|pad|>": pad}
    for name, i in named.items():
        if not 0 <= i < vocab_size:
            raise TokenizerError(f"{where}: reserved token {name} has id {i}, outside the vocabulary [0, {vocab_size})")
    if len(set(named.values())) != 3:
        raise TokenizerError(f"{where}: reserved token ids must be distinct, found {named}")


def _byte_to_char_offsets(text: str) -> list[int]:
    """byte index -> index of the character containing that byte (plus one sentinel for len(bytes))."""
    out = []
    for ci, ch in enumerate(text):
        out.extend([ci] * len(ch.encode("utf-8")))
    out.append(len(text))
    return out


class SentencePieceTokenizer(Tokenizer):
    type_name = "SentencePieceTokenizer"

    def __init__(self, model_path: str, num_threads: int = -1):
        import sentencepiece as spm

        if not os.path.isfile(model_path):
            raise TokenizerError(f"SentencePiece model not found: {model_path}")
        self.path = model_path
        self._sp = spm.SentencePieceProcessor(model_file=model_path)
        self._num_threads = num_threads
        self._init_reserved()

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    def token_to_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)
        # piece_to_id returns unk_id for unknown pieces
        if i == self._sp.unk_id() and self._sp.id_to_piece(i) != token:
            return None
        return int(i)

    def tokenize(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def tokenize_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts), num_threads=self._num_threads)

    def tokenize_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        proto = self._sp.encode(text, return_type="proto")
        b2c = _byte_to_char_offsets(text)
        ids, offs = [], []
        for p in proto.pieces:
            ids.append(int(p.id))
            b, e = int(p.begin), int(p.end)
            start = b2c[b]
            end = b2c[e - 1] + 1 if e > b else start
            if e == b and start < len(text) and self._sp.is_byte(p.id):
                # byte fallback: SentencePiece gives the leading byte pieces of a character an empty span at its
                # start and the last one the whole character; every byte piece belongs to that character
                end = start + 1
            offs.append((start, end))
        return ids, offs

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def _fingerprint_bytes(self) -> bytes:
        return self._sp.serialized_model_proto()

    def token_bytes_table(self) -> list[bytes]:
        """"\u2581" -> space, byte-fallback "<0xAB>" -> that byte, control -> b"", unknown -> "\u2047" (what
        SentencePiece's decoder prints for it). The dummy-prefix space of a text's first piece is kept."""
        sp, out = self._sp, []
        for i in range(self.vocab_size):
            piece = sp.id_to_piece(i)
            if sp.is_control(i):
                out.append(b"")
            elif sp.is_unknown(i):
                out.append("\u2047".encode())
            elif sp.is_byte(i):
                out.append(bytes([int(piece[3:5], 16)]))
            else:
                out.append(piece.replace("\u2581", " ").encode("utf-8"))
        return out


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` JSON file (tokenizer.json), or a directory holding one."""

    type_name = "HFTokenizer"

    def __init__(self, path: str):
        from tokenizers import Tokenizer as _HFTok

        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise TokenizerError(f"HF tokenizer file not found: {file}")
        self.path = file
        with open(file, "rb") as f:
            self._raw = f.read()
        try:
            self._tok = _HFTok.from_str(self._raw.decode("utf-8"))
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception
            raise TokenizerError(f"cannot parse HF tokenizer {file}: {e}") from e
        # Reserved strings inside document text are text, not control ids.
        self._tok.encode_special_tokens = True
        self._init_reserved()

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def token_to_id(self, token: str) -> int | None:
        i = self._tok.token_to_id(token)
        return None if i is None else int(i)

    def tokenize(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def tokenize_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def tokenize_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self._tok.encode(text, add_special_tokens=False)
        return list(enc.ids), [(int(a), int(b)) for a, b in enc.offsets]

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def _fingerprint_bytes(self) -> bytes:
        return self._raw

    def token_bytes_table(self) -> list[bytes]:
        """Byte-level BPE (GPT-2 alphabet, found as a ByteLevel decoder or pre-tokenizer): each character maps back to
        its byte. Metaspace/ByteFallback models (Llama style): "\u2581" -> space, "<0xAB>" -> that byte. WordPiece:
        "##x" -> "x", other pieces get a leading space. Special added tokens -> b"", other added tokens -> their text.
        Other decoders raise TokenizerError."""
        cfg = json.loads(self._raw)

        def types(node) -> set[str]:
            if not isinstance(node, dict):
                return set()
            found = {node.get("type", "")}
            for key in ("decoders", "pretokenizers"):
                for sub in node.get(key) or []:
                    found |= types(sub)
            return found

        dec, pre = types(cfg.get("decoder")), types(cfg.get("pre_tokenizer"))
        byte_level = "ByteLevel" in dec or "ByteLevel" in pre
        if not (byte_level or dec & {"Metaspace", "ByteFallback", "Replace", "WordPiece"}):
            raise TokenizerError(f"{self.path}: no token byte table for decoder {sorted(dec - {''})}")
        # GPT-2's byte-level alphabet: printable bytes stand for themselves, the other 68 bytes map to chr(256 + k).
        printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
        char_to_byte = {chr(b): b for b in printable}
        for k, b in enumerate(sorted(set(range(256)) - set(printable))):
            char_to_byte[chr(256 + k)] = b
        added = self._tok.get_added_tokens_decoder()
        out = []
        for i in range(self.vocab_size):
            tok = self._tok.id_to_token(i)
            if i in added:
                out.append(b"" if added[i].special else added[i].content.encode("utf-8"))
            elif tok is None:
                out.append(b"")
            elif byte_level and all(c in char_to_byte for c in tok):
                out.append(bytes(char_to_byte[c] for c in tok))
            elif "ByteFallback" in dec and len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
                out.append(bytes([int(tok[3:5], 16)]))
            elif "WordPiece" in dec:
                out.append(tok[2:].encode("utf-8") if tok.startswith("##") else b" " + tok.encode("utf-8"))
            else:
                out.append(tok.replace("\u2581", " ").encode("utf-8"))
        return out


class NullTokenizer(Tokenizer):
    """Megatron's NullTokenizer idea for tests and synthetic data: text is whitespace-separated integer ids.

    `vocab_size` counts everything; the last three ids are `<|endoftext|>`, `<|hidden|>`, `<|pad|>`.
    """

    type_name = "NullTokenizer"

    def __init__(self, vocab_size: int):
        if vocab_size < 4:
            raise TokenizerError(f"NullTokenizer needs vocab_size >= 4, got {vocab_size}")
        self._vocab_size = int(vocab_size)
        self.path = f"NullTokenizer(vocab_size={vocab_size})"
        self._init_reserved()

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def token_to_id(self, token: str) -> int | None:
        if token in RESERVED_TOKENS:
            return self._vocab_size - 3 + RESERVED_TOKENS.index(token)
        return None

    def tokenize(self, text: str) -> list[int]:
        return self.tokenize_with_offsets(text)[0]

    def tokenize_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        ids, offs, pos = [], [], 0
        for word in text.split():
            start = text.index(word, pos)
            pos = start + len(word)
            i = int(word)
            if not 0 <= i < self._vocab_size - 3:
                raise TokenizerError(f"NullTokenizer: id {i} outside [0, {self._vocab_size - 3})")
            ids.append(i)
            offs.append((start, pos))
        return ids, offs

    def detokenize(self, ids: Sequence[int]) -> str:
        return " ".join(str(int(i)) for i in ids)

    def _fingerprint_bytes(self) -> bytes:
        return json.dumps({"vocab_size": self._vocab_size}).encode()

    def token_bytes_table(self) -> list[bytes]:
        """Id i -> b"<i> " (decimal and a space, so a document reads as its detokenized text); reserved -> b""."""
        n = self._vocab_size - 3
        return [f"{i} ".encode() for i in range(n)] + [b""] * 3


_ALIASES = {
    "SentencePieceTokenizer": "sp",
    "GPTSentencePieceTokenizer": "sp",
    "Llama2Tokenizer": "sp",
    "HFTokenizer": "hf",
    "HuggingFaceTokenizer": "hf",
    "NullTokenizer": "null",
}
TOKENIZER_TYPES = tuple(_ALIASES)


def build_tokenizer(tokenizer_type: str, tokenizer_model: str | None = None, vocab_size: int | None = None,
                    **kwargs) -> Tokenizer:
    """Build a tokenizer from Megatron-style `--tokenizer-type` / `--tokenizer-model` (or `--vocab-size` for Null)."""
    kind = _ALIASES.get(tokenizer_type)
    if kind is None:
        raise TokenizerError(
            f"unknown --tokenizer-type {tokenizer_type!r}; expected one of {', '.join(TOKENIZER_TYPES)}")
    if kind == "null":
        if vocab_size is None:
            raise TokenizerError("NullTokenizer needs --vocab-size")
        return NullTokenizer(vocab_size)
    if not tokenizer_model:
        raise TokenizerError(f"--tokenizer-type {tokenizer_type} needs --tokenizer-model")
    if kind == "sp":
        return SentencePieceTokenizer(tokenizer_model, **kwargs)
    return HFTokenizer(tokenizer_model)
