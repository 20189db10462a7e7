"""Preprocessing across processes (data/preprocess_dist.py): parts + merge equal one process, byte for byte; a merge
over missing parts refuses naming them; under torchrun (2 CPU ranks, with deadlines) the same bytes, a rank that dies
fails the job with the rank named, and relaunching finishes it reusing the finished parts."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from megatron_tf.data.preprocess import PreprocessConfig, PreprocessError, preprocess
from megatron_tf.data.preprocess_dist import (
    marker_path,
    merge_parts,
    part_is_done,
    part_settings,
    plan_parts,
    run_part,
)
from megatron_tf.data.preprocess_run import resolve_dtype
from megatron_tf.data.preprocess_workers import build_spec_tokenizer
from tests.data.test_preprocess import SP_MODEL, TEXTS, corpus, write_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXTS = (".bin", ".idx", ".meta.json")


def make_inputs(tmp_path, sizes=(30, 5, 60, 1, 20)):
    """Files of different sizes, with a bad line, a blank line and an empty text in some (skip / keep policies)."""
    paths, start = [], 0
    for n, size in enumerate(sizes):
        recs = [json.dumps(r) for r in corpus(size, seed=n)]
        if n == 1:
            recs[2:2] = ["not json", "", json.dumps({"text": ""})]
        if n == 3:
            recs.append(json.dumps({"text": 5}))
        paths.append(str(write_jsonl(tmp_path / f"in{n}.jsonl", recs)))
        start += size
    return paths


def config(tmp_path, inputs, out_dir, **kw):
    os.makedirs(tmp_path / out_dir, exist_ok=True)
    return PreprocessConfig(input=inputs, output_prefix=str(tmp_path / out_dir / "ds"), tokenizer_model=SP_MODEL,
                            append_eod=True, on_bad_line="skip", on_empty="keep", max_issues_listed=2,
                            json_keys=kw.pop("json_keys", ["text"]), **kw)


def outputs(cfg) -> dict[str, bytes]:
    return {k + ext: open(f"{cfg.output_prefix}_{k}_document{ext}", "rb").read()
            for k in cfg.json_keys for ext in EXTS}


def tok_dtype(cfg):
    tok = build_spec_tokenizer({"tokenizer_type": cfg.tokenizer_type, "tokenizer_model": cfg.tokenizer_model,
                                "vocab_size": None, "tokenizer_threads": 1})
    return tok, resolve_dtype(cfg.dtype, tok.vocab_size)


def test_plan_is_balanced_disjoint_and_complete():
    sizes = [100, 1, 50, 50, 7, 200, 3]
    plan = plan_parts(sizes, list(range(7)), 3)
    assert sorted(i for p in plan for i in p) == list(range(7))
    # by hand, largest first to the least loaded: 200->r0, 100->r1, 50->r2, 50->r2 (50 < 100 = r1, tie by rank),
    # 7->r1 (100 vs r2 100: the lower rank), 3->r2 (100 < 107), 1->r2 (103 < 107)
    assert plan == [[5], [0, 4], [1, 2, 3, 6]]
    assert plan_parts(sizes, [1, 4], 4) == [[4], [1], [], []]


def test_parts_merge_to_the_bytes_of_one_process_and_missing_parts_are_refused(tmp_path):
    inputs = make_inputs(tmp_path)
    one = config(tmp_path, inputs, "one")
    preprocess(one)
    ref = outputs(one)
    cfg = config(tmp_path, inputs, "dist", workers=1)
    tok, dtype = tok_dtype(cfg)
    settings = part_settings(cfg, tok, dtype)
    for i in (0, 2, 4):
        run_part(cfg, tok, dtype, i, settings)
    with pytest.raises(PreprocessError) as e:
        merge_parts(cfg, tok, dtype)
    msg = str(e.value)
    assert "2 of 5 parts" in msg and "part000001 (input " + inputs[1] + ")" in msg and "part000003" in msg
    assert "part000000" not in msg
    for i in (1, 3):
        run_part(cfg, tok, dtype, i, settings)
    merge_parts(cfg, tok, dtype)
    got = outputs(cfg)
    assert got == ref  # .bin, .idx and the meta (counts, bad lines listed, inputs) byte for byte
    meta = json.loads(got["text.meta.json"])
    assert meta["counts"]["bad_lines_skipped"] == {"bad_json": 1, "not_string": 1}
    assert meta["counts"]["empty_documents_kept"] == 1


def test_marker_is_invalid_when_input_or_settings_change(tmp_path):
    inputs = make_inputs(tmp_path, sizes=(5, 6))
    cfg = config(tmp_path, inputs, "d")
    tok, dtype = tok_dtype(cfg)
    settings = part_settings(cfg, tok, dtype)
    run_part(cfg, tok, dtype, 0, settings)
    assert part_is_done(cfg, 0, settings) and not part_is_done(cfg, 1, settings)
    assert not part_is_done(cfg, 0, part_settings(dataclasses.replace(cfg, append_eod=False), tok, dtype))
    with open(inputs[0], "a") as f:
        f.write(json.dumps({"text": TEXTS[0]}) + "\n")
    assert not part_is_done(cfg, 0, settings)
    os.remove(marker_path(cfg, 0))
    assert not part_is_done(cfg, 0, settings)


def torchrun(args, nproc=2, timeout=240, env_extra=None, wrapper=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           wrapper or os.path.join(REPO, "tools", "preprocess_data.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, **(env_extra or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def cli_args(cfg):
    return ["--input", *cfg.input, "--output-prefix", cfg.output_prefix, "--tokenizer-model", SP_MODEL,
            "--append-eod", "--on-bad-line", "skip", "--on-empty", "keep", "--max-issues-listed", "2",
            "--workers", "1", "--json-keys", *cfg.json_keys, "--dist-timeout", "60"]


_DYING_RANK = """
import os, runpy, sys
sys.path.insert(0, {repo!r})
from megatron_tf.data import preprocess_dist as pd
_run_part = pd.run_part
def run_part(cfg, tok, dtype, i, settings):
    if os.environ["RANK"] == "1":
        os._exit(3)  # dies without a word, as a killed process or a lost node
    _run_part(cfg, tok, dtype, i, settings)
