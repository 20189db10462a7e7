"""tools/evaluate.py end to end with the checkpoint loader replaced by an in-memory model: files, numbers equal to
the in-process evaluation, metadata from the checkpoint configs, resume (skip) and --overwrite."""

import csv
import json
import os

import pytest

from megatron_tf.evaluation import EvaluationConfig, evaluate_model
from megatron_tf.model import build_gpt_stage
from tests.evaluation.helpers import demo_tokenizer, tiny_config, write_jsonl
from tools import evaluate as evaluate_tool

CONFIGS = {"training": {"seq_length": 24, "seed": 1}, "filter": {"token_filter": "mask", "forget_threshold": 0.5}}
STATE = {"iteration": 5, "tokens_seen": 1000, "tokens_learned": 900}


def _model():
    return build_gpt_stage(tiny_config(demo_tokenizer().vocab_size), seed=4)


@pytest.fixture
def inputs(tmp_path):
    write_jsonl(str(tmp_path / "med.jsonl"), [{"text": "The patient had pneumonia and a fever."},
                                              {"text": "Insulin treats diabetes."}])
    write_jsonl(str(tmp_path / "bio.jsonl"), [{"text": "Cells divide by mitosis."}])
    write_jsonl(str(tmp_path / "mmlu.jsonl"), [
        {"subject": s, "question": f"Question {i} about {s}?", "choices": ["one", "two", "three", "four"],
         "answer": "ABCD"[i % 4]} for i, s in enumerate(["anatomy", "college_biology", "astronomy", "virology"])])
    (tmp_path / "terms.txt").write_text("pneumonia\ninsulin\n")
    (tmp_path / "ckpt" / "run7").mkdir(parents=True)
    return tmp_path


def _argv(t, *extra):
    return ["--load", str(t / "ckpt" / "run7"), "--output-dir", str(t / "out"), "--forget-text", str(t / "med.jsonl"),
            "--retain-text", str(t / "bio.jsonl"), "--blocklist", str(t / "terms.txt"), "--mmlu",
            str(t / "mmlu.jsonl"), "--eval-micro-batch-size", "2", "--no-progress", *extra]


def test_evaluate_tool(inputs, monkeypatch, capsys):
    t = inputs
    calls = []

    def fake_load(path, device):
        calls.append(path)
        return _model(), CONFIGS, demo_tokenizer(), STATE, {"train": {"tokens_filtered_fraction": 0.0123}}

    monkeypatch.setattr(evaluate_tool, "load_checkpoint", fake_load)
    assert evaluate_tool.main(_argv(t, "--size", "tiny")) == 0
    out = capsys.readouterr().out
    res = json.load(open(t / "out" / "run7.json"))
    assert res["summary"] in out
    assert res["run"]["name"] == "run7" and res["run"]["arm"] == "mask" and res["run"]["size"] == "tiny"
    assert (res["run"]["tokens_seen"], res["run"]["tokens_learned"], res["run"]["iteration"]) == (1000, 900, 5)
    assert res["settings"]["seq_length"] == 24
    assert res["run"]["tokens_filtered_fraction"] == 0.0123  # the trainer's train-split statistic, for the frontier
    assert res["loss"]["forget"]["labels"][0]["threshold"] == 0.5
    # the same numbers as the in-process API
    cfg = EvaluationConfig(forget_text=[str(t / "med.jsonl")], retain_text=[str(t / "bio.jsonl")],
                           blocklist=str(t / "terms.txt"), mmlu=str(t / "mmlu.jsonl"), eval_micro_batch_size=2)
    ref = evaluate_model(_model(), demo_tokenizer(), cfg, seq_length=24)
    for name in ("forget", "retain"):
        assert res["loss"][name]["nats_per_token"] == ref["loss"][name]["nats_per_token"]
    tl, ref_tl = res["loss"]["forget"]["token_level"], ref["loss"]["forget"]["token_level"]
    assert {**tl, "privileged": None} == ref_tl and ref_tl["privileged"] is None  # ref: no training configs given
    # the checkpoint's configs say --token-filter mask with annotation "forget", whose sidecars are not found: the
    # on-the-fly --blocklist labels cannot be compared with it -> unknown
    assert res["labels"]["filter_labels"]["name"] == "forget" and res["labels"]["filter_labels"]["labeler"] is None
    assert res["labels"]["filter_labels_from"] == "train_configs" and tl["privileged"] is None
    # SCHEMA run fields: training FLOPs (6 N D, N all parameters, D tokens seen) and the matched count
    assert res["run"]["train_flops"] == 6.0 * res["model"]["n_params"] * 1000
    assert res["run"]["train_tokens_count"] == "learned"  # absent from these configs: the old default
    pd = res["loss"]["forget"]["per_document"]
    assert len(pd["tokens"]) == 2 and sum(pd["token_level_tokens"]) == tl["tokens"]
    assert res["mcq"] == ref["mcq"]
    rows = list(csv.DictReader(open(t / "out" / "summary.csv")))
    assert {r["set"] for r in rows} == {"forget", "retain", "mmlu_medical", "mmlu_biology", "mmlu_other"}
    assert os.path.isfile(t / "out" / "run7.csv")

    # resume: an existing result is not recomputed; --overwrite recomputes
    mtime = os.path.getmtime(t / "out" / "run7.json")
    assert evaluate_tool.main(_argv(t)) == 0 and len(calls) == 1
    assert "(exists, skipped)" in capsys.readouterr().out
    assert os.path.getmtime(t / "out" / "run7.json") == mtime
    assert evaluate_tool.main(_argv(t, "--overwrite", "--arm", "custom", "--tokens-seen", "5")) == 0
    res2 = json.load(open(t / "out" / "run7.json"))
    assert len(calls) == 2 and res2["run"]["arm"] == "custom" and res2["run"]["tokens_seen"] == 5


def test_run_name_and_loader_errors(tmp_path):
    assert evaluate_tool.default_run_name("/x/runs/tiny-none/iter_0000100") == "tiny-none"
    assert evaluate_tool.default_run_name("/x/runs/tiny-none/") == "tiny-none"
    with pytest.raises(SystemExit):  # no loader yet, or no such directory: a clear exit either way
        evaluate_tool.load_checkpoint(str(tmp_path / "no_such_checkpoint"))
    with pytest.raises(SystemExit):
        evaluate_tool.parse_args(["--load", "a", "b", "--output-dir", "o", "--run-name", "x"])


def test_eval_labels_that_do_not_exist_exit_2(inputs, monkeypatch, capsys):
    import numpy as np

    from megatron_tf.data.indexed_dataset import write_dataset

    t = inputs
    tok = demo_tokenizer()
    prefix = str(t / "held_text_document")
    write_dataset(prefix, [tok.tokenize("The patient had a fever.") + [tok.eod]], dtype=np.uint16)
    monkeypatch.setattr(evaluate_tool, "load_checkpoint", lambda path, device: (_model(), CONFIGS, tok, STATE, {}))
    argv = ["--load", str(t / "ckpt" / "run7"), "--output-dir", str(t / "out2"), "--forget-text", prefix,
            "--eval-labels", "heldout_half", "--no-progress"]
    assert evaluate_tool.main(argv) == 2
    err = capsys.readouterr().err
    assert "--eval-labels heldout_half" in err and f"{prefix}.heldout_half.tokmask" in err
    assert f"{prefix}.heldout_half.tokscores" in err
