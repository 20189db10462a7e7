"""Blocklist labeler: marks every token that overlaps a blocklisted term in the decoded document text.

This is the simple baseline of the "Deep Ignorance" filtering pipeline (a keyword blocklist before a learned
classifier). Scores are 1.0 for marked tokens and 0.0 otherwise.

Matching rule (docs/sidecar_format.md repeats it):
- terms file: UTF-8, one term per line; blank lines and lines starting with "#" are ignored; surrounding whitespace is
  stripped; duplicates (ignoring case) count once.
- case-insensitive: terms and text are compared in lower case (`str.lower()`), "Asthma" matches "asthma" and
  "ÉCZÉMA" matches "éczéma". (Text whose lower-casing changes its length, e.g. with "İ", is matched with
  `re.IGNORECASE` instead, which gives the same matches up to such rare characters.)
- whole words: a match may not be directly preceded or followed by a word character (Unicode letter, digit or
  underscore). "ear" does not match "year" or "earth"; "ear" matches "ear," and "(ear)".
- a space inside a term matches any run of whitespace (newlines included): "heart attack" matches "heart\\n attack".
- plurals (on by default): a term also matches with "s" or "es" appended ("tumor" -> "tumors", "abscess" ->
  "abscesses"); nothing else ("diagnosis" does not give "diagnoses": list both if you want both).
- a term ending in "*" is a prefix: "chemotherap*" matches "chemotherapy" and "chemotherapeutic" (any run of word
  characters after the stem, including none).
- overlapping matches are all marked: with terms "blood pressure" and "pressure ulcer", every token of "blood
  pressure ulcer" is marked (the regex reports the longest match at every word start, via a lookahead).

Text comes from the tokens themselves (`TokenBytes`): token i covers exactly bytes [off[i], off[i+1]) of the document,
and a token is marked when its byte span overlaps a match by at least one byte; a match covering part of a token marks
the whole token. Tokens that stand for no text (end of document, other control symbols) are never marked.

Held-out terms (`--terms-split K/N --split-seed S`, `split_terms`): the labeler uses only part K of N of the terms, so
one half can filter the training data and the other half label the evaluation's tokens (docs/evaluation.md,
"Held-out terms"). Terms are normalised (lower case, whitespace runs -> one space, duplicates once) and grouped so
that terms that can match the same words go to the same part: a term and its plural ("tumor", "tumors"), a "*" stem
and the terms it matches ("chemotherap*", "chemotherapy"), and a multi-word term and the terms that are a run of its
words ("blood pressure", "pressure"). Each group is keyed by sha256("<S>\\x1f<smallest member>"); the groups sorted
by key are cut into N contiguous runs of equal size (+-1 group), part K is run K (1-based). So the N parts partition
the terms, the assignment depends only on the normalised term set and S (not on the file's order), and parts of
different S are independent permutations. Terms of different groups can still mark one token when their matches
overlap in the text ("blood pressure" and "pressure ulcer" in "blood pressure ulcer").

Efficiency: all terms go into one compiled regex shaped as a trie (shared prefixes merged, longer continuations tried
first), so the engine does one pass over the text with at most one branch per character level, instead of one
alternative per term at each position; documents of a chunk are joined with a NUL separator (no term contains NUL, so
matches never cross documents) and matched with a single `finditer` call.
"""

from __future__ import annotations

import hashlib
import os
import re

import numpy as np

from .token_text import TokenBytes

_WS = "\\s+"  # trie atom for whitespace inside a term
_WILD = "\\w*"  # trie atom for a trailing "*"
_END = ""  # trie key marking the end of a term
_SEP = b"\x00"  # between documents of a batch


def read_terms(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"blocklist terms file not found: {path}")
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    terms = [ln.strip() for ln in lines]
    terms = [t for t in terms if t and not t.startswith("#")]
    if not terms:
        raise ValueError(f"{path}: no terms (expected one term per line, '#' comments)")
    return terms


def _atoms(term: str) -> tuple[str, ...]:
    """A term as regex atoms: escaped characters, `\\s+` for whitespace runs, `\\w*` for a trailing '*'."""
    wild = term.endswith("*")
    words = term.rstrip("*").split()
    if not words or "\x00" in term:
        raise ValueError(f"invalid blocklist term {term!r}")
    out: list[str] = []
    for k, w in enumerate(words):
        if k:
            out.append(_WS)
        out.extend(re.escape(c) for c in w.lower())
    if wild:
        out.append(_WILD)
    return tuple(out)


def _trie_regex(atom_seqs: list[tuple[str, ...]], plurals: bool) -> str:
    trie: dict = {}
    for seq in atom_seqs:
        node = trie
        for a in seq:
            node = node.setdefault(a, {})
        node[_END] = seq[-1] != _WILD and plurals

    def emit(node: dict) -> str:
        # The first alternative that succeeds wins, so the longest must come first. Literal children start with
        # distinct characters; a `\w*` child stops at the first non-word character, where a literal child that
        # succeeds ends too or goes further, so `\w*` follows the literals; ending here (optionally with a plural)
        # comes last. Otherwise sorted, for a deterministic pattern.
        alts = [a + emit(node[a]) for a in sorted((k for k in node if k != _END), key=lambda k: (k == _WILD, k))]
        if _END in node:
            if node[_END]:
                alts.append("(?:es|s)?")
            else:
                alts.append("")
        return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"

    return emit(trie)


