"""Knowledge probe: deterministic files, held-out paraphrases, blocklist labels on context words only, cloze scoring
against an explicit reference, and a tiny model trained on the probe alone scoring far above chance."""

import json
import os
import re
import time

import numpy as np
import pytest
import torch

from megatron_tf.evaluation.knowledge import evaluate_knowledge
from megatron_tf.evaluation.knowledge_probe import ProbeConfig, write_probe
from megatron_tf.evaluation.runner import EvaluationConfig, evaluate_model, result_rows
from megatron_tf.labeling.blocklist import BlocklistLabeler
from megatron_tf.model import build_gpt_stage
from tools import make_knowledge_probe

from .helpers import REPO, demo_tokenizer, sequence_logprobs, tiny_config, tiny_model

TERMS = os.path.join(REPO, "data", "demo", "medical_terms.txt")


def _read(d):
    return {n: open(os.path.join(d, n), "rb").read() for n in ("train.jsonl", "test.jsonl", "probe.json")}


def _records(d, name):
    return [json.loads(line) for line in open(os.path.join(d, name), encoding="utf-8")]


def test_tool_is_deterministic_and_validates(tmp_path, capsys):
    a, b, c = (str(tmp_path / x) for x in "abc")
    assert make_knowledge_probe.main(["--output", a, "--seed", "3"]) == 0
    assert make_knowledge_probe.main(["--output", b, "--seed", "3"]) == 0
    assert make_knowledge_probe.main(["--output", c, "--seed", "4"]) == 0
    assert _read(a) == _read(b)  # byte-identical for the same seed
    assert _read(a)["train.jsonl"] != _read(c)["train.jsonl"]
    assert make_knowledge_probe.main(["--output", a, "--choices", "30"]) == 2
    assert "--choices must be in [2, --facts-per-domain = 24], got 30" in capsys.readouterr().err


def test_files_hold_out_the_test_paraphrases(tmp_path):
    info = write_probe(ProbeConfig(output=str(tmp_path), seed=0, facts_per_domain=6, paraphrases=4))
    train, test = _records(tmp_path, "train.jsonl"), _records(tmp_path, "test.jsonl")
    assert info["train_documents"] == len(train) == 6 * (3 + 2) * 4
    assert {r["domain"] for r in train} == {"medical", "biology"} and set(train[0]) == {"text", "domain"}
    assert info["test_questions_per_domain"] == {"medical": 6 * 3 * 2, "biology": 6 * 2 * 2}
    text = "\n".join(r["text"] for r in train)
    for q in test:
        assert len(q["choices"]) == 4 and len(set(q["choices"])) == 4 and q["answer"] in q["choices"]
        # the fact is in the training text, the held-out sentence frame is not
        assert q["entity"] in text and q["answer"] in text
        frame = q["prompt"].replace(q["entity"], "")
        assert frame.strip() and frame not in text.replace(q["entity"], "")
    # every value is the gold answer of one entity (once per held-out template) and a distractor of others
    med = [q for q in test if q["relation"] == "drug"]
    golds = [q["answer"] for q in med]
    assert all(golds.count(g) == 2 for g in golds)
    assert {c for q in med for c in q["choices"]} == set(golds)


def test_blocklist_marks_context_words_never_invented_names(tmp_path):
    write_probe(ProbeConfig(output=str(tmp_path), seed=0))
    train, test = _records(tmp_path, "train.jsonl"), _records(tmp_path, "test.jsonl")
    names = {q["entity"] for q in test} | {c for q in test for c in q["choices"]}
    tok = demo_tokenizer()
    lab = BlocklistLabeler.from_file(TERMS, tok)
    name_re = re.compile("|".join(sorted(map(re.escape, names), key=len, reverse=True)))
    flagged_docs = {"medical": 0, "biology": 0}
    for r in train:
        raw = r["text"].encode("utf-8")
        starts, ends = lab.match_spans(raw)
        for m in name_re.finditer(r["text"]):
            a, b = len(r["text"][: m.start()].encode()), len(r["text"][: m.end()].encode())
            assert not ((starts < b) & (ends > a)).any(), (r["text"], m.group())
        flagged_docs[r["domain"]] += bool(starts.size)
    n_med = sum(r["domain"] == "medical" for r in train)
    assert flagged_docs["medical"] > 0.5 * n_med  # "patients", "treatment", "symptom", ... are marked
    for n in names:
        assert lab.match_spans(n.encode())[0].size == 0 and lab.match_spans(n.lower().encode())[0].size == 0


