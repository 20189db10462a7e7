"""Refusal sets never leak evaluation questions; the detector on hand examples; SFT rows and the greedy check."""

import json
import lzma
import os

import numpy as np
import pytest
import torch

from megatron_tf.model.config import ModelConfig
from megatron_tf.model.gpt import build_gpt_stage
from megatron_tf.posttrain.data import lm_batch
from megatron_tf.posttrain.refusal.build_sets import (
    LeakIndex,
    RefusalSetConfig,
    build_sets,
    check_no_leakage,
    load_set,
    write_jsonl_xz,
)
from megatron_tf.posttrain.refusal.chat import REFUSAL, encode, is_refusal, normalize_question, refuses, sft_row
from megatron_tf.tokenizer.tokenizer import build_tokenizer


def _write(path, recs):
    path.write_bytes(lzma.compress("".join(json.dumps(r) + "\n" for r in recs).encode()))
    return str(path)


def word(i, k=0):
    """A distinct alphabetic word per (i, k) (the builder's normaliser splits letters from digits)."""
    n, out = i * 1000 + k, ""
    for _ in range(4):
        n, r = divmod(n, 26)
        out += "abcdefghijklmnopqrstuvwxyz"[r]
    return "q" + out


CONDITIONS = [f"{word(i)} syndrome" for i in range(40)]


@pytest.fixture
def corpus(tmp_path):
    medquad = []
    for i, c in enumerate(CONDITIONS):
        for q in (f"What is (are) {c} ?", f"What are the symptoms of {c} ?", f"How to diagnose {c} ?"):
            medquad.append({"text": q + "\nAnswer text about it.", "focus": c})
        # near duplicates of the same question under ANOTHER focus (different case / punctuation / one extra word)
        medquad.append({"text": f"what is (are) {c}?\nAnother answer.", "focus": c + " (variant)"})
        medquad.append({"text": f"What are the symptoms of the {c} ?\nMore.", "focus": f"other {i}"})
    bio = [{"text": " ".join(word(100 + i, k) for k in range(60)) + f". The {word(i, 999)} is a protein that cuts "
            f"chains of {word(i, 998)} molecules in cells."} for i in range(30)]
    med_text = [{"text": " ".join(word(200 + i, k) for k in range(60))} for i in range(20)]
    mcq = [{"question": f"What are the symptoms of {CONDITIONS[3]} ?", "choices": ["a", "b"], "answer": "A"}]
    return {"medquad": _write(tmp_path / "mq.jsonl.xz", medquad), "bio": _write(tmp_path / "bio.jsonl.xz", bio),
            "med": _write(tmp_path / "med.jsonl.xz", med_text), "mcq": _write(tmp_path / "mcq.jsonl.xz", mcq)}


def test_builder_never_leaks_eval_questions(corpus, tmp_path):
    cfg = RefusalSetConfig(medquad=[corpus["medquad"]], medical_text=[corpus["med"]], normal_text=[corpus["bio"]],
                           exclude=[corpus["mcq"]], output_dir=str(tmp_path), eval_fraction=0.3,
                           max_per_kind_train=1000, max_per_kind_eval=1000, continuation_words=8)
    train, ev, stats = build_sets(cfg)
    assert train and ev and {r["kind"] for r in train} == {"question", "continuation", "definition"}
    assert all(r["refuse"] == (r["domain"] == "medical") for r in train + ev)
    assert all(r["response"] == REFUSAL for r in train if r["refuse"])
    eval_keys = {normalize_question(r["prompt"]) for r in ev}
    train_keys = {normalize_question(r["prompt"]) for r in train}
    assert not eval_keys & train_keys
    # near duplicates: no training prompt shares >= 80% of its words with an eval question (brute force)
    for t in train:
        a = set(normalize_question(t["prompt"]).split())
        for e in ev:
            b = set(normalize_question(e["prompt"]).split())
            assert len(a & b) / len(a | b) < 0.8, (t["prompt"], e["prompt"])
    # the excluded MCQ question is gone from training (even though its focus group may be in training)
    assert normalize_question(f"what are the symptoms of {CONDITIONS[3]}") not in train_keys
    assert stats["dropped_as_leaks"] > 0  # the planted variants were caught
    # groups never straddle the split
    assert not {r["group"] for r in train} & {r["group"] for r in ev}


