"""The scaling report reads what tools/evaluate.py writes (SCHEMA of issue 13): real evaluation JSON of tiny models
(evaluate_model + write_results) -> load_eval_files -> analyze. The per-document arrays reproduce the stored loss
(sum of nats / sum of tokens), drive the document bootstrap, and FLOPs / token counts come through."""

import json

import numpy as np
import pytest

from megatron_tf.evaluation.runner import EvaluationConfig, evaluate_model, write_results
from megatron_tf.evaluation.scaling import ScalingOptions, analyze, load_eval_files

from .helpers import null_tokenizer, tiny_model, write_jsonl

TOK = null_tokenizer(60)


def test_report_reads_evaluate_output(tmp_path):
    docs = ["1 7 2 7 3", "4 5 6 7 8 9 10 11", "12 13 7 14", "3 3 5 7 9 11 13"]
    for role in ("forget", "retain"):
        write_jsonl(str(tmp_path / f"{role}.jsonl"), [{"text": t} for t in docs])
    (tmp_path / "terms.txt").write_text("7\n")
    cfg = EvaluationConfig(forget_text=[str(tmp_path / "forget.jsonl")], retain_text=[str(tmp_path / "retain.jsonl")],
                           blocklist=str(tmp_path / "terms.txt"), eval_stride=4)
    paths = []
    for size, hidden in (("a", 16), ("b", 32)):
        for arm, seed in (("none", 3), ("mask", 4)):
            run = {"name": f"{size}-{arm}", "arm": arm, "size": size, "tokens_seen": 1000 * hidden,
                   "tokens_learned": 900 * hidden}
            res = evaluate_model(tiny_model(60, seed=seed, hidden_size=hidden), TOK, cfg, seq_length=6, run=run)
            paths.append(write_results(res, str(tmp_path / "evals"))[0])
    runs = load_eval_files(paths)
    ev = json.load(open(paths[1]))
    r = runs[1]
    for metric, key in (("loss", "nats_per_token"), ("token_loss", None)):
        tokens, nats = (np.asarray(x, dtype=np.float64) for x in r.per_document[metric]["forget"])
        stored = ev["loss"]["forget"][key] if key else ev["loss"]["forget"]["token_level"]["nats_per_token"]
        assert nats.sum() / tokens.sum() == pytest.approx(stored, rel=1e-12)
    assert r.train_flops == pytest.approx(6 * ev["model"]["n_params"] * 16000)
    an = analyze(runs, ScalingOptions(n_boot=50))
    s = next(s for s in an["slowdowns"] if s["metric"] == "loss" and s["name"] == "b-mask" and s["domain"] == "forget")
    assert s["interval_method"] == "bootstrap over evaluation documents" and s["loss_ci95"] is not None
    assert s["compute"] == pytest.approx(120.0 * runs[3].n_params ** 2)  # paper: 6 * N * 20N, N of size b
    t = next(t for t in an["runs"] if t["name"] == "b-mask")
    assert t["tokens_seen"] == 32000 and t["tokens_learned"] == 28800
    # no training configs were given, so whether the token-level labels are the filter's is unknown
    assert an["token_level"]["forget"] == "unknown"
