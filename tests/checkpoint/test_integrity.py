"""Checkpoint integrity (issue 14): per-file XXH3-64 checksums verified on load (a flipped byte in the tensor data
of model.safetensors is caught, naming the file and the previous complete checkpoint); a partly written file of a
checkpoint without checksums names the file too; a --load directory without `latest` is refused; files honour the
umask (not safetensors' 0600); non-finite weights are never saved."""

import json
import os
import shutil
import struct

import pytest
import torch

from megatron_tf.checkpoint import format as ckpt
from megatron_tf.checkpoint import load_model
from megatron_tf.checkpoint.format import CheckpointCorrupt, CheckpointError
from megatron_tf.checkpoint.integrity import verify_checkpoint
from megatron_tf.checkpoint.states import rng_state
from megatron_tf.training import pretrain
from megatron_tf.utils.checksum import digest_file
from tests.training.synth import tiny_args, two_checkpoint_run

pytestmark = pytest.mark.filterwarnings("ignore:.*meta.json not found")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run with checkpoints at iterations 1 and 2."""
    return two_checkpoint_run(tmp_path_factory.mktemp("integrity"))


@pytest.fixture
def copy(run, tmp_path):
    prefix, save = run
    dst = str(tmp_path / "run")
    shutil.copytree(save, dst)
    return prefix, dst


def _tensor_data_offset(path: str) -> int:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    return 8 + n


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


def test_manifest_lists_every_file_with_its_checksum(run):
    _, save = run
    d = os.path.join(save, "iter_0000002")
    m = json.load(open(os.path.join(d, "checksums.json")))
    assert m["algorithm"] == "xxh3_64" and m["format"] == "megatron_tf-checksums-v1"
    on_disk = sorted(os.path.relpath(os.path.join(r, n), d) for r, _, ns in os.walk(d) for n in ns)
    assert sorted(m["files"]) == [p for p in on_disk if p != "checksums.json"]
    for rel, e in m["files"].items():  # independent reference: the checksum and size of the file as it is
        p = os.path.join(d, rel)
        assert e == {"xxh3_64": digest_file(p), "bytes": os.path.getsize(p)}
    assert verify_checkpoint(d) == (len(m["files"]), sum(e["bytes"] for e in m["files"].values()), [])


def test_flipped_byte_in_model_data_is_caught_on_load(copy):
    prefix, save = copy
    model = os.path.join(save, "iter_0000002", "mp_rank_00_000", "model.safetensors")
    _flip(model, _tensor_data_offset(model) + 100)  # in the tensor data, not the header: it would load silently
    with pytest.raises(CheckpointCorrupt, match=r"model\.safetensors: file checksum mismatch .*previous complete "
                                                r"checkpoint is .*iter_0000001: load it with --ckpt-step 1"):
        load_model(save)
    with pytest.raises(CheckpointCorrupt, match=r"mp_rank_00_000/model\.safetensors"):
        pretrain(tiny_args(prefix, iters=3, extra=["--load", save, "--save", save]))
    assert open(os.path.join(save, "latest")).read() == "iter_0000002\n"  # nothing was overwritten
    _, _, problems = verify_checkpoint(os.path.join(save, "iter_0000002"))
    assert len(problems) == 1 and "model.safetensors" in problems[0]
    # the previous checkpoint is intact and loads
    assert load_model(save, ckpt_step=1).model is not None


def test_partly_written_file_names_the_file_and_the_previous_checkpoint(copy):
    _, save = copy
    d = os.path.join(save, "iter_0000002")
    model = os.path.join(d, "mp_rank_00_000", "model.safetensors")
    with open(model, "r+b") as f:
        f.truncate(os.path.getsize(model) // 2)
    with pytest.raises(CheckpointCorrupt, match=r"model\.safetensors: \d+ bytes, \d+ when written \(truncated.*"
                                                r"previous complete checkpoint is .*iter_0000001"):
        load_model(save)
    # a checkpoint written before checksums (no checksums.json): safetensors' own error, now naming the file
    os.remove(os.path.join(d, "checksums.json"))
    with pytest.raises(CheckpointCorrupt, match=r"model\.safetensors: cannot read the safetensors file "
                                                r"\(SafetensorError.*previous complete checkpoint is .*iter_0000001"):
        load_model(save)


def test_load_without_latest_refuses_and_names_the_newest(copy):
    prefix, save = copy
    os.remove(os.path.join(save, "latest"))
    before = {n: os.path.getmtime(os.path.join(save, n)) for n in os.listdir(save)}
    with pytest.raises(CheckpointError, match=r"holds 2 checkpoint\(s\), newest .*iter_0000002, but no `latest`.*"
                                              r"--ckpt-step 2"):
        pretrain(tiny_args(prefix, iters=3, extra=["--load", save, "--save", save]))
    assert {n: os.path.getmtime(os.path.join(save, n)) for n in os.listdir(save)} == before
    # told which to load, it resumes from there (iteration 3 follows 2)
    r = pretrain(tiny_args(prefix, iters=3, extra=["--load", save, "--save", save, "--ckpt-step", "2",
                                                   "--eval-iters", "0"]))
    assert r.iterations == [3] and open(os.path.join(save, "latest")).read() == "iter_0000003\n"


def _payload(value: float = 0.5):
    model = {"w": torch.full((4, 4), value), "b": torch.zeros(4)}
    return ckpt.RankPayload(0, 0, 0, True, model, None, rng_state())


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_checkpoint_files_honour_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        d = ckpt.save_checkpoint(str(tmp_path / "s"), 5, _payload(), {"configs": {}}, {"iteration": 5})
    finally:
        os.umask(old)
    for root, dirs, files in os.walk(d):
        for n in files:
            assert os.stat(os.path.join(root, n)).st_mode & 0o777 == file_mode, n
        for n in dirs:
            assert os.stat(os.path.join(root, n)).st_mode & 0o777 == dir_mode, n
    assert os.stat(d).st_mode & 0o777 == dir_mode
    assert os.stat(tmp_path / "s" / "latest").st_mode & 0o777 == file_mode


def test_non_finite_weights_are_never_saved(tmp_path):
    save = str(tmp_path / "s")
    ckpt.save_checkpoint(save, 1, _payload(), {"configs": {}}, {"iteration": 1})
    bad = _payload(float("nan"))
    with pytest.raises(CheckpointError, match=r"refusing to save .*iter_0000002: 1 weight/optimizer tensors hold "
                                              r"NaN or infinite values \(this rank's: \['w'\]\)"):
        ckpt.save_checkpoint(save, 2, bad, {"configs": {}}, {"iteration": 2})
    assert sorted(os.listdir(save)) == ["iter_0000001", "latest"]
    assert open(os.path.join(save, "latest")).read() == "iter_0000001\n"


def test_write_manifest_for_single_process_writers(tmp_path):
    from megatron_tf.checkpoint.integrity import write_manifest

    d = tmp_path / "iter_0000000"
    (d / "mp_rank_00_000").mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "mp_rank_00_000" / "model.safetensors").write_bytes(b"abc")
    write_manifest(str(d))
    files = json.load(open(d / "checksums.json"))["files"]
    assert files == {"config.json": {"xxh3_64": digest_file(str(d / "config.json")), "bytes": 2},
                     "mp_rank_00_000/model.safetensors": {"xxh3_64": digest_file(str(d / "mp_rank_00_000" /
                                                                                   "model.safetensors")), "bytes": 3}}
    assert not (d / "checksums").exists()
    (d / "config.json").write_text("[]")
    _, _, problems = verify_checkpoint(str(d))
    assert len(problems) == 1 and "config.json: file checksum mismatch" in problems[0]
