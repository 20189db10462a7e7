"""Evaluation labels: --eval-labels picks the annotation, the filter's labels come from the run's configs, and a
token-level metric is privileged exactly when its labels are the filter's (held-out terms halves are not);
per-document arrays against an explicit float64 reference."""

import numpy as np
import pytest

from megatron_tf.data.indexed_dataset import write_dataset
from megatron_tf.evaluation.labels import labels_record, privileged
from megatron_tf.evaluation.runner import EvaluationConfig, evaluate_model
from megatron_tf.labeling.annotate import annotate
from megatron_tf.labeling.blocklist import BlocklistLabeler, split_terms

from .helpers import null_tokenizer, sequence_logprobs, tiny_model, write_jsonl

TOK = null_tokenizer(60)
TERMS = ["3", "5", "7", "9", "11", "13"]


def _annotated(tmp_path, name: str, docs: list[list[int]]) -> str:
    """An indexed prefix annotated as 'all' (every term) and 'h1', 'h2' (--terms-split 1/2, 2/2, seed 0)."""
    prefix = str(tmp_path / f"{name}_text_document")
    write_dataset(prefix, docs, dtype=np.uint16)
    terms = tmp_path / "terms.txt"
    terms.write_text("\n".join(TERMS) + "\n")
    for ann, split in (("all", None), ("h1", "1/2"), ("h2", "2/2")):
        annotate(prefix, BlocklistLabeler.from_file(str(terms), TOK, terms_split=split), TOK, name=ann,
                 progress=False)
    return prefix


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("labels")
    rng = np.random.default_rng(0)
    heldout = [list(rng.integers(0, 20, size=n)) + [TOK.eod] for n in (9, 14, 5, 11)]
    return {"heldout": _annotated(tmp, "heldout", heldout), "train": _annotated(tmp, "train", heldout[::-1]),
            "docs": heldout}


def _configs(data, mode="mask", name="h1"):
    return {"filter": {"token_filter": mode, "forget_sidecar_name": name}, "data": {"data_path": [data["train"]]}}


def _eval(data, eval_labels, configs, **kw):
    cfg = EvaluationConfig(forget_text=[data["heldout"]], retain_text=[data["heldout"]], eval_labels=eval_labels,
                           eval_stride=4, **kw)
    return evaluate_model(tiny_model(60), TOK, cfg, seq_length=6, train_configs=configs)


def test_privileged_when_eval_labels_are_the_filters(data):
    assert set(split_terms(TERMS, "1/2")) | set(split_terms(TERMS, "2/2")) == set(TERMS)
    same = _eval(data, "h1", _configs(data))
    other = _eval(data, "h2", _configs(data))
    lab = same["labels"]
    assert lab["filter_labels"]["name"] == "h1" and lab["filter_labels"]["labeler"] == "blocklist"
    assert lab["filter_labels"]["spec"]["terms_split"] == "1/2" and lab["filter_labels"]["token_filter"] == "mask"
    assert lab["eval_labels"]["name"] == "h1" and lab["eval_labels"]["spec"]["terms_split"] == "1/2"
    assert lab["privileged"] is True and other["labels"]["privileged"] is False
    for role in ("forget", "retain"):
        assert same["loss"][role]["token_level"]["privileged"] is True
        assert other["loss"][role]["token_level"]["privileged"] is False
    assert other["labels"]["eval_labels"]["spec"]["terms_split"] == "2/2"
    # the whole list vs one half: the half's labels are a subset of the filter's -> privileged
    assert _eval(data, "h2", _configs(data, name="all"))["labels"]["privileged"] is True
    # no filter: nothing is privileged, filter_labels is null
    none = _eval(data, "h1", _configs(data, mode="none"))
    assert none["labels"]["filter_labels"] is None and none["labels"]["privileged"] is False
    # the two halves label disjoint tokens of the same documents (the numbers never overlap as terms)
    whole = _eval(data, "all", _configs(data))
    counts = [r["loss"]["forget"]["per_document"]["token_level_tokens"] for r in (same, other, whole)]
    assert counts[0] != counts[1] and np.array_equal(np.add(counts[0], counts[1]), counts[2])
    assert "privileged)" in same["summary"] and "privileged" not in other["summary"]


def test_missing_eval_annotation_names_flag_value_and_files(data, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--eval-labels nope: .*heldout_text_document\.nope\.tokmask and "
                                                r".*heldout_text_document\.nope\.tokscores"):
        _eval(data, "nope", None)
    jsonl = write_jsonl(str(tmp_path / "h.jsonl"), [{"text": "1 2 3"}])
    cfg = EvaluationConfig(forget_text=[jsonl], eval_labels="h1")
    with pytest.raises(FileNotFoundError, match=r"--eval-labels h1: .*h\.jsonl is a JSON Lines file"):
        evaluate_model(tiny_model(60), TOK, cfg, seq_length=6)
    with pytest.raises(ValueError, match="--blocklist-terms-split must be K/N"):
        EvaluationConfig(blocklist="t.txt", blocklist_terms_split="2/1")


