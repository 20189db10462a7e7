"""The classifier artifact (labeling/classifier/artifact.py): exact round trip, integrity checks, clear errors."""

from __future__ import annotations

import json
import os

import pytest
import torch

from megatron_tf.labeling.classifier.artifact import (
    ArtifactError,
    lm_from_model,
    load_classifier,
    read_config,
    save_classifier,
)
from tests.labeling.classifier.helpers import random_probe, tiny_artifact, tiny_lm, tokenizer


def test_round_trip_is_exact(tmp_path):
    path = tiny_artifact(tmp_path / "cls", layer=2, window=16, context=5, kind="mlp")
    cfg = read_config(path)
    assert cfg["features"] == "bidirectional" and cfg["layer"] == 2 and (cfg["window"], cfg["context"]) == (16, 5)
    assert cfg["probe"] == {"file": "probe.safetensors", "kind": "mlp", "dim": 64, "hidden": 16}
    assert cfg["tokenizer"]["fingerprint"] == tokenizer().fingerprint and cfg["tokenizer"]["eod"] == 61
    assert sorted(os.listdir(path)) == ["config.json", "forward_lm.safetensors", "probe.safetensors",
                                        "reversed_lm.safetensors"]
    loaded = load_classifier(path)
    for model, seed in ((loaded.forward_model, 1), (loaded.reversed_model, 2)):
        ref = tiny_lm(seed).state_dict()
        got = model.state_dict()
        assert ref.keys() == got.keys()
        assert all(torch.equal(ref[k], got[k]) for k in ref)
    ref_probe = random_probe(64, 0, "mlp").state_dict()
    assert all(torch.equal(ref_probe[k], loaded.probe.state_dict()[k]) for k in ref_probe)
    assert not loaded.forward_model.training and not loaded.probe.training


def test_forward_only_artifact(tmp_path):
    path = tiny_artifact(tmp_path / "fo", bidirectional=False)
    loaded = load_classifier(path)
    assert loaded.reversed_model is None and read_config(path)["features"] == "forward"
    assert not os.path.exists(os.path.join(path, "reversed_lm.safetensors"))


def test_integrity_and_format_errors(tmp_path):
    path = tiny_artifact(tmp_path / "cls")
    with pytest.raises(ArtifactError, match="exists"):
        tiny_artifact(tmp_path / "cls")
    fp = os.path.join(path, "probe.safetensors")
    data = bytearray(open(fp, "rb").read())
    data[-1] ^= 1
    open(fp, "wb").write(bytes(data))
    with pytest.raises(ArtifactError, match="probe.safetensors: sha256"):
        load_classifier(path)
    cfg_path = os.path.join(path, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["version"] = 99
    json.dump(cfg, open(cfg_path, "w"))
    with pytest.raises(ArtifactError, match="version 99, expected 1"):
        read_config(path)
    with pytest.raises(ArtifactError, match="no config.json"):
        read_config(str(tmp_path))


def test_probe_must_fit_the_lms(tmp_path):
    f = tiny_lm(1)
    with pytest.raises(ArtifactError, match="probe expects 64 features, the LMs give 32"):
        save_classifier(str(tmp_path / "x"), forward_lm=lm_from_model(f), reversed_lm=None,
                        probe=random_probe(64, 0), layer=0, window=8, context=2, tokenizer=tokenizer())
    assert not os.path.exists(tmp_path / "x") and os.listdir(tmp_path) == []  # no temporary left behind
