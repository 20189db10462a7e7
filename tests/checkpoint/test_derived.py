"""Derived checkpoints: a modified model saved with provenance loads back bit-identical and keeps the source's
pretraining counters; LoRA models are refused until merged."""

import json
import os

import pytest
import torch

from megatron_tf.checkpoint.derived import load_checkpoint, save_checkpoint
from megatron_tf.posttrain.attacks.lora import add_lora
from megatron_tf.training import pretrain
from tests.training.synth import make_data, tiny_args


def test_roundtrip_with_provenance(tmp_path):
    prefix = make_data(tmp_path)
    pretrain(tiny_args(prefix, iters=2, extra=["--save", str(tmp_path / "src")]))
    src = load_checkpoint(str(tmp_path / "src"))
    assert src.pretrain_tokens == 2 * 8 * 16 and src.arm == "none"
    with torch.no_grad():
        src.model.decoder.layers["1"].mlp.linear_fc2.weight.add_(0.25)
    out = save_checkpoint(src.model, src, str(tmp_path / "derived"), {"method": "test", "k": 1})
    back = load_checkpoint(str(tmp_path / "derived"))
    for (n, a), (m, b) in zip(src.model.state_dict().items(), back.model.state_dict().items()):
        assert n == m and torch.equal(a, b), n
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["derived_from"]["method"] == "test" and cfg["derived_from"]["checkpoint"] == os.path.abspath(src.path)
    assert back.pretrain_tokens == src.pretrain_tokens and back.state["iteration"] == 2
    # the trainer finetunes from it: the first loss differs from finetuning the source (same seed, same data), so
    # the derived weights were loaded
    first = [pretrain(tiny_args(prefix, iters=1, extra=["--load", d, "--finetune", "--save", str(tmp_path / f"ft{i}")]
                                )).losses[0] for i, d in enumerate((str(tmp_path / "src"), str(tmp_path / "derived")))]
    assert first[0] != first[1]
    add_lora(back.model, rank=2)
    with pytest.raises(ValueError, match="LoRA"):
        save_checkpoint(back.model, back, str(tmp_path / "x"), {"method": "lora"})
