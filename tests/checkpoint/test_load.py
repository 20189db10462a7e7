"""checkpoint/load.py against the trainer that wrote the checkpoint: read_run returns what the run saved, load_model
returns the trainer's own weights (bit-equal) and outputs, without importing the trainer's Configs."""

import dataclasses

import pytest
import torch

from megatron_tf.checkpoint import CheckpointError, load_model, read_run
from megatron_tf.model.config import ModelConfig
from megatron_tf.training import pretrain
from tests.training.synth import VOCAB, make_data, tiny_args


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("load")
    prefix = make_data(tmp)
    save = str(tmp / "run")
    held = {}
    result = pretrain(tiny_args(prefix, iters=2, extra=["--save", save, "--token-filter", "mask"]),
                      setup_hook=lambda tr: held.setdefault("trainer", tr))
    return save, held["trainer"], result


def test_read_run_is_what_the_trainer_saved(trained):
    save, trainer, result = trained
    run = read_run(save)
    assert run.path.endswith("iter_0000002")
    assert run.state["iteration"] == 2 and run.state["tokens_seen"] == result.tokens_seen == 2 * 8 * 16
    assert run.state["tokens_learned"] == result.tokens_learned < result.tokens_seen  # mask took some targets out
    assert run.arm == "mask" and run.seq_length == 16
    assert run.model_config == ModelConfig.from_dict(dataclasses.asdict(trainer.model_cfg))
    tc = run.tokenizer_config
    assert (tc.tokenizer_type, tc.tokenizer_model, tc.vocab_size) == ("NullTokenizer", None, VOCAB)
    assert read_run(run.path) == run  # an iter_* directory reads the same


def test_load_model_returns_the_trainers_weights(trained):
    save, trainer, _ = trained
    m = load_model(save)
    ref = trainer.module.state_dict()
    got = m.model.state_dict()
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert torch.equal(got[k], v), k
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    trainer.module.eval()
    with torch.no_grad():
        assert torch.equal(m.model(input_ids=ids), trainer.module(input_ids=ids))
    assert not m.model.training and m.model_config == m.model.config
    assert m.tokenizer.vocab_size == VOCAB and m.run == read_run(save)


def test_no_checkpoint_is_an_error_naming_the_path(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        read_run(str(tmp_path))
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        load_model(str(tmp_path))
