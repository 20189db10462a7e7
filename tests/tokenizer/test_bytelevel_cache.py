"""The byte-level BPE chunk cache (tokenizer/bytelevel_cache.py) against the tokenizer itself: real text, edge cases,
probes around every Unicode code point, cache eviction, refused configurations and the first-batch check."""

import glob
import json
import os
import random

import numpy as np
import pytest

from megatron_tf.tokenizer.bytelevel_cache import ByteLevelChunkEncoder, check_bytelevel_cache, split_text
from megatron_tf.tokenizer.tokenizer import HFTokenizer
from megatron_tf.tokenizer.train import TrainTokenizerConfig, train_tokenizer
from megatron_tf.utils.jsonl import iter_texts

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "data", "demo")

EDGE = ["", " ", "  ", "   ", "a", " a", "a ", "a  b", "a   b", "\n a", "a \n b", "a\n\n b", "x\t y", "x \t  y",
        "trail\n", "trail \n", " \n", "\n", "don't", "it 's", "they 'll  've", "o'clock", "12 345  6", "a\u00a0 b",
        "a\x1c b", "a\x1f  b", "\u3000 y", "a\u2028 b", "a\u2029  b", "x\u0085 y", "x\u180e y", "x\u200b y",
        "x\ufeff y", "caf\u00e9 na\u0308ive", "\U0001f600 \U0001f600  ok", "\u4e2d\u6587 \u5b57",
        "<|endoftext|> x <|pad|>", "a <|hidden|>b", "\r\n line \r\n", "tab\tsep\t value", "end with space "]


@pytest.fixture(scope="module")
def tok_json(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("bl") / "tokenizer.json")
    train_tokenizer(TrainTokenizerConfig(input=[os.path.join(DEMO, "train", "general.jsonl.xz")], output=out,
                                         type="hf", vocab_size=1024, num_threads=1))
    with open(out, encoding="utf-8") as f:
        return f.read()


def reference(tok_json: str, texts, dtype=np.uint16) -> list[bytes]:
    tok = HFTokenizer.__new__(HFTokenizer)  # the project's HF tokenizer on the same JSON text
    from tokenizers import Tokenizer

    tok._tok = Tokenizer.from_str(tok_json)
    tok._tok.encode_special_tokens = True
    return [np.array(ids, dtype=dtype).tobytes() for ids in HFTokenizer.tokenize_batch(tok, texts)]


def cached(enc: ByteLevelChunkEncoder, texts, dtype=np.uint16) -> list[bytes]:
    tokens, lengths = enc.encode_batch(texts, dtype)
    assert tokens.dtype == dtype and lengths.sum() == tokens.size
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [tokens[a:b].tobytes() for a, b in zip(bounds[:-1], bounds[1:])]


def test_trained_tokenizer_qualifies(tok_json):
    assert check_bytelevel_cache(tok_json) is None


def test_split_is_a_partition_of_the_text():
    for t in EDGE:
        head, words = split_text(t)
        assert head + "".join(" " + w for w in words) == t
        for w in words[:-1]:  # every cut is a space after a non-whitespace character
            assert w and not w[-1].isspace()
        if words:  # the first cut: at the start (no previous character) or after a non-whitespace character
            assert head == "" or not head[-1].isspace()


def test_edge_cases_equal_tokenizer(tok_json):
    enc = ByteLevelChunkEncoder(tok_json)
    assert cached(enc, EDGE) == reference(tok_json, EDGE)
    assert cached(enc, EDGE, np.int32) == reference(tok_json, EDGE, np.int32)  # dtype change clears the cache


def test_real_text_equals_tokenizer_with_eviction(tok_json):
    files = sorted(glob.glob(os.path.join(DEMO, "heldout", "*.jsonl.xz")))
    texts = list(iter_texts(files, "text", "skip"))[:600]
    assert sum(map(len, texts)) > 500_000
    enc = ByteLevelChunkEncoder(tok_json, max_chunks=2000)  # forces evictions between batches
    got = []
    for i in range(0, len(texts), 50):
        got += cached(enc, texts[i:i + 50])
    assert got == reference(tok_json, texts)


def probes(code_points) -> list[str]:
    """Each code point c in the contexts where a cut could go wrong: before/after spaces, runs, tabs, digits,
    contractions, newlines."""
    docs, parts = [], []
    for cp in code_points:
        c = chr(cp)
        parts.append(f"a{c} b{c}  {c}\t {c}1 {c}'s {c}{c} x {c}\n {c}  ")
        if len(parts) == 256:
            docs.append("".join(parts))
            parts = []
    return docs + (["".join(parts)] if parts else [])


