"""tools/inspect_dataset.py: the summary and the --dump-sample JSON format external scripts rely on."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.data.gpt_synth import HIDDEN, VOCAB, forget_pattern, make_prefix, random_docs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "inspect_dataset.py")
pytestmark = pytest.mark.filterwarnings("ignore:.*meta.json not found")


def _tool():
    spec = importlib.util.spec_from_file_location("inspect_dataset_tool", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inspect")
    rng = np.random.default_rng(8)
    docs = random_docs(rng, 30)
    q = forget_pattern(rng, sum(len(d) for d in docs))
    prefix, _ = make_prefix(tmp, "d", docs, q)
    return prefix, docs, q


def run(args, capsys):
    assert _tool().main(args) == 0
    return capsys.readouterr().out


def test_summary(data, capsys):
    prefix, docs, q = data
    out = run(["--data-prefix", prefix, "--vocab-size", str(VOCAB), "--token-filter", "mask",
               "--forget-threshold", "0.5", "--seq-length", "8"], capsys)
    rows = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert int(rows["documents"]) == len(docs)
    assert int(rows["tokens"]) == len(q)
    frac = float(rows["tokens_filtered_fraction"])
    assert frac == pytest.approx((q >= 128).mean())
    assert float(rows["documents_filtered_fraction"]) == 0.0


@pytest.mark.parametrize("mode", ["none", "mask", "remove"])
def test_dump_sample_json(data, capsys, mode):
    prefix, docs, q = data
    seq = 8
    out = run(["--data-prefix", prefix, "--vocab-size", str(VOCAB), "--token-filter", mode, "--forget-threshold",
               "0.5", "--seq-length", str(seq), "--seed", "5", "--dump-sample", "3"], capsys)
    lines = out.strip().splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert list(obj) == ["tokens", "labels", "loss_mask", "forget"]
    assert all(len(v) == seq for v in obj.values())
    assert set(obj["loss_mask"]) <= {0, 1} and set(obj["forget"]) <= {0, 1}
    assert all(isinstance(x, int) for v in obj.values() for x in v)
    # against the raw stream (the whole prefix, one epoch, seed 5)
    from megatron_tf.data.config import FilterConfig
    from megatron_tf.data.inspect import open_inspection
    from megatron_tf.tokenizer.tokenizer import NullTokenizer

    _, ds = open_inspection(prefix, NullTokenizer(VOCAB), FilterConfig(), seq, seed=5)
    starts = np.cumsum([0] + [len(d) for d in docs])
    stream = np.concatenate([docs[d] for d in ds.document_index])
    flags = np.concatenate([q[starts[d] : starts[d + 1]] >= 128 for d in ds.document_index])
    j = int(ds.shuffle_index[3])
    w, f = stream[j * seq : j * seq + seq + 1], flags[j * seq : j * seq + seq + 1]
    assert obj["forget"] == f[:-1].astype(int).tolist()
    if mode == "remove":
        assert obj["tokens"] == np.where(f[:-1], HIDDEN, w[:-1]).tolist()
    else:
        assert obj["tokens"] == w[:-1].tolist() and obj["labels"] == w[1:].tolist()
    assert obj["loss_mask"] == ([1] * seq if mode == "none" else (~f[1:]).astype(int).tolist())


def test_cli_subprocess_stdout_is_pure_json(data):
    prefix, _, _ = data
    r = subprocess.run([sys.executable, TOOL, "--data-prefix", prefix, "--vocab-size", str(VOCAB), "--seq-length",
                        "8", "--dump-sample", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)) == {"tokens", "labels", "loss_mask", "forget"}
    with pytest.raises(SystemExit, match="outside"):
        _tool().main(["--data-prefix", prefix, "--vocab-size", str(VOCAB), "--seq-length", "8", "--dump-sample",
                      "100000"])


@pytest.fixture(scope="module")
def blend(tmp_path_factory):
    """a: 40 documents of 50 tokens, every odd one wholly forget (document score 1); b: 40 clean ones."""
    tmp = tmp_path_factory.mktemp("inspect_blend")
    rng = np.random.default_rng(0)
    docs = lambda: [np.append(rng.integers(0, 100, 49), 100) for _ in range(40)]  # noqa: E731
    qa = np.concatenate([np.full(50, 255 if k % 2 else 0, np.uint8) for k in range(40)])
    a, _ = make_prefix(tmp, "a", docs(), qa, doc_scores=True)
    b, _ = make_prefix(tmp, "b", docs(), np.zeros(2000, np.uint8), doc_scores=True)
    return tmp, a, b


@pytest.mark.parametrize("flags", [["--document-threshold", "0.5"], ["--document-filter-fraction", "0.25"]])
def test_blend_json_components(blend, capsys, flags):
    """--data-path as pretrain_gpt.py takes it; 50/50 blend, the filter drops half of a: a third of the samples."""
    tmp, a, b = blend
    out = run(["--data-path", "0.5", a, "0.5", b, "--split", "1,0,0", "--train-samples", "3000", "--seq-length",
               "16", "--vocab-size", str(VOCAB), "--data-cache-path", str(tmp / "cache"), "--token-filter",
               "document", *flags, "--json"], capsys)
    lines = out.strip().splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    rows = obj["components"]
    assert [(r["prefix"], r["samples"], r["tokens_total"], r["tokens_kept"]) for r in rows] == \
           [(a, 1000, 2000, 1000), (b, 2000, 2000, 2000)]
    assert [r["weight"] for r in rows] == pytest.approx([1 / 3, 2 / 3])
    assert [r["epochs"] for r in rows] == pytest.approx([16.0, 16.0])  # 1000 x 16 / 1000, 2000 x 16 / 2000
    assert obj["samples"] == 3000 and obj["tokens_filtered_fraction"] == 0.25
    assert obj["filter"]["document_threshold"] in (0.5, 1.0)
    # the same split the trainer builds
    from megatron_tf.data.builder import build_gpt_datasets
    from megatron_tf.data.config import FilterConfig, GPTDatasetConfig
    from megatron_tf.tokenizer.tokenizer import NullTokenizer

    fcfg = FilterConfig(token_filter="document", document_threshold=obj["filter"]["document_threshold"])
    ref = build_gpt_datasets(GPTDatasetConfig(data_path=["0.5", a, "0.5", b], split="1,0,0", seq_length=16,
                                              seed=1234, data_cache_path=str(tmp / "cache")), fcfg,
                             NullTokenizer(VOCAB), [3000, 0, 0])
    assert json.loads(json.dumps(ref.stats["train"]["components"])) == rows
    # a dumped sample is the trainer's consumed sample
    out = run(["--data-path", "0.5", a, "0.5", b, "--split", "1,0,0", "--train-iters", "375", "--global-batch-size",
               "8", "--seq-length", "16", "--vocab-size", str(VOCAB), "--data-cache-path", str(tmp / "cache"),
               "--token-filter", "document", *flags, "--dump-sample", "11"], capsys)
    assert json.loads(out)["tokens"] == ref.train[11]["tokens"].tolist()


def test_blend_text_and_errors(blend, capsys):
    tmp, a, b = blend
    out = run(["--data-path", a, b, "--split", "1,0,0", "--seq-length", "16", "--vocab-size", str(VOCAB),
               "--data-cache-path", str(tmp / "cache")], capsys)
    rows = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert rows["tokens"] == "4000" and rows["component[1]"].endswith(f"prefix={b}")
    with pytest.raises(SystemExit, match="not both"):
        _tool().main(["--data-prefix", a, "--data-path", a, "--vocab-size", str(VOCAB)])
    with pytest.raises(ValueError, match=r"--document-filter-fraction must be in \(0, 1\), got 1.5"):
        _tool().main(["--data-path", a, "--vocab-size", str(VOCAB), "--token-filter", "document",
                      "--document-filter-fraction", "1.5"])
