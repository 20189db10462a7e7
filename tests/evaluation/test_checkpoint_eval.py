"""A real TP=2 checkpoint from the trainer (1 step, 2 gloo processes, --token-filter mask): evaluated as a TP=2
model from its own shards in the same processes, and by tools/evaluate.py through megatron_tf.checkpoint.load_model (TP
shards merged into one process): identical numbers; the run metadata comes from the checkpoint."""

import json
import os

import pytest
import torch.distributed as dist

from megatron_tf.checkpoint.format import load_model_shard, read_json, resolve_checkpoint_dir
from megatron_tf.evaluation import EvaluationConfig, evaluate_model
from megatron_tf.model import ModelConfig
from megatron_tf.model.gpt import GPTModel
from megatron_tf.parallel.groups import build_parallel_groups
from megatron_tf.tokenizer.tokenizer import NullTokenizer
from megatron_tf.training import pretrain
from tests.dist_utils import init_gloo, run_distributed
from tests.training.synth import VOCAB, make_data, tiny_args
from tools import evaluate as evaluate_tool

from .helpers import write_jsonl


def _cfg(tmp):
    return EvaluationConfig(forget_text=[os.path.join(tmp, "heldout.jsonl")],
                            retain_text=[os.path.join(tmp, "data", "syn")], eval_micro_batch_size=16, limit=15)


def _worker(rank, world_size, port, tmp, prefix):
    init_gloo(rank, world_size, port)
    save = os.path.join(tmp, "ckpt", "tp2-mask")
    pretrain(tiny_args(prefix, iters=1, extra=["--tensor-model-parallel-size", "2", "--save", save,
                                               "--eval-iters", "0", "--token-filter", "mask",
                                               "--forget-threshold", "0.5"]))
    groups = build_parallel_groups(2, 1)
    ckpt_dir = resolve_checkpoint_dir(save)
    mcfg = ModelConfig.from_dict(read_json(os.path.join(ckpt_dir, "config.json"))["configs"]["model"])
    model = GPTModel(mcfg, groups.tp_group)
    model.load_state_dict(load_model_shard(ckpt_dir, groups.tp_rank, 0))
    res = evaluate_model(model.eval(), NullTokenizer(VOCAB), _cfg(tmp), seq_length=16)
    dist.barrier()
    if rank == 0:
        with open(os.path.join(tmp, "tp2.json"), "w") as f:
            json.dump(res, f)


def test_tp2_checkpoint(tmp_path):
    tmp = str(tmp_path)
    (tmp_path / "data").mkdir()
    prefix = make_data(tmp_path / "data", n_docs=60)
    write_jsonl(os.path.join(tmp, "heldout.jsonl"), [{"text": " ".join(str((7 * i + k) % 97) for i in range(n))}
                                                     for k, n in ((1, 30), (2, 9), (3, 41))])
    run_distributed(_worker, 2, tmp, prefix)
    out = os.path.join(tmp, "evals")
    assert evaluate_tool.main(["--load", os.path.join(tmp, "ckpt", "tp2-mask"), "--output-dir", out,
                               "--forget-text", os.path.join(tmp, "heldout.jsonl"), "--retain-text", prefix,
                               "--eval-micro-batch-size", "16", "--limit", "15", "--no-progress", "--device",
                               "cpu"]) == 0
    merged = json.load(open(os.path.join(out, "tp2-mask.json")))
    tp2 = json.load(open(os.path.join(tmp, "tp2.json")))
    assert merged["run"]["arm"] == "mask" and merged["run"]["iteration"] == 1
    assert merged["run"]["tokens_seen"] == 8 * 16 and 0 < merged["run"]["tokens_learned"] < 8 * 16
    saved = json.load(open(os.path.join(tmp, "ckpt", "tp2-mask", "iter_0000001", "config.json")))
    share = saved["dataset_stats"]["train"]["tokens_filtered_fraction"]  # what the trainer logged for its split
    assert 0 < share < 1 and merged["run"]["tokens_filtered_fraction"] == share
    assert merged["settings"]["seq_length"] == 16 and merged["settings"]["tensor_parallel_size"] == 1
    assert tp2["settings"]["tensor_parallel_size"] == 2
    for name in ("forget", "retain"):
        assert merged["loss"][name]["tokens"] == tp2["loss"][name]["tokens"] > 0
        assert merged["loss"][name]["nats_per_token"] == pytest.approx(tp2["loss"][name]["nats_per_token"],
                                                                       rel=1e-6)
    # the retain set is the indexed training prefix: its sidecar gives labels (threshold 0.5 from the checkpoint)
    r = merged["loss"]["retain"]
    assert r["labels"][0]["source"] == "sidecar" and r["labels"][0]["threshold"] == 0.5
    assert r["token_level"]["selection"] == "unlabeled"
    assert r["token_level"]["nats_per_token"] == pytest.approx(tp2["loss"]["retain"]["token_level"]["nats_per_token"],
                                                               rel=1e-6)
