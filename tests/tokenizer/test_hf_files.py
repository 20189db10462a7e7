"""The export's tokenizer files: transformers' AutoTokenizer, loaded offline from them, encodes the demo corpus's
held-out documents to exactly the ids of the project's tokenizer (the shipped SentencePiece model, and an HF
tokenizer.json run), decodes them back to the project's text, and puts <|endoftext|> in front as bos by default."""

import itertools
import json
import os

import pytest

from megatron_tf.tokenizer.hf_files import sentencepiece_to_tokenizers_json, write_hf_tokenizer_files
from megatron_tf.tokenizer.tokenizer import HFTokenizer, SentencePieceTokenizer
from megatron_tf.tokenizer.train import TrainTokenizerConfig, train_tokenizer
from megatron_tf.utils.jsonl import iter_texts

transformers = pytest.importorskip("transformers")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "data", "demo")
SP_MODEL = os.path.join(DEMO, "tokenizer", "demo_sp.model")
HELDOUT = [os.path.join(DEMO, "heldout", f"{d}.jsonl.xz") for d in ("medical", "biology", "general")]
EXTRA = ["  two leading spaces,  inner  and trailing  ", "Line\n\n\tTab\r\nCRLF", "naïve café 日本語 🧬 ∑ x² ≤ ∞",
         "digits 1234567890 and 3.14159", " ", "a"]


def _texts(per_file):
    return [t for p in HELDOUT for t in itertools.islice(iter_texts([p]), per_file)] + EXTRA


def _check(project, out_dir, texts):
    tok = transformers.AutoTokenizer.from_pretrained(out_dir)
    eod, pad = project.eod, project.pad
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (eod, eod, pad)
    assert len(tok) == project.vocab_size
    n_tokens = 0
    for text in texts:
        ids = project.tokenize(text)
        n_tokens += len(ids)
        assert tok(text, add_special_tokens=False).input_ids == ids, text[:80]
        assert tok(text).input_ids == [eod, *ids]  # bos = <|endoftext|>, the project's start-of-document
        assert tok.decode(ids) == project.detokenize(ids)
        assert tok.decode([eod, *ids], skip_special_tokens=True) == project.detokenize(ids)
    return n_tokens


def test_sentencepiece_run(tmp_path):
    sp = SentencePieceTokenizer(SP_MODEL)
    names = write_hf_tokenizer_files(sp, str(tmp_path), model_max_length=256)
    assert sorted(names) == ["special_tokens_map.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json"]
    assert (tmp_path / "tokenizer.model").read_bytes() == open(SP_MODEL, "rb").read()
    texts = _texts(None)  # every held-out document (390) plus edge cases
    assert len(texts) == 390 + len(EXTRA)
    assert _check(sp, str(tmp_path), texts) > 200_000
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["model_max_length"] == 256 and cfg["bos_token"] == cfg["eos_token"] == "<|endoftext|>"


def test_hf_tokenizer_json_run(tmp_path):
    src = tmp_path / "tok" / "tokenizer.json"
    src.parent.mkdir()
    train_tokenizer(TrainTokenizerConfig(input=[os.path.join(DEMO, "train", "biology.jsonl.xz")], output=str(src),
                                         type="hf", vocab_size=700))
    hf = HFTokenizer(str(src))
    out = tmp_path / "export"
    out.mkdir()
    assert sorted(write_hf_tokenizer_files(hf, str(out))) == ["special_tokens_map.json", "tokenizer.json",
                                                               "tokenizer_config.json"]
    assert _check(hf, str(out), _texts(5)) > 5_000


def test_unconvertible_sentencepiece_model_is_refused(tmp_path):
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(open(SP_MODEL, "rb").read())
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.name = "nmt_nfkc"
    path = tmp_path / "dummy.model"
    path.write_bytes(m.SerializeToString())
    with pytest.raises(ValueError, match=r"normalizer_spec.name 'nmt_nfkc' \(need 'identity'\); "
                                         r"normalizer_spec.add_dummy_prefix true"):
        sentencepiece_to_tokenizers_json(str(path))


def test_add_reserved_tokens_keeps_encoding(tmp_path):
    """A SentencePiece model without <|hidden|> (the demo's with that piece renamed): add_reserved_tokens appends it
    as a control piece with id 8192; every held-out document encodes to the original model's ids."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    from megatron_tf.tokenizer.hf_files import add_reserved_tokens

    m = pb.ModelProto()
    m.ParseFromString(open(SP_MODEL, "rb").read())
    assert m.pieces[3].piece == "<|hidden|>"
    m.pieces[3].piece = "<ctrl3>"
    (tmp_path / "a.model").write_bytes(m.SerializeToString())
    assert add_reserved_tokens("sp", str(tmp_path / "a.model"), str(tmp_path / "b.model")) == ["<|hidden|>"]
    tok = SentencePieceTokenizer(str(tmp_path / "b.model"))
    assert (tok.vocab_size, tok.eod, tok.hidden, tok.pad) == (8193, 1, 8192, 2)
    ref = spm.SentencePieceProcessor(model_file=SP_MODEL)
    texts = _texts(20)
    assert tok.tokenize_batch(texts) == ref.encode(texts)
    assert add_reserved_tokens("sp", str(tmp_path / "b.model"), str(tmp_path / "c.model")) == []