def compile_terms(terms: list[str], plurals: bool = True, flags: int = 0) -> re.Pattern:
    """One regex reporting, at every word start, the longest term match there (as group 1), for lower-cased text.

    Measured on 8.4 MB of MedQuAD text with the ~480 demo terms (2-vCPU Xeon, Python 3.11, one process): 25 MB/s
    on lower-cased text, 13.8 MB/s with re.IGNORECASE, 1.2 MB/s for a flat alternation of the terms sorted longest
    first (the regex engine tries every alternative at every position).
    """
    seqs = sorted({_atoms(t) for t in terms})
    return re.compile(f"(?<!\\w)(?=({_trie_regex(seqs, plurals)})(?!\\w))", flags)


def char_to_byte_offsets(text: str) -> np.ndarray | None:
    """int64[len(text) + 1]: UTF-8 byte offset of each character (None when text is ASCII: the identity).

    `text` was decoded with errors="surrogateescape", so lone surrogates U+DC80..U+DCFF stand for one raw byte each.
    """
    if text.isascii():
        return None
    cp = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    n = np.where(cp < 0x80, 1, np.where(cp < 0x800, 2, np.where(cp < 0x10000, 3, 4)))
    n[(cp >= 0xDC80) & (cp <= 0xDCFF)] = 1
    out = np.zeros(cp.size + 1, dtype=np.int64)
    np.cumsum(n, out=out[1:])
    return out


