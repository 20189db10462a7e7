"""Tokenizer training (megatron_tf/tokenizer/train.py): reserved tokens, losslessness, offsets, determinism, and the
tokenizer classes' behaviour on the models it writes (both SentencePiece and HF)."""

import json
import os

import pytest
import sentencepiece as spm

from megatron_tf.tokenizer.tokenizer import (
    EOD_TOKEN,
    HIDDEN_TOKEN,
    PAD_TOKEN,
    HFTokenizer,
    SentencePieceTokenizer,
    TokenizerError,
    build_tokenizer,
)
from megatron_tf.tokenizer.train import TrainTokenizerConfig, train_tokenizer, training_sentences

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = [os.path.join(REPO, "data", "demo", "train", "biology.jsonl.xz")]

SAMPLES = [
    "The cell membrane is a phospholipid bilayer.",
    "  two leading spaces, two  inner  spaces and two trailing  ",
    "Line one\nLine two\n\n\tTabbed line\r\nWindows line",
    "naïve café, Ångström, ﬁ ligature, full-width ＡＢＣ１２３",
    "日本語のテキスト, emoji 🧬🦠, math ∑ x² ≤ ∞",
    "U+2028\u2028separator and U+00A0\u00a0nbsp",
    "",
    " ",
    "digits 1234567890 and 3.14159",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    sp = train_tokenizer(TrainTokenizerConfig(input=CORPUS, output=str(d / "sp.model"), vocab_size=1024))
    hf = train_tokenizer(TrainTokenizerConfig(input=CORPUS, output=str(d / "tokenizer.json"), type="hf",
                                              vocab_size=1024))
    return {"sp": sp, "hf": hf, "dir": d}


@pytest.mark.parametrize("kind", ["sp", "hf"])
def test_reserved_ids_distinct_in_vocab_and_named(trained, kind):
    tok = trained[kind]
    ids = (tok.eod, tok.hidden, tok.pad)
    assert len(set(ids)) == 3 and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.token_to_id(EOD_TOKEN) == tok.eod
    assert tok.token_to_id(HIDDEN_TOKEN) == tok.hidden
    assert tok.token_to_id(PAD_TOKEN) == tok.pad
    assert tok.vocab_size == 1024
    if kind == "sp":
        assert ids == (1, 3, 2)
        sp = spm.SentencePieceProcessor(model_file=tok.path)
        assert sp.eos_id() == tok.eod and sp.pad_id() == tok.pad  # Megatron-LM's SentencePiece eod = eos_id
        assert all(sp.is_control(i) for i in ids)
    else:
        assert ids == (0, 1, 2)


@pytest.mark.parametrize("kind", ["sp", "hf"])
def test_reserved_strings_in_text_are_plain_text(trained, kind):
    tok = trained[kind]
    text = f"before {EOD_TOKEN} middle {HIDDEN_TOKEN}{PAD_TOKEN} after<|endoftext|>"
    ids = tok.tokenize(text)
    assert not {tok.eod, tok.hidden, tok.pad} & set(ids)
    assert tok.detokenize(ids) == text
    assert not {tok.eod, tok.hidden, tok.pad} & {i for b in tok.tokenize_batch([text, EOD_TOKEN]) for i in b}


@pytest.mark.parametrize("kind", ["sp", "hf"])
def test_round_trip_is_lossless(trained, kind):
    tok = trained[kind]
    for text in SAMPLES:
        assert tok.detokenize(tok.tokenize(text)) == text, repr(text)
    # and on real held-out text
    from megatron_tf.utils.jsonl import iter_texts

    texts = list(iter_texts([os.path.join(REPO, "data", "demo", "heldout", "general.jsonl.xz")]))[:5]
    for text, ids in zip(texts, tok.tokenize_batch(texts)):
        assert tok.detokenize(ids) == text


def test_sp_u2581_is_the_one_lossy_character(trained):
    tok = trained["sp"]
    assert tok.detokenize(tok.tokenize("a\u2581b")) == "a b"


def _check_offsets(tok, text):
    """Every token's span holds exactly the text it stands for; byte pieces of one character share its span."""
    ids, offs = tok.tokenize_with_offsets(text)
    assert len(ids) == len(offs)
    covered = []
    i = 0
    while i < len(ids):
        start, end = offs[i]
        j = i
        while j + 1 < len(ids) and offs[j + 1] == offs[i]:
            j += 1  # tokens sharing one span: the bytes of one character (or of one byte-level unit)
        surface = tok.detokenize(ids[i : j + 1])
        assert surface == text[start:end], (ids[i : j + 1], surface, text[start:end])
        covered.append((start, end))
        i = j + 1
    # spans are in order, do not overlap and cover the whole text
    assert covered[0][0] == 0 and covered[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:]))


