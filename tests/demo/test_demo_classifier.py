"""The demo's data stage with a biLM classifier (--classifier): every prefix is annotated as `cls` and the training
filters read it, while the blocklist annotation `forget` stays (the token-level evaluation's reference labels)."""

import json
import lzma
import os
import shutil

import numpy as np
import pytest
import torch

from megatron_tf.data.indexed_dataset import IndexedDataset
from megatron_tf.data.sidecar import TokenScores
from megatron_tf.demo.data_stage import DEMO_DIR, DOMAINS, filter_summary, format_filter_table, prepare_demo_data
from megatron_tf.labeling.classifier.artifact import lm_from_model, save_classifier
from megatron_tf.labeling.classifier.probe import Probe
from megatron_tf.model.config import ModelConfig
from megatron_tf.model.gpt import build_gpt_stage
from megatron_tf.tokenizer.tokenizer import build_tokenizer

TEXT = {
    "medical": "The patient was given insulin for diabetes and the dose of the drug was changed. ",
    "biology": "Mitochondria make energy for the cell and the membrane keeps the proteins inside. ",
    "general": "The train left the station in the morning and the town was quiet for the day. ",
}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo_src")
    os.makedirs(d / "tokenizer")
    shutil.copyfile(os.path.join(DEMO_DIR, "tokenizer", "demo_sp.model"), d / "tokenizer" / "demo_sp.model")
    shutil.copyfile(os.path.join(DEMO_DIR, "medical_terms.txt"), d / "medical_terms.txt")
    for split in ("train", "heldout"):
        os.makedirs(d / split)
        for dom in DOMAINS:
            with lzma.open(d / split / f"{dom}.jsonl.xz", "wt") as f:
                for k in range(12):
                    f.write(json.dumps({"text": TEXT[dom] * (3 + k % 4)}) + "\n")
    return str(d)


def constant_artifact(path, tok, bias: float) -> str:
    """A biLM artifact whose probe ignores the features and outputs sigmoid(bias) for every token."""
    cfg = ModelConfig(num_layers=1, hidden_size=16, num_attention_heads=2, ffn_hidden_size=32,
                      vocab_size=tok.vocab_size, make_vocab_size_divisible_by=8)
    lms = [lm_from_model(build_gpt_stage(cfg, seed=s).eval()) for s in (1, 2)]
    probe = Probe(32, "logistic")
    with torch.no_grad():
        for m in probe.head.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.zero_()
                m.bias.fill_(bias)
    return save_classifier(str(path), forward_lm=lms[0], reversed_lm=lms[1], probe=probe.eval(), layer=0, window=64,
                           context=16, tokenizer=tok, threshold=0.5, base_rate=0.1)


@pytest.mark.parametrize("bias", [20.0, -20.0])
def test_training_filters_read_the_classifier_annotation(tmp_path, demo_dir, bias):
    tok = build_tokenizer("SentencePieceTokenizer", os.path.join(demo_dir, "tokenizer", "demo_sp.model"))
    cls = constant_artifact(tmp_path / "cls", tok, bias)
    data = prepare_demo_data(str(tmp_path / "out"), demo_dir=demo_dir, progress=False, classifier=cls)
    assert data.filter_name == "cls"
    for prefix in [*data.train.values(), *data.heldout.values()]:
        ds = IndexedDataset(prefix)
        q = TokenScores(prefix + ".cls.tokscores", ds).q
        eod = np.asarray(ds.tokens(0, ds.num_tokens)) == tok.eod
        assert eod.sum() == ds.num_documents  # one <|endoftext|> per document
        # every token scored by the classifier, except <|endoftext|>: special tokens are never forget (0)
        assert np.all(q[~eod] == (255 if bias > 0 else 0)) and np.all(q[eod] == 0)
        assert os.path.exists(prefix + ".forget.tokscores")  # the blocklist labels stay
    summary = filter_summary(data, seq_length=32, num_samples=16, document_threshold=0.5)
    rows = {(r["mode"], r["domain"]): r for r in summary}
    for dom in DOMAINS:
        assert rows[("none", dom)]["learned_fraction"] == 1.0
        # everything is forget (bias > 0) or nothing is, in every domain: the blocklist would flag medical only
        # (bias > 0: only the <|endoftext|> targets, about 1 in 50-100 tokens, are learned and left unhidden)
        if bias > 0:
            assert 0.0 < rows[("mask", dom)]["learned_fraction"] < 0.05
            assert 0.95 < rows[("remove", dom)]["hidden_fraction"] < 1.0
        else:
            assert rows[("mask", dom)]["learned_fraction"] == 1.0
            assert rows[("remove", dom)]["hidden_fraction"] == 0.0
        # document: every token forget -> every document dropped (reported, not an error); none forget -> kept
        assert rows[("document", dom)].get("all_dropped", False) == (bias > 0)
    assert ("every document dropped" in format_filter_table(summary)) == (bias > 0)