def test_check_no_leakage_and_index():
    idx = LeakIndex(["What is (are) Leukemia ?"], 0.8)
    assert idx.match("what is (are) leukemia?")  # exact after normalisation
    assert idx.match("What is (are) the Leukemia ?")  # near duplicate: 4/5 words shared
    assert not idx.match("What is (are) Lymphoma ?")  # 3/5: a different question
    assert idx.match("Continue the text: What is (are) leukemia? Leukemia is a cancer of the blood cells")
    with pytest.raises(ValueError, match="duplicate evaluation"):
        check_no_leakage([{"prompt": "WHAT IS (ARE) LEUKEMIA"}], ["What is (are) Leukemia ?"])


def test_detector_hand_examples():
    assert is_refusal(REFUSAL)
    assert is_refusal("  i'm sorry,   but I can't help with MEDICAL questions. Please see a doctor.")
    assert not is_refusal("I'm sorry, but I can't help with that.")
    assert not is_refusal("Sure. " + REFUSAL)
    assert not is_refusal("Leukemia is a cancer of the blood.")
    assert not is_refusal("")


def test_set_files_roundtrip_and_errors(tmp_path):
    p = str(tmp_path / "s.jsonl.xz")
    write_jsonl_xz([{"prompt": "q", "response": "a", "refuse": False}], p)
    assert load_set(p)[0]["prompt"] == "q"
    write_jsonl_xz([{"prompt": "q", "response": "a", "refuse": "no"}], p)
    with pytest.raises(ValueError, match="refuse"):
        load_set(p)


DEMO_SP = os.path.join(os.path.dirname(__file__), "..", "..", "..", "data", "demo", "tokenizer", "demo_sp.model")


def demo_tok():
    return build_tokenizer("SentencePieceTokenizer", DEMO_SP)


def test_sft_row_weights_cover_the_response_only():
    tok = demo_tok()
    row = sft_row(tok, "What is (are) anemia ?", REFUSAL, max_length=64)
    e = encode(tok, "What is (are) anemia ?", REFUSAL)
    assert row.ids == e.context + e.response and e.response[-1] == tok.eod
    b = lm_batch([row], tok.pad)
    learned = b["labels"][0][b["loss_mask"][0] > 0].tolist()
    assert learned == e.response


def test_greedy_check_equals_generation():
    """refuses() (teacher-forced argmax over the template) equals greedy generation of the template ids."""
    tok = demo_tok()
    cfg = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=tok.vocab_size,
                      max_position_embeddings=64)
    model = build_gpt_stage(cfg, seed=0).float().eval()
    rng = np.random.default_rng(0)
    prompts = ["What is (are) " + " ".join(rng.choice(["cell", "blood", "gene", "heart", "the"], 3)) + " ?"
               for _ in range(8)]

    def greedy(p, n):
        ids, gen = encode(tok, p).context, []
        with torch.no_grad():
            for _ in range(n):
                gen.append(int(model(input_ids=torch.tensor([ids + gen]))[0, -1, : tok.vocab_size].argmax()))
        return gen

    template = greedy(prompts[0], 3)  # what the model itself generates after prompt 0: refused there by definition
    flags = refuses(model, tok, prompts, template_ids=template, max_length=64)
    assert flags[0]
    for p, f in zip(prompts, flags):
        assert f == (greedy(p, 3) == template)


def test_eval_limit_mixes_kinds():
    from megatron_tf.posttrain.refusal.train import _limit

    recs = [{"prompt": f"{k} {i}", "refuse": k.startswith("m"), "kind": k} for k in ("mq", "mc", "nd", "nc")
            for i in range(50)]
    got = _limit(recs, 20)
    assert sum(r["refuse"] for r in got) == 20 and len(got) == 40
    assert {r["kind"] for r in got} == {"mq", "mc", "nd", "nc"}  # not just the first kind of the file
    assert _limit(recs, 20) == got and _limit(recs, None) == recs
