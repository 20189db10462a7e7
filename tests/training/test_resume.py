"""Resume config checks across the loss section's rename (config.json "xent" -> "cross_entropy"): a checkpoint saved
before the rename loads into Configs with its loss settings and resumes without a spurious or a missed difference."""


import pytest

from megatron_tf.checkpoint.integrity import CheckpointError
from megatron_tf.parallel.cross_entropy import CrossEntropyConfig
from megatron_tf.training.arguments import Configs
from megatron_tf.training.resume import check_run_config, config_differences
from tests.log_utils import captured_log


def _old_style(cfgs: Configs, impl: str) -> dict:
    """The configs dict a checkpoint saved before the rename: the loss section under "xent", written by hand."""
    d = {k: v for k, v in cfgs.to_dict().items() if k != "cross_entropy"}
    d["xent"] = {"cross_entropy_impl": impl}
    return d


def _resume_log():
    """The messages resume.py logs."""
    return captured_log("megatron_tf.training.resume")


def test_old_xent_section_round_trips():
    cfgs = Configs(cross_entropy=CrossEntropyConfig(cross_entropy_impl="torch"))
    old = _old_style(cfgs, "torch")
    assert "cross_entropy" not in old
    loaded = Configs.from_dict(old)
    assert loaded.cross_entropy == CrossEntropyConfig(cross_entropy_impl="torch")  # not the default "auto"
    assert loaded == cfgs
    assert Configs.from_dict(loaded.to_dict()) == cfgs
    assert "xent" not in loaded.to_dict() and loaded.to_dict()["cross_entropy"] == {"cross_entropy_impl": "torch"}


def test_old_xent_section_compares_equal_on_resume():
    cfgs = Configs(cross_entropy=CrossEntropyConfig(cross_entropy_impl="fused-linear"))
    old = _old_style(cfgs, "fused-linear")
    assert config_differences(old, cfgs.to_dict()) == []
    with _resume_log() as records:
        check_run_config("ckpt", old, cfgs.to_dict(), override=False, finetune=False)
    assert records == []


def test_old_xent_section_difference_still_reported():
    """The old section is compared, not skipped: a changed loss implementation is named under its new section."""
    old = _old_style(Configs(), "torch")
    current = Configs(cross_entropy=CrossEntropyConfig(cross_entropy_impl="fused")).to_dict()
    assert config_differences(old, current) == [("cross_entropy.cross_entropy_impl", "torch", "fused")]
    with _resume_log() as records:
        check_run_config("ckpt", old, current, override=False, finetune=False)  # not a data change: allowed
    assert records == ["--load ckpt: cross_entropy.cross_entropy_impl differs: checkpoint 'torch', now 'fused'"]


def test_data_change_still_refused_with_old_section():
    old = _old_style(Configs(), "auto")
    old["filter"] = {**old["filter"], "token_filter": "mask"}
    current = Configs().to_dict()
    assert current["filter"]["token_filter"] != "mask"
    with pytest.raises(CheckpointError, match=r"filter\.token_filter: checkpoint 'mask'"):
        check_run_config("ckpt", old, current, override=False, finetune=False)
