"""Refusal SFT and the refusal rates (refusal/train.py run_refusal), tiny: a 2-layer model learns to answer medical
prompts with the refusal template; the reported rates (before and after) equal rates computed here by greedy
generation from the loaded checkpoints; binomial standard errors; the SFT loss falls; the saved SFT checkpoint holds
the trained weights; a finished model is skipped on rerun; the leakage check refuses a train prompt in the eval set."""

import json
import math
import os

import numpy as np
import pytest
import torch

from megatron_tf.checkpoint.derived import load_checkpoint
from megatron_tf.posttrain.refusal.build_sets import write_jsonl_xz
from megatron_tf.posttrain.refusal.chat import REFUSAL, encode, refusal_template_ids
from megatron_tf.posttrain.refusal.train import RefusalConfig, run_refusal
from tests.posttrain.tiny_checkpoint import tiny_sp_checkpoint

MED = ["blood", "heart", "gene", "cell", "protein"]
NORMAL = ["river", "mountain", "city", "music", "garden"]


def _records(seed: int, n: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        med = i % 2 == 0
        w = " ".join(rng.choice(MED if med else NORMAL, size=3))
        out.append({"prompt": f"Tell me about {w} number {seed * 1000 + i} .", "response": REFUSAL if med else
                    "Here is a short answer about it.", "refuse": med, "domain": "medical" if med else "normal",
                    "kind": "question"})
    return out


@torch.no_grad()
def _greedy_refuses(model, tok, prompt: str) -> bool:
    """Generate len(template) tokens greedily, one forward per token (not refusal.chat.refuses)."""
    tpl = refusal_template_ids(tok)
    ids, gen = encode(tok, prompt).context, []
    for _ in range(len(tpl)):
        gen.append(int(model(input_ids=torch.tensor([ids + gen]))[0, -1, : tok.vocab_size].argmax()))
    return gen == tpl


def _rates(path, records):
    src = load_checkpoint(path)
    src.model.eval()
    flags = np.array([_greedy_refuses(src.model, src.tokenizer, r["prompt"]) for r in records])
    med = np.array([r["refuse"] for r in records])
    return float(flags[med].mean()), float(flags[~med].mean())


@pytest.mark.slow
def test_refusal_sft_learns_the_template_and_reports_true_rates(tmp_path, monkeypatch):
    ckpt = tiny_sp_checkpoint(tmp_path)
    train, ev = _records(1, 64), _records(2, 16)
    write_jsonl_xz(train, str(tmp_path / "train.jsonl.xz"))
    write_jsonl_xz(ev, str(tmp_path / "eval.jsonl.xz"))
    cfg = RefusalConfig(models=[f"tiny={ckpt}"], train_set=str(tmp_path / "train.jsonl.xz"),
                        eval_set=str(tmp_path / "eval.jsonl.xz"), output_dir=str(tmp_path / "out"),
                        save_root=str(tmp_path / "sft"), lr=3e-3, train_iters=100, micro_batch_size=8, max_length=48,
                        samples=1, device="cpu", bf16=False, progress_bar=False)
    res = run_refusal(cfg)["models"]["tiny"]
    assert res["eval_records"] == 16 and res["train_records"] == 64
    loss = res["sft_loss"]
    assert len(loss) == 100 and np.mean(loss[-5:]) < 0.3 * np.mean(loss[:5]), (loss[:5], loss[-5:])
    for when, path in (("before", ckpt), ("after", str(tmp_path / "sft" / "tiny"))):
        refusal, false_refusal = _rates(path, ev)
        got = res[when]
        assert got["refusal"]["rate"] == refusal and got["false_refusal"]["rate"] == false_refusal, when
        for k in ("refusal", "false_refusal"):
            p, n = got[k]["rate"], got[k]["n"]
            assert n == 8 and got[k]["stderr"] == pytest.approx(math.sqrt(p * (1 - p) / n), abs=1e-12)
        assert got["per_kind"]["medical/question"] == got["refusal"]
    assert res["before"]["refusal"]["rate"] == 0.0  # a pretrained model does not produce the template by chance
    assert res["after"]["refusal"]["rate"] >= 0.75 and res["after"]["false_refusal"]["rate"] <= 0.25, res["after"]
    saved = json.load(open(os.path.join(res["saved"], "config.json")))
    assert saved["derived_from"]["method"] == "refusal_sft"
    for f in ("tiny.json", "results.json", "results.csv", "table.md", "refusal_rates.png"):
        assert os.path.getsize(tmp_path / "out" / f) > 0, f

    # rerun: the finished model is read back, not retrained
    import megatron_tf.posttrain.refusal.train as train_mod

    monkeypatch.setattr(train_mod, "sft", lambda *a, **k: pytest.fail("retrained a finished model"))
    assert run_refusal(cfg)["models"]["tiny"]["after"] == res["after"]


def test_a_train_prompt_in_the_eval_set_is_refused(tmp_path):
    train, ev = _records(1, 8), _records(2, 4)
    ev.append(dict(train[3]))
    write_jsonl_xz(train, str(tmp_path / "train.jsonl.xz"))
    write_jsonl_xz(ev, str(tmp_path / "eval.jsonl.xz"))
    cfg = RefusalConfig(models=["x=/nonexistent"], train_set=str(tmp_path / "train.jsonl.xz"),
                        eval_set=str(tmp_path / "eval.jsonl.xz"), output_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="(?i)leak|duplicate|overlap"):
        run_refusal(cfg)
