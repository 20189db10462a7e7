"""evaluate_model: the token-level variant selects forget tokens on the forget set and unlabeled tokens elsewhere;
the CSV rows, the summary line and the files carry the numbers; checkpoint metadata lookup."""

import csv
import json
import os
from dataclasses import dataclass

import pytest

from megatron_tf.evaluation.runner import (
    EvaluationConfig,
    evaluate_model,
    result_rows,
    run_metadata_from_configs,
    write_results,
)

from .helpers import null_tokenizer, tiny_model, write_jsonl

TOK = null_tokenizer(60)


def test_token_level_selection_and_outputs(tmp_path):
    docs = ["1 7 2 7 3", "4 5 6 7 8 9 10 11"]
    for role in ("forget", "retain"):
        write_jsonl(str(tmp_path / f"{role}.jsonl"), [{"text": t} for t in docs])
    (tmp_path / "terms.txt").write_text("7\n")
    cfg = EvaluationConfig(forget_text=[str(tmp_path / "forget.jsonl")], retain_text=[str(tmp_path / "retain.jsonl")],
                           blocklist=str(tmp_path / "terms.txt"), eval_stride=4)
    model = tiny_model(60)
    res = evaluate_model(model, TOK, cfg, seq_length=6, run={"name": "r1", "arm": "mask", "tokens_seen": 100})
    f, r = res["loss"]["forget"], res["loss"]["retain"]
    assert f["tokens"] == r["tokens"] == 5 + 1 + 8 + 1  # with the appended eod
    assert f["forget_tokens"]["tokens"] == 3 and f["unlabeled_tokens"]["tokens"] == 12
    def strip(tl):
        return {k: v for k, v in tl.items() if k not in ("privileged", "eval_labels")}

    assert strip(f["token_level"]) == {"selection": "forget", **f["forget_tokens"]}
    assert strip(r["token_level"]) == {"selection": "unlabeled", **r["unlabeled_tokens"]}
    # no training configs given: the filter's labels are unknown, so is privileged
    assert f["token_level"]["privileged"] is None and res["labels"]["privileged"] is None
    assert res["labels"]["filter_labels_from"] == "not given"
    assert res["labels"]["eval_labels"]["labeler"] == "blocklist" and res["labels"]["eval_labels"]["name"] is None
    assert f["nats_per_token"] == pytest.approx(r["nats_per_token"], rel=1e-12)  # same texts
    assert res["model"]["n_params_non_embedding"] < res["model"]["n_params"]
    assert res["settings"]["seq_length"] == 6 and res["settings"]["eval_stride"] == 4
    assert res["settings"]["precision"] == "float64" and res["mcq"] == {}

    rows = {(x["set"], x["metric"]): x for x in result_rows(res)}
    assert rows[("forget", "token_level_nats_per_token")]["value"] == f["forget_tokens"]["nats_per_token"]
    assert rows[("retain", "nats_per_token")]["n"] == 15 and rows[("retain", "nats_per_token")]["arm"] == "mask"
    assert f"forget {f['nats_per_token']:.3f} (forget {f['forget_tokens']['nats_per_token']:.3f})" in res["summary"]
    assert res["summary"].startswith("r1 [mask] | loss nats/tok:")

    jpath, cpath = write_results(res, str(tmp_path / "out"))
    assert os.path.basename(jpath) == "r1.json"
    back = json.load(open(jpath))
    assert back["loss"]["forget"]["token_level"]["nats_per_token"] == f["forget_tokens"]["nats_per_token"]
    table = list(csv.DictReader(open(cpath)))
    got = next(x for x in table if x["set"] == "forget" and x["metric"] == "nats_per_token")
    assert float(got["value"]) == f["nats_per_token"] and got["run"] == "r1"


def test_run_metadata_from_configs():
    @dataclass
    class Training:
        seq_length: int = 128

    configs = {"training": Training(), "filter": {"token_filter": "remove", "forget_threshold": 0.4},
               "progress": {"iteration": 50, "tokens_seen": 6400, "tokens_learned": 6000}}
    assert run_metadata_from_configs(configs) == {"seq_length": 128, "arm": "remove", "forget_threshold": 0.4,
                                                  "tokens_seen": 6400, "tokens_learned": 6000, "iteration": 50}
    assert run_metadata_from_configs({"model": {}}) == {}


def test_config_checks():
    with pytest.raises(ValueError, match="--eval-stride"):
        EvaluationConfig(eval_stride=0)
    with pytest.raises(ValueError, match="--forget-threshold"):
        EvaluationConfig(forget_threshold=0.0)
