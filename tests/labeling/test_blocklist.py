"""Blocklist labeler: the matching rule on hand-made token tables, and parity with a brute-force reference on real
(test-trained) SentencePiece and byte-level BPE tokenizations."""

from __future__ import annotations

import os

import numpy as np
import pytest

from megatron_tf.labeling.blocklist import BlocklistLabeler, read_terms

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _flags(pieces: list[bytes], terms: list[str], plurals: bool = True) -> list[int]:
    """Label one document made of `pieces` (token i = pieces[i]) with a table holding exactly those pieces."""
    table = sorted(set(pieces))
    ids = np.array([table.index(p) for p in pieces])
    (scores,) = BlocklistLabeler(terms, table, plurals=plurals).score_documents([ids])
    assert scores.dtype == np.float32 and set(np.unique(scores)) <= {0.0, 1.0}
    return scores.astype(int).tolist()


def _words(text: str) -> list[bytes]:
    """One token per character run split at spaces, the space attached to the following word (GPT-2 style)."""
    out, cur = [], ""
    for ch in text:
        if ch == " " and cur:
            out.append(cur.encode())
            cur = ""
        cur += ch
    return [*out, cur.encode()] if cur else out


# ---- the rule, token by token ----------------------------------------------------------------------------------
def test_word_boundaries():
    assert _flags(_words("this year the ear hurt"), ["ear"]) == [0, 0, 0, 1, 0]
    assert _flags(_words("earth hear Ear, (ear) ear_x ear2 éar"), ["ear"]) == [0, 0, 1, 1, 0, 0, 0]
    assert _flags([b"the", b" ear", b"ly", b" ear", b"."], ["ear"]) == [0, 0, 0, 1, 0]  # "early" is one word


def test_case_insensitive_including_non_ascii():
    assert _flags(_words("ASTHMA Asthma aStHmA"), ["asthma"]) == [1, 1, 1]
    assert _flags(_words("MÉNIÈRE'S DISEASE today"), ["Ménière's disease"]) == [1, 1, 0]


def test_multi_word_terms_and_whitespace_runs():
    assert _flags([b"heart", b"\n\t ", b"attack", b"s", b" now"], ["heart attack"]) == [1, 1, 1, 1, 0]
    assert _flags(_words("heart  attack"), ["heart attack"]) == [1, 1, 1]  # two spaces: tokens "heart", " ", " attack"
    assert _flags(_words("heartattack heart-attack heart"), ["heart attack"]) == [0, 0, 0]


def test_partial_token_match_marks_the_whole_token():
    assert _flags([b"the", b" flu", b"id", b" flu", b"."], ["flu"]) == [0, 0, 0, 1, 0]
    assert _flags([b"as", b"thma", b"tic"], ["asthma"]) == [0, 0, 0]  # "asthmatic" is another word
    assert _flags([b" asth", b"ma,", b" ok"], ["asthma"]) == [1, 1, 0]
    assert _flags([b"(ast", b"hma)"], ["asthma"]) == [1, 1]  # the brackets ride along inside the tokens


def test_multi_byte_characters_and_byte_fallback_pieces():
    # "é" split into its two UTF-8 bytes as two tokens (byte fallback), before and inside a match
    pieces = [b"caf", b"\xc3", b"\xa9", b" M", b"\xc3", b"\xa9", b"ni\xc3", b"\xa8re's", b" disease", b"!"]
    assert _flags(pieces, ["ménière's disease"]) == [0, 0, 0, 1, 1, 1, 1, 1, 1, 0]
    # text before the match with 2-, 3- and 4-byte characters shifts byte offsets correctly
    assert _flags([b"\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80 ", b"flu", b" x"], ["flu"]) == [0, 1, 0]
    # invalid UTF-8 bytes are one character each and do not join words
    assert _flags([b"\xff\xfe", b" ", b"flu", b"\xff"], ["flu"]) == [0, 0, 1, 0]