def _all_code_points():
    return [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]


def test_probes_around_code_points_equal_tokenizer(tok_json):
    """Latin, every str.isspace character, the usual suspects (U+180E, U+200B, U+FEFF, ...) and a random sample."""
    spaces = [cp for cp in range(0x110000) if chr(cp).isspace()]
    cps = sorted(set(range(0x250)) | set(spaces) | {0x180E, 0x200B, 0x2060, 0xFEFF, 0x85, 0x1F600}
                 | set(random.Random(0).sample(_all_code_points(), 3000)))
    docs = probes(cps)
    assert cached(ByteLevelChunkEncoder(tok_json), docs) == reference(tok_json, docs)


@pytest.mark.slow
def test_every_code_point_the_regex_engine_calls_whitespace_is_python_whitespace(tok_json):
    r"""The one property of the tokenizer's regex engine the cut relies on (module doc), for all 1.1M code points:
    if c is not str.isspace, the tokenizer's pre-tokenizer ends a pre-token after c in "x" + c + "  y" (were c its
    \s, c and the next space would share a whitespace pre-token)."""
    from tokenizers import Tokenizer

    pre = Tokenizer.from_str(tok_json).pre_tokenizer
    cps = _all_code_points()
    step = 1 << 16
    wrong = []
    for lo in range(0, len(cps), step):
        block = cps[lo:lo + step]
        text = "".join(f"x{chr(cp)}  y" for cp in block)
        ends = {end for _, (_, end) in pre.pre_tokenize_str(text)}
        # offsets are in characters; probe k puts c at 5k + 1
        wrong += [cp for k, cp in enumerate(block) if not chr(cp).isspace() and 5 * k + 2 not in ends]
    assert wrong == []


def _edit(tok_json: str, fn) -> str:
    cfg = json.loads(tok_json)
    fn(cfg)
    return json.dumps(cfg)


@pytest.mark.parametrize("edit, reason", [
    (lambda c: c.update(normalizer={"type": "NFKC"}), "normalizer"),
    (lambda c: c["pre_tokenizer"].update(add_prefix_space=True), "add_prefix_space"),
    (lambda c: c["pre_tokenizer"].update(use_regex=False), "use_regex"),
    (lambda c: c.update(pre_tokenizer={"type": "Whitespace"}), "not ByteLevel"),
    (lambda c: c["model"].update(dropout=0.1), "dropout"),
    (lambda c: c["added_tokens"].append({"id": 1023, "content": "foo bar", "single_word": False, "lstrip": False,
                                         "rstrip": False, "normalized": False, "special": False}), "non-special"),
    (lambda c: c.update(truncation={"max_length": 5, "strategy": "LongestFirst", "stride": 0,
                                    "direction": "Right"}), "truncation"),
])
def test_configs_where_it_would_not_be_exact_are_refused(tok_json, edit, reason):
    edited = _edit(tok_json, edit)
    why = check_bytelevel_cache(edited)
    assert why is not None and reason in why
    with pytest.raises(ValueError, match=reason):
        ByteLevelChunkEncoder(edited)


def test_non_special_added_token_really_breaks_the_cut(tok_json):
    """The refusal above is needed: an added token spanning a space is matched across the cut."""
    from tokenizers import AddedToken, Tokenizer

    t = Tokenizer.from_str(tok_json)
    t.add_tokens([AddedToken("foo bar", special=False)])
    whole = t.encode("x foo bar y", add_special_tokens=False).ids
    pieces = [i for c in ("x", " foo", " bar", " y") for i in t.encode(c, add_special_tokens=False).ids]
    assert whole != pieces


def test_first_batch_is_checked_against_the_tokenizer(tok_json):
    enc = ByteLevelChunkEncoder(tok_json)
    enc._words["world"] = np.array([5], dtype=np.uint16).tobytes()  # a wrong entry, as a differing split would give
    enc._dtype = np.dtype(np.uint16)
    with pytest.raises(RuntimeError, match="differs from the tokenizer"):
        enc.encode_batch(["hello world"], np.uint16)
    ok = ByteLevelChunkEncoder(tok_json, verify_chars=0)
    ok.encode_batch(["warm up"], np.uint16)
    ok._words["world"] = np.array([5], dtype=np.uint16).tobytes()
    assert ok.encode_batch(["hello world"], np.uint16)[0][-1] == 5  # no check after the budget: the test above bites