@pytest.mark.parametrize("kind", ["sp", "hf"])
def test_offsets_map_to_the_right_characters(trained, kind):
    tok = trained[kind]
    for text in [s for s in SAMPLES if s.strip()] + ["a日本🧬ï x", "Ǆ𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ok"]:
        _check_offsets(tok, text)


def test_sp_byte_fallback_pieces_share_their_character(trained):
    tok = trained["sp"]
    text = "x🧬y"
    ids, offs = tok.tokenize_with_offsets(text)
    sp = spm.SentencePieceProcessor(model_file=tok.path)
    byte_spans = [o for i, o in zip(ids, offs) if sp.is_byte(i)]
    assert len(byte_spans) == 4 and set(byte_spans) == {(1, 2)}  # the 4 UTF-8 bytes of U+1F9EC, all at char 1


def test_training_is_deterministic(trained, tmp_path):
    for threads in (1, 2):
        out = tmp_path / f"sp{threads}.model"
        train_tokenizer(TrainTokenizerConfig(input=CORPUS, output=str(out), vocab_size=1024, num_threads=threads))
        assert out.read_bytes() == open(trained["sp"].path, "rb").read()
    out = tmp_path / "again.json"
    train_tokenizer(TrainTokenizerConfig(input=CORPUS, output=str(out), type="hf", vocab_size=1024))
    assert out.read_bytes() == open(trained["hf"].path, "rb").read()
    assert sorted(os.listdir(tmp_path)) == ["again.json", "sp1.model", "sp2.model"]  # no temporaries left


def test_sp_model_spec(trained):
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(open(trained["sp"].path, "rb").read())
    assert m.trainer_spec.model_type == pb.TrainerSpec.BPE and m.trainer_spec.byte_fallback
    assert m.normalizer_spec.name == "identity" and not m.normalizer_spec.add_dummy_prefix
    assert not m.normalizer_spec.remove_extra_whitespaces
    assert sum(p.type == pb.ModelProto.SentencePiece.BYTE for p in m.pieces) == 256


def test_hf_file_is_byte_level_with_special_tokens(trained):
    spec = json.load(open(trained["hf"].path))
    assert spec["pre_tokenizer"]["type"] == "ByteLevel" and spec["decoder"]["type"] == "ByteLevel"
    assert [(t["id"], t["content"], t["special"]) for t in spec["added_tokens"]] == [
        (0, EOD_TOKEN, True), (1, HIDDEN_TOKEN, True), (2, PAD_TOKEN, True)]
    tok = build_tokenizer("HFTokenizer", str(trained["dir"]))  # a directory holding tokenizer.json loads too
    assert tok.fingerprint == trained["hf"].fingerprint


def test_training_sentences_cut_at_lines_then_spaces():
    text = "aaaa\nbbbb\ncccc dddd eeee\n" + "f" * 25
    pieces = list(training_sentences(iter([text]), 12))
    assert "".join(pieces) == text
    assert all(len(p.encode()) <= 12 for p in pieces)
    assert pieces[:2] == ["aaaa\nbbbb\n", "cccc dddd "]
    multibyte = "é" * 10  # 20 bytes, no space: cut inside the line, never inside a character
    assert "".join(training_sentences(iter([multibyte]), 7)) == multibyte


# ---- tokenizers that lack a reserved token ----------------------------------------------------------------------
def test_sp_model_without_reserved_tokens_is_rejected(tmp_path):
    from megatron_tf.utils.jsonl import iter_texts

    texts = list(iter_texts(CORPUS))[:50]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(t[:2000] for t in texts),
                                   model_prefix=str(tmp_path / "plain"), vocab_size=300, model_type="bpe",
                                   minloglevel=2)
    with pytest.raises(TokenizerError, match=r"plain\.model.*has no reserved token '<\|endoftext\|>'"):
        SentencePieceTokenizer(str(tmp_path / "plain.model"))
    spm.SentencePieceTrainer.train(sentence_iterator=iter(t[:2000] for t in texts),
                                   model_prefix=str(tmp_path / "nohid"), vocab_size=300, model_type="bpe",
                                   minloglevel=2, eos_piece=EOD_TOKEN, control_symbols=[PAD_TOKEN])
    with pytest.raises(TokenizerError, match=r"has no reserved token '<\|hidden\|>'"):
        SentencePieceTokenizer(str(tmp_path / "nohid.model"))


def test_hf_tokenizer_without_reserved_token_is_rejected(trained, tmp_path):
    spec = json.load(open(trained["hf"].path))
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] != PAD_TOKEN]
    spec["model"]["vocab"].pop(PAD_TOKEN)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match=r"tokenizer\.json \(HFTokenizer\) has no reserved token '<\|pad\|>'"):
        HFTokenizer(str(path))