def mark_spans(offsets: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """bool[n]: token i (bytes [offsets[i], offsets[i+1])) overlaps some byte span [starts[k], ends[k]).

    Empty tokens are never marked. Vectorised: the first and last token of each span by binary search, then a
    difference array.
    """
    n = offsets.size - 1
    marks = np.zeros(n, dtype=bool)
    if starts.size == 0 or n == 0:
        return marks
    first = np.searchsorted(offsets[1:], starts, side="right")  # first token ending after the span start
    stop = np.searchsorted(offsets[:-1], ends, side="left")  # one past the last token starting before the span end
    diff = np.bincount(first, minlength=n + 1) - np.bincount(stop, minlength=n + 1)
    marks = np.cumsum(diff[:-1]) > 0
    marks &= offsets[1:] > offsets[:-1]
    return marks


def normalise_term(term: str) -> str:
    """The form terms are compared in: lower case, whitespace runs as one space, stripped."""
    return " ".join(term.lower().split())


def parse_terms_split(split: str, flag: str = "--terms-split") -> tuple[int, int]:
    """'K/N' -> (K, N) with 1 <= K <= N; a clear error naming the flag otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(split))
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ValueError(f"{flag} must be K/N with integers 1 <= K <= N (e.g. 1/2), got {split!r}")
    return int(m.group(1)), int(m.group(2))


def _term_groups(unique: list[str]) -> list[list[str]]:
    """Groups of terms that can match the same words (module docstring), by union-find."""
    parent = {t: t for t in unique}

    def find(t: str) -> str:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    present = set(unique)
    stems = [t[:-1] for t in unique if t.endswith("*")]
    for t in unique:
        words = t.rstrip("*").split()
        for suffix in ("s", "es"):  # plural of another term
            if t.endswith(suffix) and t[: -len(suffix)] in present:
                union(t, t[: -len(suffix)])
        for stem in stems:  # matched by a "*" stem
            rest = t.rstrip("*")[len(stem):].split(" ")[0]
            if t != stem + "*" and t.startswith(stem) and re.fullmatch(r"\w*", rest):
                union(t, stem + "*")
        for i in range(len(words)):  # a run of its words is another term (or that term's plural)
            for j in range(i + 1, len(words) + 1):
                run = " ".join(words[i:j])
                if (i, j) == (0, len(words)):
                    continue
                for cand in (run, run + "*", run[:-1] if run.endswith("s") else None,
                             run[:-2] if run.endswith("es") else None):
                    if cand in present:
                        union(t, cand)
    groups: dict[str, list[str]] = {}
    for t in unique:
        groups.setdefault(find(t), []).append(t)
    return list(groups.values())


def split_terms(terms: list[str], split: str, seed: int = 0, source: str = "terms") -> list[str]:
    """Part K of N of the normalised terms (module docstring); sorted. An error when the part is empty."""
    k, n = parse_terms_split(split)
    unique = sorted({normalise_term(t) for t in terms})
    groups = sorted(_term_groups(unique),
                    key=lambda g: hashlib.sha256(f"{seed}\x1f{min(g)}".encode()).hexdigest())
    lo, hi = (k - 1) * len(groups) // n, k * len(groups) // n
    part = sorted(t for g in groups[lo:hi] for t in g)
    if not part:
        raise ValueError(f"--terms-split {split} (--split-seed {seed}) selects no term of {source}: it has "
                         f"{len(unique)} terms in {len(groups)} groups (terms that can match the same words count "
                         f"as one); use a smaller N")
    return part


class BlocklistLabeler:
    """`TokenLabeler` over a term list. Build with `from_file(terms_path, tokenizer)` or directly."""

    name = "blocklist"

    def __init__(self, terms: list[str], token_bytes: TokenBytes | list[bytes], plurals: bool = True,
                 terms_file: str | None = None, terms_sha256: str | None = None, terms_split: str | None = None,
                 split_seed: int = 0):
        table = token_bytes if isinstance(token_bytes, list) else None
        if table is None:
            tb = token_bytes
            table = [tb.data[tb.start[v] : tb.start[v + 1]].tobytes() for v in range(tb.vocab_size)]
        self.vocab_size = len(table)
        self._sep_id = self.vocab_size
        self._bytes = TokenBytes([*table, _SEP])  # one extra id: the document separator
        unique = sorted({t.lower() for t in terms})
        self.terms_sha256 = terms_sha256 or hashlib.sha256("\n".join(unique).encode("utf-8")).hexdigest()
        self.terms_split, self.split_seed = terms_split, int(split_seed)
        self.num_terms_all = len(unique)
        if terms_split is not None:
            k, n = parse_terms_split(terms_split)
            self.terms_split = f"{k}/{n}"
            unique = split_terms(unique, self.terms_split, self.split_seed, terms_file or "the term list")
        self.num_terms = len(unique)
        self.plurals = plurals
        self.terms_file = terms_file
        self.pattern = compile_terms(unique, plurals)
        self.pattern_ignorecase = compile_terms(unique, plurals, re.IGNORECASE)

    @classmethod
    def from_file(cls, path: str, tokenizer, plurals: bool = True, terms_split: str | None = None,
                  split_seed: int = 0) -> BlocklistLabeler:
        """`terms_split` 'K/N' (with `split_seed`): label with part K of N of the terms (`split_terms`)."""
        with open(path, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        return cls(read_terms(path), tokenizer.token_bytes_table(), plurals, terms_file=os.path.basename(path),
                   terms_sha256=sha, terms_split=terms_split, split_seed=split_seed)

    def describe(self) -> dict:
        """Identity of the labels (sidecar metadata). terms_sha256 is the whole file's; with a split, terms_split
        ("K/N"), split_seed and num_terms_file are added and num_terms counts the part's terms."""
        d = {"labeler": self.name, "terms_file": self.terms_file, "terms_sha256": self.terms_sha256,
             "num_terms": self.num_terms, "plurals": self.plurals, "case_insensitive": True,
             "match": "whole words; whitespace in a term matches any whitespace run; '*' suffix = prefix"}
        if self.terms_split is not None:
            d.update(terms_split=self.terms_split, split_seed=self.split_seed, num_terms_file=self.num_terms_all)
        return d

    def match_spans(self, text: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Byte spans [start, end) of all term matches in UTF-8 `text` (longest match at each word start)."""
        s = text.decode("utf-8", errors="surrogateescape")
        low = s.lower()
        if len(low) == len(s):
            spans = [m.span(1) for m in self.pattern.finditer(low)]
        else:
            spans = [m.span(1) for m in self.pattern_ignorecase.finditer(s)]
        if not spans:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        arr = np.asarray(spans, dtype=np.int64)
        c2b = char_to_byte_offsets(s)
        if c2b is not None:
            arr = c2b[arr]
        return arr[:, 0], arr[:, 1]

    def mark_tokens(self, ids: np.ndarray) -> np.ndarray:
        """bool per token of one id sequence."""
        text, offsets = self._bytes.decode(ids)
        return mark_spans(offsets, *self.match_spans(text))

    def score_documents(self, docs: list[np.ndarray]) -> list[np.ndarray]:
        if not docs:
            return []
        lens = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        ids = np.concatenate([np.asarray(d, dtype=np.int64).ravel() for d in docs])
        if ids.size and (int(ids.max()) >= self.vocab_size or int(ids.min()) < 0):
            bad = int(ids.max()) if int(ids.max()) >= self.vocab_size else int(ids.min())
            raise ValueError(f"token id {bad} is outside the tokenizer's vocabulary [0, {self.vocab_size})")
        # One separator after each document; a single decode + regex pass for the whole batch.
        is_sep = np.zeros(ids.size + len(docs), dtype=bool)
        is_sep[np.cumsum(lens + 1) - 1] = True
        flat = np.full(is_sep.size, self._sep_id, dtype=np.int64)
        flat[~is_sep] = ids
        marks = self.mark_tokens(flat)[~is_sep]
        scores = marks.astype(np.float32)
        return np.split(scores, np.cumsum(lens)[:-1])