TINY_LM = {"num_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "seq_length": 64, "micro_batch_size": 4,
           "train_tokens": 2048, "lr": 3e-3, "split": "50,50,0"}  # 12 documents per domain: 2% would be none


@pytest.mark.slow
def test_classifier_run_held_out_terms_protocol(tmp_path, demo_dir):
    """classifier_run on the tiny corpus: the classifier is taught blocklist half 1/2 (annotation `forget`), its
    artifact records that teacher, the evaluation labels (half 2/2) are independent of it for evaluation/labels.py
    while half 1/2 is privileged, and the held-out evaluation's `novel` tokens are exactly those half 2/2 marks and
    half 1/2 does not (counted here with the blocklist labelers themselves, not the sidecars)."""
    from megatron_tf.demo import classifier_run as cr
    from megatron_tf.demo.data_stage import DemoData
    from megatron_tf.evaluation.labels import labels_record, privileged, sidecar_labeler
    from megatron_tf.labeling.blocklist import BlocklistLabeler
    from megatron_tf.labeling.classifier.artifact import read_config
    from megatron_tf.labeling.classifier.labeler import ClassifierLabeler

    out, res = str(tmp_path / "run"), str(tmp_path / "results")
    summary = cr.run(out, results=res, demo_dir=demo_dir, lm=TINY_LM)
    assert summary["labels"]["teacher"]["terms_split"] == "1/2"
    assert summary["labels"]["heldout"]["terms_split"] == "2/2"
    assert sorted(os.listdir(res)) == sorted(cr.RESULT_FILES.values())
    data = prepare_demo_data(os.path.join(out, "data"), demo_dir=demo_dir, progress=False, terms_split="1/2",
                             probe=False)  # everything exists: only opens
    teacher_desc, _ = sidecar_labeler(data.train["medical"], "forget")
    for name in ("cls_bilm", "cls_forward", "cls_bilm_mlp"):
        assert read_config(os.path.join(out, name))["teacher"] == {"name": "forget", "threshold": 0.5,
                                                                   "labeler": teacher_desc}
    # a run filtered by this classifier: eval labels 2/2 independent, 1/2 (its teacher's) privileged
    filt = labels_record("cls", ClassifierLabeler(os.path.join(out, "cls_bilm"), device="cpu").describe())
    held_desc, _ = sidecar_labeler(data.heldout["medical"], "heldout_terms")
    assert privileged(filt, labels_record("heldout_terms", held_desc)) is False
    assert privileged(filt, labels_record("forget", teacher_desc)) is True
    # novel tokens: marked by half 2/2, not by half 1/2, over the three held-out prefixes
    tok = build_tokenizer("SentencePieceTokenizer", data.tokenizer_model)
    terms = os.path.join(demo_dir, "medical_terms.txt")
    h1, h2 = (BlocklistLabeler.from_file(terms, tok, terms_split=s) for s in ("1/2", "2/2"))
    novel = 0
    for prefix in data.heldout.values():
        ds = IndexedDataset(prefix)
        offs = ds.document_token_offsets()
        docs = [np.asarray(ds.tokens(int(offs[i]), int(offs[i + 1])), np.int64) for i in range(ds.num_documents)]
        novel += sum(int(((b >= 0.5) & (a < 0.5)).sum())
                     for a, b in zip(h1.score_documents(docs), h2.score_documents(docs)))
    assert novel > 0  # "patient", "insulin" are in half 2/2, "diabetes" in half 1/2
    for scorer in ("cls_bilm", "cls_forward", "sidecar:forget"):
        assert summary["eval_heldout_terms"][scorer]["novel"]["tokens"] == novel
    assert "novel" not in summary["eval_filter_labels"]["cls_bilm"]
    # a data directory annotated under another protocol is refused, naming the sidecar
    stale = DemoData(**{**data.__dict__, "terms_split": "1/3"})
    with pytest.raises(ValueError, match=r"train_medical_text_document\.forget\.tokscores: annotation 'forget' was "
                                         r"made with blocklist terms_split '1/2', this protocol needs '1/3'"):
        cr.check_labels(stale)


def test_main_passes_each_flag_to_run(monkeypatch):
    """python -m megatron_tf.demo.classifier_run's flags (ClassifierDemoConfig) reach run's parameters."""
    from megatron_tf.demo import classifier_run as cr

    calls = []
    monkeypatch.setattr(cr, "run", lambda *a, **k: calls.append((a, k)))
    assert cr.main([]) == 0
    assert calls[-1] == (("runs/classifier_demo", 1234, None), {})
    assert cr.main(["--out", "o", "--seed", "3", "--results", "r"]) == 0
    assert calls[-1] == (("o", 3, "r"), {})