def test_plurals_wildcards_and_overlaps():
    assert _flags(_words("tumors tumores abscesses tumorous tumor"), ["tumor", "abscess"]) == [1, 1, 1, 0, 1]
    assert _flags(_words("tumors tumor"), ["tumor"], plurals=False) == [0, 1]
    assert _flags(_words("chemotherapy chemotherapeutic chemo"), ["chemotherap*"]) == [1, 1, 0]
    # a prefix term and a longer term with a hyphen sharing its stem: the longer match wins at that start
    assert _flags([b"ab", b"-", b"cd", b" x"], ["ab*", "ab-cd"]) == [1, 1, 1, 0]
    assert _flags([b"zz", b"-", b"cd", b" x"], ["z*", "zz-cd"]) == [1, 1, 1, 0]
    assert _flags(_words("blood pressure ulcer"), ["blood pressure", "pressure ulcer"]) == [1, 1, 1]
    assert _flags(_words("blood pressure ulcer"), ["blood pressure"]) == [1, 1, 0]
    assert _flags(_words("breast cancer cancer"), ["breast cancer", "cancer"]) == [1, 1, 1]


def test_tokens_without_text_are_never_marked_and_documents_do_not_join():
    assert _flags([b"asth", b"", b"ma", b""], ["asthma"]) == [1, 0, 1, 0]
    table = [b"", b"heart", b" attack", b" x"]
    lab = BlocklistLabeler(["heart attack"], table)
    a, b, c = lab.score_documents([np.array([3, 1]), np.array([2, 0]), np.array([1, 2, 0])])
    assert a.tolist() == [0, 0] and b.tolist() == [0, 0] and c.tolist() == [1, 1, 0]
    assert lab.score_documents([]) == []
    (empty,) = lab.score_documents([np.zeros(0, np.int64)])
    assert empty.shape == (0,) and empty.dtype == np.float32
    with pytest.raises(ValueError, match="token id 4 is outside the tokenizer's vocabulary \\[0, 4\\)"):
        lab.score_documents([np.array([1, 4])])


