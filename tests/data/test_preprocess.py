"""tools/preprocess_data.py / megatron_tf.data.preprocess: output equals SentencePiece's own encoding, in every input
compression, for any number of workers and block size; bad lines and empty texts follow the policies; a killed run
leaves no dataset behind and resumes to the same bytes."""

import gzip
import hashlib
import json
import lzma
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import sentencepiece as spm

from megatron_tf.data import preprocess as pp
from megatron_tf.data.indexed_dataset import IndexedDataset, dataset_exists, dataset_fingerprint, write_dataset
from megatron_tf.data.preprocess import PreprocessConfig, PreprocessError, preprocess
from tests.log_utils import captured_log
from tests.proc_utils import wait_for_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SP_MODEL = os.path.join(REPO, "data", "demo", "tokenizer", "demo_sp.model")
EOD = 1  # demo_sp.model: <|endoftext|> is SentencePiece's eos piece, id 1

TEXTS = [
    "The mitochondrion is the powerhouse of the cell.",
    "Patients with type 2 diabetes were given metformin (500 mg).\n\nNo adverse events.",
    "  leading spaces, trailing spaces  ",
    "naïve café — 日本語 🧬 and a literal <|endoftext|> in text",
    "tabs\tand\u2028line separators\u2028stay inside one line",
    "x",
    "Numbers 1234567 split into digits; a  double  space.",
]


def write_jsonl(path, records, opener=open):
    with opener(path, "wb") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)).encode("utf-8") + b"\n")
    return path


def corpus(n=120, seed=0):
    rng = np.random.default_rng(seed)
    return [{"text": TEXTS[i % len(TEXTS)] + " " + " ".join(TEXTS[j] for j in rng.integers(0, len(TEXTS), 3)),
             "id": i} for i in range(n)]


def reference(texts, append_eod=True):
    """Tokens per document from SentencePiece directly (not through the code under test)."""
    sp = spm.SentencePieceProcessor(model_file=SP_MODEL)
    out = [sp.encode(t) for t in texts]
    return [ids + [EOD] if (ids and append_eod) else ids for ids in out]


def run(tmp_path, inputs, name="out", **kw):
    prefix = str(tmp_path / name)
    cfg = PreprocessConfig(input=[str(p) for p in inputs], output_prefix=prefix, tokenizer_model=SP_MODEL,
                           append_eod=kw.pop("append_eod", True), **kw)
    metas = preprocess(cfg)
    return prefix + "_text_document", metas


def read_bytes(prefix):
    return {ext: open(prefix + ext, "rb").read() for ext in (".bin", ".idx", ".meta.json")}


def test_end_to_end_equals_sentencepiece(tmp_path):
    recs = corpus()
    src = write_jsonl(tmp_path / "c.jsonl", recs)
    prefix, metas = run(tmp_path, [src])
    ds = IndexedDataset(prefix)
    expected = reference([r["text"] for r in recs])
    assert ds.num_documents == len(recs) and len(ds) == len(recs) and ds.dtype == np.uint16
    for i, ids in enumerate(expected):
        assert ds[i].tolist() == ids
    # byte-identical with the landed writer fed the reference tokens
    write_dataset(str(tmp_path / "ref"), expected, dtype=np.uint16)
    for ext in (".bin", ".idx"):
        assert open(prefix + ext, "rb").read() == open(str(tmp_path / "ref") + ext, "rb").read()
    assert not os.path.exists(str(tmp_path / "out.tmp-preprocess"))
    assert sorted(os.listdir(tmp_path)) == sorted(["c.jsonl", "out_text_document.bin", "out_text_document.idx",
                                                   "out_text_document.meta.json", "ref.bin", "ref.idx"])


