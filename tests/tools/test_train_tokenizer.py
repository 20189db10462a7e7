"""tools/train_tokenizer.py and tools/preprocess_data.py as command lines (Megatron-LM flag names)."""

import importlib.util
import json
import os

import pytest

from megatron_tf.data.indexed_dataset import IndexedDataset
from megatron_tf.tokenizer.tokenizer import HFTokenizer, SentencePieceTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", os.path.join(REPO, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


preprocess_data, train_tokenizer = _tool("preprocess_data"), _tool("train_tokenizer")
CORPUS = os.path.join(REPO, "data", "demo", "train", "general.jsonl.xz")


@pytest.mark.parametrize("kind,name,cls", [("sp", "t.model", SentencePieceTokenizer),
                                           ("hf", "tokenizer.json", HFTokenizer)])
def test_train_tokenizer_cli(tmp_path, kind, name, cls):
    out = tmp_path / name
    assert train_tokenizer.main(["--input", CORPUS, "--output", str(out), "--type", kind, "--vocab-size", "600"]) == 0
    tok = cls(str(out))
    assert tok.vocab_size == 600 and len({tok.eod, tok.hidden, tok.pad}) == 3
    assert os.listdir(tmp_path) == [name]


@pytest.mark.parametrize("kind", ["sp", "hf"])
def test_train_tokenizer_cli_reports_bad_line(tmp_path, capsys, kind):
    src = tmp_path / "c.jsonl"
    src.write_text(json.dumps({"text": "fine"}) + "\n" + "{oops\n")
    assert train_tokenizer.main(["--input", str(src), "--output", str(tmp_path / "t"), "--type", kind]) == 1
    assert f"{src}:2: invalid JSON" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["c.jsonl"]


def test_preprocess_cli_megatron_flags(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": f"document number {i}", "id": i}) + "\n" for i in range(20)))
    prefix = str(tmp_path / "out")
    rc = preprocess_data.main(["--input", str(src), "--output-prefix", prefix, "--tokenizer-type",
                               "GPTSentencePieceTokenizer", "--tokenizer-model",
                               os.path.join(REPO, "data", "demo", "tokenizer", "demo_sp.model"), "--json-keys", "text",
                               "--append-eod", "--workers", "2", "--partitions", "1", "--log-interval", "5"])
    assert rc == 0
    ds = IndexedDataset(prefix + "_text_document")
    assert ds.num_documents == 20 and all(ds[i][-1] == 1 for i in range(20))


def test_preprocess_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        preprocess_data.main(["--output-prefix", str(tmp_path / "o")])
    assert "--input is required" in capsys.readouterr().err
    rc = preprocess_data.main(["--input", str(tmp_path / "none.jsonl"), "--output-prefix", str(tmp_path / "o"),
                               "--tokenizer-type", "NullTokenizer", "--vocab-size", "100"])
    assert rc == 1 and "input file not found" in capsys.readouterr().err