def test_terms_file_and_describe(tmp_path):
    p = tmp_path / "terms.txt"
    p.write_text("# comment\n\nAsthma\n  heart attack  \nasthma\nchemotherap*\n", encoding="utf-8")
    assert read_terms(str(p)) == ["Asthma", "heart attack", "asthma", "chemotherap*"]
    lab = BlocklistLabeler.from_file(str(p), _NullLike())
    d = lab.describe()
    assert d["labeler"] == "blocklist" and d["num_terms"] == 3 and d["terms_file"] == "terms.txt"
    import hashlib

    assert d["terms_sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="empty.txt: no terms"):
        read_terms(str(tmp_path / "empty.txt"))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_terms(str(tmp_path / "missing.txt"))


class _NullLike:
    @staticmethod
    def token_bytes_table():
        return [b"a", b"b"]


def test_demo_term_list_is_usable():
    terms = read_terms(os.path.join(REPO, "data", "demo", "medical_terms.txt"))
    assert 300 <= len(terms) <= 1000
    lower = {t.lower() for t in terms}
    assert {"pneumonia", "chemotherap*", "heart attack", "physician"} <= lower
    assert not {"cell", "gene", "protein", "enzyme", "dna"} & lower  # biology stays out of the forget list


# ---- parity with a brute-force reference on real tokenizations -------------------------------------------------
def _isword(c: str) -> bool:
    return c.isalnum() or c == "_"


def _reference_spans(text: str, terms: list[str], plurals: bool = True) -> list[tuple[int, int]]:
    """Every (start, end) character span matching some term under the documented rule, by direct scanning."""
    low = text.lower()
    assert len(low) == len(text)
    spans = []
    for term in terms:
        wild = term.endswith("*")
        words = term.rstrip("*").lower().split()
        for i in range(len(low)):
            if i > 0 and _isword(low[i - 1]):
                continue
            j, ok = i, True
            for k, w in enumerate(words):
                if k:
                    n = j
                    while n < len(low) and low[n].isspace():
                        n += 1
                    if n == j:
                        ok = False
                        break
                    j = n
                if not low.startswith(w, j):
                    ok = False
                    break
                j += len(w)
            if not ok:
                continue
            ends = [j]
            if wild:
                while j < len(low) and _isword(low[j]):
                    j += 1
                ends = [j]
            elif plurals:
                ends += [j + len(s) for s in ("s", "es") if low.startswith(s, j)]
            spans += [(i, e) for e in ends if e == len(low) or not _isword(low[e])]
    return spans


def _reference_flags(table: list[bytes], ids, terms: list[str]) -> list[int]:
    pieces = [table[i] for i in ids]
    data = b"".join(pieces)
    text = data.decode("utf-8", "surrogateescape")
    c2b = [0]
    for ch in text:
        c2b.append(c2b[-1] + len(ch.encode("utf-8", "surrogateescape")))
    byte_spans = [(c2b[a], c2b[b]) for a, b in _reference_spans(text, terms)]
    flags, pos = [], 0
    for p in pieces:
        s, e = pos, pos + len(p)
        flags.append(int(e > s and any(s < be and e > bs for bs, be in byte_spans)))
        pos = e
    return flags


REF_TERMS = ["ear", "asthma", "heart attack", "tumor", "abscess", "chemotherap*", "blood pressure",
             "pressure ulcer", "Ménière's disease", "flu", "nurse", "insulin", "otitis media"]
POOL = ["ear", "Ear", "years", "earth", "asthma", "ASTHMATIC", "heart", "attack", "attacks", "tumors", "tumorous",
        "abscesses", "chemotherapy", "chemo", "blood", "pressure", "ulcer", "ulcers", "Ménière's", "disease", "flu",
        "influenza", "fluid", "nurse", "nurses", "nursery", "insulin", "otitis", "media", "café", "中文", "😀",
        "the", "and", "in", "of", "a", "x_ear", "ear2"]
SEPS = [" ", " ", " ", "  ", "\n", ", ", ". ", "-", "(", ")", "\t"]


def _random_texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 30))
        parts = []
        for _ in range(k):
            parts += [POOL[int(rng.integers(len(POOL)))], SEPS[int(rng.integers(len(SEPS)))]]
        out.append("".join(parts[: 2 * k - int(rng.integers(0, 2))]))
    return out


@pytest.mark.parametrize("which", ["sp", "hf"])
def test_matches_brute_force_reference_on_real_tokenizers(which, sp_tok, hf_tok):
    tok = sp_tok if which == "sp" else hf_tok
    table = tok.token_bytes_table()
    lab = BlocklistLabeler(REF_TERMS, table)
    texts = _random_texts(150, seed=7)
    docs = [np.array(tok.tokenize(t) + [tok.eod], dtype=np.int64) for t in texts]
    batch = lab.score_documents(docs)
    total = 0
    for d, s, t in zip(docs, batch, texts):
        ref = _reference_flags(table, d.tolist(), REF_TERMS)
        assert s.astype(int).tolist() == ref, t
        total += sum(ref)
    assert total > 100  # the random texts really contain matches
    # one document at a time gives the same as the batch
    for d, s in zip(docs[:20], batch[:20]):
        np.testing.assert_array_equal(lab.score_documents([d])[0], s)


def test_real_tokenizer_known_sentence(sp_tok):
    lab = BlocklistLabeler(["pneumonia", "amoxicillin"], sp_tok.token_bytes_table())
    text = "The patient was admitted with pneumonia and treated with amoxicillin for seven days."
    ids, offs = sp_tok.tokenize_with_offsets(text)
    (s,) = lab.score_documents([np.array(ids)])
    covered = "".join(text[a:b] for (a, b), f in zip(offs, s) if f).replace(" ", "")
    assert covered == "pneumoniaamoxicillin"