pd.run_part = run_part
sys.argv = [{repo!r} + "/tools/preprocess_data.py", *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_torchrun_two_ranks_byte_identical_dying_rank_and_relaunch(tmp_path):
    inputs = make_inputs(tmp_path)
    one = config(tmp_path, inputs, "one")
    preprocess(one)
    ref = outputs(one)

    cfg = config(tmp_path, inputs, "tr")
    p = torchrun(cli_args(cfg))
    assert p.returncode == 0, p.stderr[-3000:]
    assert outputs(cfg) == ref
    assert not os.path.exists(cfg.parts_dir()) and not os.path.exists(cfg.resolved_work_dir())

    # rank 1 dies: the job fails naming it, rank 0's parts stay; the relaunch does the rest, same bytes
    cfg2 = config(tmp_path, inputs, "die")
    wrapper = tmp_path / "dying.py"
    wrapper.write_text(_DYING_RANK.format(repo=REPO))
    p = torchrun(cli_args(cfg2), wrapper=str(wrapper))
    assert p.returncode != 0
    root = p.stderr[p.stderr.index("Root Cause"):]  # torchrun's report names the rank that died first
    assert "rank      : 1" in root and "exitcode  : 3" in root, p.stderr[-3000:]
    assert not os.path.exists(cfg2.output_prefix + "_text_document.idx")
    tok, dtype = tok_dtype(cfg2)
    done = [i for i in range(len(inputs)) if part_is_done(cfg2, i, part_settings(cfg2, tok, dtype))]
    with pytest.raises(PreprocessError, match="parts in"):
        merge_parts(cfg2, tok, dtype)
    p = torchrun(cli_args(cfg2))
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"{len(inputs) - len(done)} to do, {len(done)} already done" in p.stderr
    assert outputs(cfg2) == ref


@pytest.mark.slow
def test_torchrun_bad_line_on_one_rank_fails_all_with_its_location(tmp_path):
    inputs = make_inputs(tmp_path, sizes=(40, 3))
    cfg = config(tmp_path, inputs, "bad")
    args = cli_args(cfg)
    args[args.index("--on-bad-line") + 1] = "fail"
    p = torchrun(args)
    assert p.returncode != 0
    assert f"{inputs[1]}:3: bad_json" in p.stderr, p.stderr[-3000:]