def test_cloze_scoring_matches_an_explicit_reference(tmp_path):
    write_probe(ProbeConfig(output=str(tmp_path), seed=1, facts_per_domain=3, paraphrases=1, choices=3))
    path = str(tmp_path / "test.jsonl")
    tok, model = demo_tokenizer(), tiny_model(demo_tokenizer().vocab_size, seed=5)
    got = evaluate_knowledge(model, tok, path, seq_length=64, batch_size=3)
    for dom in ("medical", "biology"):
        qs = [q for q in _records(tmp_path, "test.jsonl") if q["domain"] == dom]
        correct = 0
        for q in qs:
            ctx = [tok.eod, *tok.tokenize(q["prompt"].strip())]
            lls = []
            for c in q["choices"]:
                cont = tok.tokenize(" " + c.strip())
                lls.append(sum(sequence_logprobs(model, ctx + cont)[-len(cont):]))
            correct += q["choices"][int(np.argmax(lls))] == q["answer"]
        assert got[dom]["n"] == len(qs) and got[dom]["chance"] == pytest.approx(1 / 3)
        assert got[dom]["acc"] == pytest.approx(correct / len(qs))
    cfg = EvaluationConfig(knowledge=path, eval_micro_batch_size=3)
    res = evaluate_model(model, tok, cfg, seq_length=64)
    assert res["knowledge"] == got
    rows = {(r["set"], r["metric"]): r for r in result_rows(res) if r["kind"] == "knowledge"}
    assert rows[("medical", "acc")]["value"] == got["medical"]["acc"] and rows[("biology", "chance")]["n"] == 12
    assert "knowledge acc: biology" in res["summary"]


class _CompactTokenizer:
    """The demo tokenizer's ids used by the probe, renumbered 0..U-1 (+ eod, pad): a 2-layer model with a
    few-hundred-row vocabulary trains in seconds on one core; what it must learn is unchanged."""

    def __init__(self, base, texts):
        used = sorted({i for t in texts for i in base.tokenize(t)})
        self.base, self.ids = base, {v: k for k, v in enumerate(used)}
        self.eod, self.pad = len(used), len(used) + 1
        self.vocab_size = len(used) + 2

    def tokenize(self, text):
        return [self.ids[i] for i in self.base.tokenize(text)]


def test_tiny_model_trained_on_the_probe_learns_held_out_facts(tmp_path):
    t0 = time.time()
    write_probe(ProbeConfig(output=str(tmp_path), seed=0, facts_per_domain=8, paraphrases=8))
    train, test = _records(tmp_path, "train.jsonl"), _records(tmp_path, "test.jsonl")
    tok = _CompactTokenizer(demo_tokenizer(), [r["text"] for r in train] + [q["prompt"] for q in test]
                            + [" " + c for q in test for c in q["choices"]])
    docs = [[tok.eod, *tok.tokenize(r["text"]), tok.eod] for r in train]
    width = max(map(len, docs))
    rows = torch.full((len(docs), width), tok.pad)
    mask = torch.zeros(len(docs), width - 1)
    for i, d in enumerate(docs):
        rows[i, : len(d)] = torch.tensor(d)
        mask[i, : len(d) - 1] = 1
    torch.manual_seed(0)
    model = build_gpt_stage(tiny_config(tok.vocab_size, hidden_size=64, num_attention_heads=4, ffn_hidden_size=256,
                                        init_method_std=0.02), seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randperm(len(docs), generator=g)[:32]
        x, m = rows[idx], mask[idx]
        logits = model(x[:, :-1], gather_logits=True)
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                reduction="none")
        loss = (nll * m.reshape(-1)).sum() / m.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    res = evaluate_knowledge(model.eval(), tok, str(tmp_path / "test.jsonl"), seq_length=width + 8)
    for dom in ("medical", "biology"):
        assert res[dom]["chance"] == 0.25 and res[dom]["n"] == {"medical": 48, "biology": 32}[dom]
        assert res[dom]["acc"] > 2 * res[dom]["chance"], res  # measured: 0.79 medical, 0.94 biology
    # an untrained model of the same shape is near chance on the same questions
    fresh = evaluate_knowledge(build_gpt_stage(model.config, seed=1).eval(), tok, str(tmp_path / "test.jsonl"),
                               seq_length=width + 8)
    assert all(fresh[d]["acc"] < 0.5 for d in fresh)
    assert time.time() - t0 < 120