# ---- held-out terms (--terms-split K/N --split-seed S) ---------------------------------------------------------
def test_terms_split_partitions_and_groups_related_terms():
    from megatron_tf.labeling.blocklist import normalise_term, split_terms

    terms = read_terms(os.path.join(REPO, "data", "demo", "medical_terms.txt"))
    unique = {normalise_term(t) for t in terms}
    for seed in (0, 1):
        for n in (2, 3):
            parts = [split_terms(terms, f"{k}/{n}", seed) for k in range(1, n + 1)]
            assert sum(len(p) for p in parts) == len(unique)  # disjoint ...
            assert set().union(*map(set, parts)) == unique  # ... and covering
            assert all(abs(len(p) - len(unique) / n) < 0.15 * len(unique) / n for p in parts)  # balanced
    a0, a1 = split_terms(terms, "1/2", 0), split_terms(terms, "1/2", 1)
    assert a0 != a1 and split_terms(list(reversed(terms)), "1/2", 0) == a0  # seeded; file order does not matter
    # a term and its plural, a stem and what it matches, a multi-word term and its words: always the same part
    toy = ["tumor", "tumors", "chemotherap*", "Chemotherapy", "blood  pressure", "pressure", "asthma", "fever"]
    for seed in range(20):
        half = set(split_terms(toy, "1/2", seed))
        for group in (["tumor", "tumors"], ["chemotherap*", "chemotherapy"], ["blood pressure", "pressure"]):
            assert len(half & set(group)) in (0, len(group))


def test_terms_split_bad_values_name_the_flag():
    from megatron_tf.labeling.blocklist import split_terms

    for bad in ("0/2", "3/2", "1-2", "a/b", "1/0", ""):
        with pytest.raises(ValueError, match=r"--terms-split must be K/N .* got"):
            split_terms(["fever", "asthma"], bad)
    with pytest.raises(ValueError, match=r"--terms-split 1/3 .*selects no term.*2 terms"):
        split_terms(["fever", "asthma"], "1/3")  # 2 groups in 3 parts: part 1 is empty


def test_annotate_with_the_two_halves_flags_disjoint_occurrences(tmp_path):
    from megatron_tf.data.indexed_dataset import write_dataset
    from megatron_tf.data.sidecar import KIND_TOKEN_SCORES, TokenScores, sidecar_path
    from megatron_tf.labeling.annotate import AnnotateConfig, main
    from megatron_tf.labeling.blocklist import split_terms
    from tests.labeling.tiny_tokenizers import CORPUS, train_sp

    tok = train_sp(str(tmp_path))
    terms_path = str(tmp_path / "terms.txt")
    terms = ["patient", "fever", "asthma", "insulin", "diabetes", "surgery", "vaccine", "infection", "doctor",
             "hospital", "treatment", "symptom", "disease", "blood", "heart", "cancer"]
    with open(terms_path, "w") as f:
        f.write("\n".join(terms) + "\n")
    docs = [tok.tokenize(t) + [tok.eod] for t in CORPUS]
    ds = write_dataset(str(tmp_path / "c_text_document"), docs, dtype=np.uint16)
    base = ["--data-prefix", ds.path_prefix, "--terms", terms_path, "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", tok.path, "--no-progress", "--split-seed", "7"]
    q = {}
    for k in (1, 2):
        assert main([*base, "--terms-split", f"{k}/2", "--name", f"half{k}"]) == 0
        ts = TokenScores(sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES, f"half{k}"), ds)
        q[k] = np.asarray(ts.q) > 0
        lab = ts.metadata["labeler"]
        assert (lab["terms_split"], lab["split_seed"], lab["num_terms_file"]) == (f"{k}/2", 7, len(terms))
        assert lab["num_terms"] == len(split_terms(terms, f"{k}/2", 7))
    assert main([*base[:-2], "--name", "all"]) == 0
    full = np.asarray(TokenScores(sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES, "all"), ds).q) > 0
    assert q[1].any() and q[2].any()
    assert not (q[1] & q[2]).any()  # these terms never overlap in text: the halves flag disjoint tokens
    np.testing.assert_array_equal(q[1] | q[2], full)  # and together everything the whole list flags
    with pytest.raises(ValueError, match="--terms-split needs --labeler blocklist"):
        AnnotateConfig(labeler="sae", terms_split="1/2")
    assert main([*base, "--terms-split", "5/4"]) == 2