def test_per_document_arrays_match_an_explicit_reference(data):
    res = _eval(data, "h2", _configs(data))
    model = tiny_model(60)
    for role, part in (("forget", "forget"), ("retain", "unlabeled")):
        v = res["loss"][role]
        pd = v["per_document"]
        assert v["token_level"]["selection"] == part and set(pd) == {"tokens", "nats", "token_level_tokens",
                                                                     "token_level_nats"}
        assert pd["tokens"] == [len(d) for d in data["docs"]]
        assert sum(pd["token_level_tokens"]) == v["token_level"]["tokens"]
        assert sum(pd["token_level_nats"]) / sum(pd["token_level_tokens"]) == pytest.approx(
            v["token_level"]["nats_per_token"], rel=1e-12)
        assert sum(pd["nats"]) / sum(pd["tokens"]) == pytest.approx(v["nats_per_token"], rel=1e-12)
    # a document of 10 tokens (with its eod) in windows of 6, stride 4: x[0:6] scores t1..t6, x[4:10] scores t7..t10
    d = [TOK.eod, *data["docs"][0]]
    assert len(d) == 11
    ref = -sum(sequence_logprobs(model, d[0:7])) - sum(sequence_logprobs(model, d[4:11])[-4:])
    assert res["loss"]["forget"]["per_document"]["nats"][0] == pytest.approx(ref, rel=1e-10)


def test_privileged_rules():
    def rec(**spec):
        return labels_record("x", {"labeler": "blocklist", "terms_file": "t.txt", "num_terms": 4, **spec})

    full = rec(terms_sha256="a", plurals=True)
    h1 = rec(terms_sha256="a", plurals=True, terms_split="1/2", split_seed=0)
    h2 = rec(terms_sha256="a", plurals=True, terms_split="2/2", split_seed=0)
    assert privileged(h1, h1) and privileged(full, h2) and privileged(h2, full)
    assert not privileged(h1, h2) and not privileged(None, h1)
    assert privileged(h1, rec(terms_sha256="a", plurals=True, terms_split="2/2", split_seed=1))  # parts overlap
    assert not privileged(full, rec(terms_sha256="b", plurals=True))
    sae = labels_record("x", {"labeler": "sae", "latents_sha256": "z", "batch_size": 4})
    assert not privileged(full, sae) and privileged(sae, labels_record("y", {"labeler": "sae", "latents_sha256": "z",
                                                                             "batch_size": 8}))
    unknown = {"name": "forget", "labeler": None, "spec": None}
    assert privileged(unknown, {"name": "forget", "labeler": "blocklist"})
    assert privileged(unknown, {"name": "other", "labeler": "blocklist"}) is None  # cannot tell


def test_filter_labels_from_a_weighted_blend_and_a_configs_object(data):
    from megatron_tf.data.config import FilterConfig, GPTDatasetConfig
    from megatron_tf.evaluation.labels import filter_labels_from_configs
    from megatron_tf.training.arguments import Configs

    cfgs = Configs(data=GPTDatasetConfig(data_path=["0.3", data["train"], "0.7", data["heldout"]]),
                   filter=FilterConfig(token_filter="remove", forget_threshold=0.5, forget_sidecar_name="h2"))
    rec = filter_labels_from_configs(cfgs)
    assert rec == filter_labels_from_configs(cfgs.to_dict())
    assert (rec["name"], rec["labeler"], rec["token_filter"], rec["threshold"]) == ("h2", "blocklist", "remove", 0.5)
    assert rec["spec"]["terms_split"] == "2/2" and rec["spec"]["split_seed"] == 0 and "terms_file" not in rec["spec"]
    gone = filter_labels_from_configs({"filter": {"token_filter": "mask"}, "data": {"data_path": ["/nowhere/x"]}})
    assert gone["labeler"] is None and "no sidecar of annotation 'forget'" in gone["note"]


def test_classifier_labels_are_compared_through_their_teacher():
    """A classifier's labels derive from its teacher's (the artifact's config.json "teacher", in its describe()): a
    run filtered by a classifier taught on blocklist half 1/2 is privileged under eval labels 1/2 or the whole list,
    not under half 2/2; a classifier without a recorded teacher gives None (unknown), never False."""
    def block(**split):
        return {"labeler": "blocklist", "terms_file": "t.txt", "terms_sha256": "a", "plurals": True, **split}

    h1, h2 = block(terms_split="1/2", split_seed=0), block(terms_split="2/2", split_seed=0)

    def cls(teacher_desc, sha="c1"):
        teacher = None if teacher_desc is None else {"name": "forget", "threshold": 0.5, "labeler": teacher_desc}
        return labels_record("cls", {"labeler": "classifier", "artifact": "/x", "config_sha256": sha, "layer": 2,
                                     "batch_tokens": 16384, "teacher": teacher})

    taught_h1 = cls(h1)
    assert privileged(taught_h1, labels_record("forget", h1)) is True
    assert privileged(taught_h1, labels_record("all", block())) is True
    assert privileged(taught_h1, labels_record("heldout_terms", h2)) is False
    assert privileged(taught_h1, taught_h1) is True  # the classifier's own labels
    # another classifier: privileged iff the teachers' labels are
    assert privileged(taught_h1, cls(h1, sha="c2")) is True and privileged(taught_h1, cls(h2, sha="c2")) is False
    # the other way round: a blocklist filter evaluated with a classifier's labels
    assert privileged(labels_record("forget", h1), taught_h1) is True
    assert privileged(labels_record("forget", h2), taught_h1) is False
    # an artifact that predates the teacher record: unknown, not "independent"
    assert privileged(cls(None), labels_record("heldout_terms", h2)) is None
    assert privileged(labels_record("forget", h1), cls(None)) is None
    # a teacher annotated differently on different prefixes: privileged when any prefix's labels are
    mixed = labels_record("cls", {"labeler": "classifier", "config_sha256": "c3", "teacher": {
        "name": "forget", "labeler": "mixed", "per_prefix": {"p1": h1, "p2": block(terms_sha256="b")}}})
    assert privileged(mixed, labels_record("forget", h1)) is True
    assert privileged(mixed, labels_record("heldout_terms", h2)) is False
