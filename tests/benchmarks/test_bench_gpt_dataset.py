"""benchmarks/bench_gpt_dataset.py --data-prefix on a real preprocessed dataset: it opens the dataset with the
tokenizer flags it was made with (the dataset's meta.json fingerprint check passes), and a wrong tokenizer is the
trainer's clear error, not a silent run on NullTokenizer."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from megatron_tf.data.builder import DatasetMetaError
from megatron_tf.data.preprocess import PreprocessConfig, preprocess

ROOT = Path(__file__).resolve().parents[2]
SP_MODEL = ROOT / "data" / "demo" / "tokenizer" / "demo_sp.model"


@pytest.fixture(autouse=True)
def _keep_log_levels():
    """bench main() quiets the package loggers for its own output: give them back to the tests that follow."""
    import logging

    loggers = [logging.getLogger(n) for n in ("megatron_tf", "megatron.core")]
    levels = [lg.level for lg in loggers]
    yield
    for lg, level in zip(loggers, levels):
        lg.setLevel(level)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpt_dataset", ROOT / "benchmarks" / "bench_gpt_dataset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_data_prefix_uses_the_tokenizer_flags(tmp_path):
    corpus = tmp_path / "c.jsonl"
    words = "the patient was given a dose of the drug and the cells grew in the dish".split()
    corpus.write_text("".join(json.dumps({"text": " ".join(words[i % 7:] * 12)}) + "\n" for i in range(60)))
    preprocess(PreprocessConfig(input=[str(corpus)], output_prefix=str(tmp_path / "d"),
                                tokenizer_type="SentencePieceTokenizer", tokenizer_model=str(SP_MODEL),
                                append_eod=True))
    prefix = str(tmp_path / "d_text_document")
    bench = _bench()
    small = ["--skip-fetch", "--index-samples", "60", "--blend-samples", "3000", "--reps", "1"]
    out = tmp_path / "r.json"
    assert bench.main(["--data-prefix", prefix, "--tokenizer-type", "SentencePieceTokenizer",
                       "--tokenizer-model", str(SP_MODEL), "--out", str(out), *small]) == 0
    res = json.loads(out.read_text())
    assert res["data"]["prefix"] == prefix and res["data"]["tokenizer"] == "SentencePieceTokenizer"
    assert res["data"]["documents"] == 60 and res["machine"]["cores"] >= 1
    built = res["index_build_ms"]["2048"]
    assert {"megatron_tf (dataset already scanned)", "megatron_tf before (dataset already scanned)"} <= set(built)
    assert all(v["runs"] == 1 and v["min_ms"] <= v["median_ms"] <= v["max_ms"] for v in built.values())
    assert "2 datasets (0.3, 0.7)" in res["blending_index_ms"]
    with pytest.raises(DatasetMetaError, match="another tokenizer"):
        bench.main(["--data-prefix", prefix, "--tokenizer-type", "NullTokenizer", "--vocab-size", "8192",
                    "--out", str(tmp_path / "x.json"), *small])
