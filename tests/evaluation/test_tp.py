"""Evaluation is the same for a TP=2 model (2 gloo processes, vocabulary-parallel loss, no logits gather), for the
TP=1 model built from the same seed, and for the TP=1 model loaded from the merged TP=2 state dicts."""

import json
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist

from megatron_tf.evaluation import EvaluationConfig, evaluate_model
from megatron_tf.model.hf_export import merge_tp_state_dicts
from megatron_tf.parallel.groups import build_parallel_groups
from tests.dist_utils import init_gloo, run_distributed

from .helpers import demo_tokenizer, tiny_config, tiny_model, write_jsonl

TEXTS = {
    "forget": ["The patient was treated for pneumonia with amoxicillin.", "Insulin lowers blood glucose in diabetes "
               "mellitus; the physician adjusted the dose after the asthma attack and chest pain."],
    "retain": ["Mitochondria produce ATP in eukaryotic cells.", "Chloroplasts convert light into chemical energy."],
    "general": ["The river flows past the old mill towards the sea, and the town gathers on the bank each spring."],
}
MMLU = [{"subject": s, "question": f"Which is {s} question {i}?", "choices": ["alpha", "beta gamma", "delta", "eps"],
         "answer": "ABCD"[i % 4]} for i, s in enumerate(["anatomy", "virology", "college_biology", "astronomy",
                                                        "high_school_biology", "marketing"])]


def _cfg(tmp):
    return EvaluationConfig(forget_text=[os.path.join(tmp, "forget.jsonl")],
                            retain_text=[os.path.join(tmp, "retain.jsonl")],
                            general_text=[os.path.join(tmp, "general.jsonl")],
                            blocklist=os.path.join(tmp, "terms.txt"), mmlu=os.path.join(tmp, "mmlu.jsonl"),
                            eval_stride=8, eval_micro_batch_size=3)


def _evaluate(model, tmp):
    return evaluate_model(model, demo_tokenizer(), _cfg(tmp), seq_length=16, run={"name": "m"}, predictions=True)


def _worker(rank, world_size, port, tmp):
    init_gloo(rank, world_size, port)
    groups = build_parallel_groups(2, 1)
    tok = demo_tokenizer()
    model = tiny_model(tok.vocab_size, seed=9, tp_group=groups.tp_group)
    assert model.tp_size == 2 and model(torch.tensor([[1, 2]])).shape[-1] == model.padded_vocab_size // 2
    result = _evaluate(model, tmp)
    shards = [None, None]
    dist.all_gather_object(shards, {k: v.clone() for k, v in model.state_dict().items()}, group=groups.tp_group)
    if rank == 0:
        merged = tiny_model(tok.vocab_size, seed=123)  # different init, then the merged weights
        merged.load_state_dict(merge_tp_state_dicts(shards, tiny_config(tok.vocab_size)))
        merged = merged.double()
        with open(os.path.join(tmp, "merged.json"), "w") as f:
            json.dump(_evaluate(merged, tmp), f)
    with open(os.path.join(tmp, f"tp2_rank{rank}.json"), "w") as f:
        json.dump(result, f)


def _numbers(result):
    out = {}
    for name, v in result["loss"].items():
        for k in ("tokens", "nats_per_token", "bits_per_byte"):
            out[f"loss/{name}/{k}"] = v[k]
        out[f"loss/{name}/token_level"] = v["token_level"]["nats_per_token"]
    for name, v in result["mcq"].items():
        for k in ("n", "acc", "acc_norm", "p_correct"):
            out[f"mcq/{name}/{k}"] = v[k]
    for name, rows in result["predictions"].items():
        out[f"lls/{name}"] = [ll for r in rows for ll in r["loglikelihoods"]]
    return out


def test_tp2_equals_tp1(tmp_path):
    tmp = str(tmp_path)
    for role, texts in TEXTS.items():
        write_jsonl(os.path.join(tmp, f"{role}.jsonl"), [{"text": t} for t in texts])
    write_jsonl(os.path.join(tmp, "mmlu.jsonl"), MMLU)
    with open(os.path.join(tmp, "terms.txt"), "w") as f:
        f.write("pneumonia\ninsulin\nasthma\nchest pain\n")
    run_distributed(_worker, 2, tmp)
    ref = _numbers(_evaluate(tiny_model(demo_tokenizer().vocab_size, seed=9), tmp))
    assert ref["loss/forget/tokens"] > 20 and 0 < ref["loss/forget/token_level"]
    for name in ("tp2_rank0.json", "tp2_rank1.json", "merged.json"):
        with open(os.path.join(tmp, name)) as f:
            got = _numbers(json.load(f))
        assert got.keys() == ref.keys()
        for k, v in ref.items():
            if isinstance(v, list):
                np.testing.assert_allclose(got[k], v, rtol=1e-11, atol=1e-11, err_msg=f"{name} {k}")
            elif isinstance(v, int):
                assert got[k] == v, (name, k)
            else:
                assert got[k] == pytest.approx(v, rel=1e-11), (name, k)