def test_compressions_give_identical_output(tmp_path):
    import zstandard

    recs = corpus(60)
    plain = write_jsonl(tmp_path / "c.jsonl", recs)
    data = open(plain, "rb").read()
    files = {"plain": plain, "gzip": tmp_path / "c.jsonl.gz", "xz": tmp_path / "c.jsonl.xz",
             "zstd": tmp_path / "c.jsonl.zst"}
    files["gzip"].write_bytes(gzip.compress(data))
    files["xz"].write_bytes(lzma.compress(data))
    files["zstd"].write_bytes(zstandard.ZstdCompressor().compress(data))
    outs = {}
    for kind, path in files.items():
        prefix, metas = run(tmp_path, [path], name=kind, batch_bytes=2048)
        outs[kind] = {ext: open(prefix + ext, "rb").read() for ext in (".bin", ".idx")}
        (inp,) = metas["text"]["inputs"]
        assert inp["compression"] == kind
        assert inp["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
        assert inp["lines"] == len(recs) and inp["bytes"] == os.path.getsize(path)
    assert all(o == outs["plain"] for o in outs.values())


def test_several_inputs_keep_order(tmp_path):
    recs = corpus(40)
    a = write_jsonl(tmp_path / "a.jsonl", recs[:15])
    b = write_jsonl(tmp_path / "b.jsonl.gz", recs[15:], opener=gzip.open)
    prefix, metas = run(tmp_path, [a, b])
    ds = IndexedDataset(prefix)
    assert [ds[i].tolist() for i in range(len(ds))] == reference([r["text"] for r in recs])
    assert [i["lines"] for i in metas["text"]["inputs"]] == [15, 25]


def test_workers_block_size_and_word_cache_do_not_change_bytes(tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", corpus(300))
    base = read_bytes(run(tmp_path, [src], name="w1", workers=1)[0])
    w2 = read_bytes(run(tmp_path, [src], name="w2", workers=2, batch_bytes=3000)[0])
    nowc = read_bytes(run(tmp_path, [src], name="nowc", workers=2, batch_bytes=5000, word_cache=False)[0])
    strip = lambda m: {k: v for k, v in m.items() if k != ".meta.json"}
    assert strip(base) == strip(w2) == strip(nowc)
    # the meta file differs only in the dataset prefix name
    m = [json.loads(x[".meta.json"]) for x in (base, w2, nowc)]
    for x in m:
        del x["dataset"]["prefix"]
    assert m[0] == m[1] == m[2]


def test_several_json_keys(tmp_path):
    recs = [{"text": t, "title": f"T{i}"} for i, t in enumerate(TEXTS)]
    src = write_jsonl(tmp_path / "c.jsonl", recs)
    cfg = PreprocessConfig(input=[str(src)], output_prefix=str(tmp_path / "o"), tokenizer_model=SP_MODEL,
                           json_keys=["text", "title"], workers=2, batch_bytes=100)
    metas = preprocess(cfg)
    assert set(metas) == {"text", "title"}
    for key in ("text", "title"):
        ds = IndexedDataset(str(tmp_path / f"o_{key}_document"))
        assert [ds[i].tolist() for i in range(len(ds))] == reference([r[key] for r in recs], append_eod=False)


BAD = [
    {"text": "good one"},
    {"text": "good two"},
    '{"text": "broken',  # line 3: bad JSON
    "",  # line 4: blank
    '["a", "list"]',  # line 5: not an object
    {"text": "good three"},
    {"title": "no text"},  # line 7: missing key
    {"text": None},  # line 8: null
    {"text": 42},  # line 9: not a string
    {"text": "good four"},
]


def test_bad_lines_skipped_and_reported(tmp_path, caplog):
    src = write_jsonl(tmp_path / "bad.jsonl", BAD)
    prefix, metas = run(tmp_path, [src], on_bad_line="skip", batch_bytes=16, workers=2)
    m = metas["text"]
    assert m["counts"]["bad_lines_skipped"] == {"bad_json": 1, "not_object": 1, "missing_key": 2, "not_string": 1}
    assert m["counts"]["blank_lines"] == 1 and m["counts"]["lines"] == 10
    listed = m["bad_lines_listed"]
    assert [x.split(": ")[0] for x in listed] == [f"{src}:{n}" for n in (3, 5, 7, 8, 9)]
    assert "bad_json" in listed[0] and "'text' missing" in listed[2] and "int, expected a string" in listed[4]
    ds = IndexedDataset(prefix)
    assert [ds[i].tolist() for i in range(len(ds))] == reference(["good one", "good two", "good three", "good four"])


@pytest.mark.parametrize("line,kind", [(3, "bad_json"), (7, "missing_key")])
def test_bad_line_fails_with_location(tmp_path, line, kind):
    recs = [r for i, r in enumerate(BAD, 1) if i == line or (isinstance(r, dict) and "text" in r
                                                             and isinstance(r["text"], str))]
    src = write_jsonl(tmp_path / "bad.jsonl", recs)
    where = recs.index(BAD[line - 1]) + 1
    with pytest.raises(PreprocessError, match=rf"bad\.jsonl:{where}: {kind}"):
        run(tmp_path, [src], workers=2, batch_bytes=16)
    assert os.listdir(tmp_path) == ["bad.jsonl"]  # no output, no work directory


def test_empty_documents_policies(tmp_path):
    recs = [{"text": "one"}, {"text": ""}, {"text": "three"}]
    src = write_jsonl(tmp_path / "e.jsonl", recs)
    prefix, metas = run(tmp_path, [src], name="skip")
    ds = IndexedDataset(prefix)
    assert [ds[i].tolist() for i in range(len(ds))] == reference(["one", "three"])
    assert metas["text"]["counts"]["empty_documents_skipped"] == 1
    # keep = Megatron-LM: a document without sequences and without <|endoftext|>
    prefix, metas = run(tmp_path, [src], name="keep", on_empty="keep")
    ds = IndexedDataset(prefix)
    assert ds.num_documents == 3 and len(ds) == 2
    assert ds.document_indices.tolist() == [0, 1, 1, 2]
    assert [ds.document_token_range(d)[1] - ds.document_token_range(d)[0] for d in range(3)] == [
        len(x) for x in reference(["one", "", "three"])]
    assert metas["text"]["counts"]["empty_documents_kept"] == 1
    with pytest.raises(PreprocessError, match=r"e\.jsonl:2: empty: key 'text' has no tokens"):
        run(tmp_path, [src], name="fail", on_empty="fail")
    assert not os.path.exists(str(tmp_path / "fail_text_document.bin"))


def test_meta_content(tmp_path):
    from megatron_tf import __version__
    from megatron_tf.tokenizer.tokenizer import SentencePieceTokenizer

    src = write_jsonl(tmp_path / "c.jsonl", corpus(50))
    prefix, metas = run(tmp_path, [src])
    m = json.load(open(prefix + ".meta.json"))
    assert m == metas["text"]
    ds = IndexedDataset(prefix)
    tok = SentencePieceTokenizer(SP_MODEL)
    assert m["tokenizer"] == tok.describe()
    assert m["tokenizer"]["fingerprint"] == tok.fingerprint and m["tokenizer"]["vocab_size"] == 8192
    assert m["megatron_tf_version"] == __version__
    assert m["dataset"]["fingerprint"] == dataset_fingerprint(prefix)
    assert m["dataset"]["dtype"] == "uint16" and m["dataset"]["dtype_code"] == 8
    assert m["counts"]["documents"] == ds.num_documents == 50
    assert m["counts"]["tokens"] == ds.num_tokens
    assert m["max_token_id"] == int(np.asarray(ds.tokens(0, ds.num_tokens)).max())
    assert m["append_eod"] is True


def test_input_errors_are_clear(tmp_path):
    with pytest.raises(PreprocessError, match=r"input file not found: .*missing\.jsonl"):
        run(tmp_path, [tmp_path / "missing.jsonl"])
    bad_xz = tmp_path / "trunc.jsonl.xz"
    data = lzma.compress(b"".join(b'{"text": "%d"}\n' % i for i in range(5000)))
    bad_xz.write_bytes(data[: len(data) // 2])
    with pytest.raises(pp.InputError, match=r"trunc\.jsonl\.xz: cannot read xz data"):
        run(tmp_path, [bad_xz])
    with pytest.raises(PreprocessError, match=r"--dtype uint8 cannot hold token ids up to 8191"):
        run(tmp_path, [write_jsonl(tmp_path / "c.jsonl", corpus(3))], dtype="uint8")


# ---- interruption and resume ------------------------------------------------------------------------------------
class Interrupt(BaseException):
    pass


def interrupt_after(monkeypatch, n):
    """Make the n-th handled block raise, as a kill would stop the run (checkpoints every block)."""
    calls = {"n": 0}
    orig = pp._Run.handle

    def handle(self, task, res):
        calls["n"] += 1
        if calls["n"] == n:
            raise Interrupt()
        return orig(self, task, res)

    monkeypatch.setattr(pp._Run, "handle", handle)


def test_resume_in_process_gives_identical_bytes(tmp_path, monkeypatch):
    recs = corpus(400)
    a = write_jsonl(tmp_path / "a.jsonl", recs[:150])
    b = write_jsonl(tmp_path / "b.jsonl.xz", recs[150:], opener=lzma.open)
    ref = read_bytes(run(tmp_path, [a, b], name="ref")[0])
    for n in (3, 12):  # inside the first file, inside the second
        name = f"r{n}"
        with monkeypatch.context() as m:
            interrupt_after(m, n)
            with pytest.raises(Interrupt):
                run(tmp_path, [a, b], name=name, batch_bytes=4096, checkpoint_interval=0)
        assert not dataset_exists(str(tmp_path / f"{name}_text_document"))
        assert os.path.isdir(tmp_path / f"{name}.tmp-preprocess")
        prefix, _ = run(tmp_path, [a, b], name=name, batch_bytes=1 << 20, workers=2)
        got = read_bytes(prefix)
        got_meta, ref_meta = json.loads(got.pop(".meta.json")), json.loads(ref[".meta.json"])
        assert got == {k: v for k, v in ref.items() if k != ".meta.json"}
        del got_meta["dataset"]["prefix"], ref_meta["dataset"]["prefix"]
        assert got_meta == ref_meta
        assert not os.path.exists(tmp_path / f"{name}.tmp-preprocess")


def test_resume_refuses_changed_settings_and_inputs(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "c.jsonl", corpus(200))
    with monkeypatch.context() as m:
        interrupt_after(m, 4)
        with pytest.raises(Interrupt):
            run(tmp_path, [src], batch_bytes=2048, checkpoint_interval=0)
    with pytest.raises(PreprocessError, match=r"different settings \(append_eod: was True, now False\).*--no-resume"):
        run(tmp_path, [src], append_eod=False)
    assert os.path.isfile(tmp_path / "out.tmp-preprocess" / "state.json")  # kept for a resume with the old settings
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(PreprocessError, match=r"input .*c\.jsonl changed since the interrupted run"):
        run(tmp_path, [src])
    prefix, _ = run(tmp_path, [src], append_eod=False, resume=False)  # starts over
    ds = IndexedDataset(prefix)
    assert ds.num_documents == 200 and ds[0].tolist() == reference([corpus(200)[0]["text"]], append_eod=False)[0]


def test_work_dir_only_our_files_are_removed(tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", corpus(10))
    work = tmp_path / "scratch"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    run(tmp_path, [src], work_dir=str(work), resume=False)
    assert os.listdir(work) == ["notes.txt"]
    assert dataset_exists(str(tmp_path / "out_text_document"))


def test_second_run_on_same_prefix_is_refused(tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", corpus(10))
    import fcntl

    os.makedirs(tmp_path / "out.tmp-preprocess")
    with open(tmp_path / "out.tmp-preprocess" / "lock", "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(PreprocessError, match=r"another preprocess run holds .*out\.tmp-preprocess"):
            run(tmp_path, [src])
    run(tmp_path, [src])  # released: runs
    assert dataset_exists(str(tmp_path / "out_text_document"))


def test_kill_during_renames_is_finished_by_next_run(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "c.jsonl", corpus(30))
    ref = read_bytes(run(tmp_path, [src], name="ref")[0])
    real = os.replace

    def replace(a, b):
        if str(b).endswith(".idx") and "x_text_document" in str(b):
            raise Interrupt()
        return real(a, b)

    with monkeypatch.context() as m:
        m.setattr(pp.os, "replace", replace)
        with pytest.raises(Interrupt):
            run(tmp_path, [src], name="x")
    prefix = str(tmp_path / "x_text_document")
    assert os.path.exists(prefix + ".bin") and not os.path.exists(prefix + ".idx")
    assert not dataset_exists(prefix)
    run(tmp_path, [src], name="x")
    got = read_bytes(prefix)
    assert got[".bin"] == ref[".bin"] and got[".idx"] == ref[".idx"]
    assert not os.path.exists(tmp_path / "x.tmp-preprocess")


_BLOCKING_CLI = """
import runpy, sys, time
sys.path.insert(0, {repo!r})
from megatron_tf.data import preprocess as pp
_checkpoint = pp._Run.checkpoint
def checkpoint(self):
    _checkpoint(self)
    if self.position["offset"] > 200_000:
        open({marker!r}, "w").close()
        while True:  # until the test kills us
            time.sleep(1)
pp._Run.checkpoint = checkpoint
sys.argv = [{repo!r} + "/tools/preprocess_data.py", *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_sigkill_then_rerun_cli_is_byte_identical(tmp_path):
    """Kill the real CLI with SIGKILL mid-run: no dataset appears; the same command then resumes to the same bytes."""
    rng = np.random.default_rng(7)
    words = " ".join(TEXTS).split(" ")
    recs = [{"text": " ".join(rng.choice(words, size=int(n)))} for n in rng.integers(50, 400, size=5000)]
    src = write_jsonl(tmp_path / "big.jsonl", recs)
    ref_prefix, _ = run(tmp_path, [src], name="ref", workers=1)
    ref = read_bytes(ref_prefix)
    prefix = str(tmp_path / "killed")
    cmd = [sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input", str(src), "--output-prefix",
           prefix, "--tokenizer-model", SP_MODEL, "--append-eod", "--workers", "1"]
    # The CLI, blocked right after its first checkpoint past 200 kB (an observable state, whatever the CPU speed:
    # never killed before it, never finished before the kill)
    marker = tmp_path / "blocked"
    wrapper = tmp_path / "blocking_cli.py"
    wrapper.write_text(_BLOCKING_CLI.format(repo=REPO, marker=str(marker)))
    proc = subprocess.Popen([sys.executable, str(wrapper), *cmd[2:], "--batch-bytes", "8192",
                             "--checkpoint-interval", "0"], stderr=subprocess.PIPE)
    try:
        wait_for_file(str(marker), proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    state = json.loads((tmp_path / "killed.tmp-preprocess" / "state.json").read_text())
    assert state["position"]["offset"] > 200_000 and state["phase"] == "running"
    out = prefix + "_text_document"
    assert not any(os.path.exists(out + ext) for ext in (".bin", ".idx", ".meta.json"))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    got = read_bytes(out)
    assert got[".bin"] == ref[".bin"] and got[".idx"] == ref[".idx"]
    assert not os.path.exists(tmp_path / "killed.tmp-preprocess")


# ---- issue 14: lone surrogates, empty input ------------------------------------------------------------------------
def test_lone_surrogate_is_a_bad_line_under_both_policies(tmp_path):
    src = tmp_path / "sur.jsonl"
    src.write_bytes(b'{"text": "good one"}\n{"text": "bad \\ud800 here"}\n{"text": "good three"}\n')
    prefix, metas = run(tmp_path, [src], on_bad_line="skip")
    assert metas["text"]["counts"]["bad_lines_skipped"] == {"bad_unicode": 1}
    assert metas["text"]["bad_lines_listed"][0].startswith(f"{src}:2: bad_unicode: key 'text' holds a lone UTF-16")
    ds = IndexedDataset(prefix)
    assert [ds[i].tolist() for i in range(len(ds))] == reference(["good one", "good three"])
    with pytest.raises(PreprocessError, match=r"sur\.jsonl:2: bad_unicode: .*surrogate"):
        run(tmp_path, [src], name="fail", workers=2)


def test_empty_input_warns_loudly(tmp_path):
    import logging

    src = tmp_path / "empty.jsonl"
    src.write_bytes(b"")
    blank = write_jsonl(tmp_path / "blank.jsonl", ["", "   "])
    with captured_log(level=logging.WARNING) as warn:
        prefix, metas = run(tmp_path, [src, blank])
    assert metas["text"]["counts"]["documents"] == 0
    assert any("EMPTY DATASET" in w and prefix + ".bin" in w and "empty.jsonl" in w and "0 documents" in w
               for w in warn), warn


def test_token_id_outside_the_tokenizer_vocabulary_is_refused(tmp_path, monkeypatch):
    """Issue 14 item 6: ids are checked against the tokenizer's vocab_size, not only the dtype bound."""
    from megatron_tf.tokenizer.tokenizer import SentencePieceTokenizer

    src = write_jsonl(tmp_path / "c.jsonl", corpus(20))
    ids = [i for doc in reference([r["text"] for r in corpus(20)]) for i in doc]
    vocab = max(ids)  # one below the largest id produced: that id is "outside the vocabulary"
    assert vocab > 3
    monkeypatch.setattr(SentencePieceTokenizer, "vocab_size", property(lambda self: vocab))
    with pytest.raises(PreprocessError, match=rf"c\.jsonl: lines from 1: tokenizer .*demo_sp\.model produced token "
                                              rf"id {max(ids)}, outside its vocabulary \[0, {vocab}\)"):
        run(tmp_path, [src], dtype="uint16")
    assert not os.path.exists(str(tmp_path / "out_text_document.bin"))
