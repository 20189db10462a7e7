"""tools/verify.py: checkpoints against checksums.json (a flipped byte in model.safetensors tensor data is reported
with the file, exit 1), --all over a --save directory, dataset prefixes' sidecars (verify_sidecars), usage errors."""

import os
import struct

import pytest

from megatron_tf.data.sidecar import read_header
from tests.training.synth import make_data, two_checkpoint_run
from tools import verify

pytestmark = pytest.mark.filterwarnings("ignore:.*meta.json not found")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return two_checkpoint_run(tmp_path_factory.mktemp("verify"))


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def test_checkpoints(run, tmp_path, capsys):
    import shutil

    _, src = run
    save = str(tmp_path / "run")
    shutil.copytree(src, save)
    assert verify.main([save]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK checkpoint {os.path.join(save, 'iter_0000002')}: 7 files")
    model = os.path.join(save, "iter_0000001", "mp_rank_00_000", "model.safetensors")
    with open(model, "rb") as f:
        (header,) = struct.unpack("<Q", f.read(8))
    _flip(model, 8 + header + 4)  # a tensor's data: safetensors itself would load it without complaint
    assert verify.main([save]) == 0  # `latest` (iteration 2) is intact
    capsys.readouterr()
    assert verify.main(["--all", save]) == 1
    out = capsys.readouterr().out
    assert f"OK checkpoint {os.path.join(save, 'iter_0000002')}" in out
    assert f"FAILED checkpoint {os.path.join(save, 'iter_0000001')}" in out
    assert f"{model}: file checksum mismatch (xxh3_64)" in out
    # a file added after saving is reported too
    open(os.path.join(save, "iter_0000002", "extra.txt"), "w").write("x")
    assert verify.main([os.path.join(save, "iter_0000002")]) == 1
    assert "extra.txt: not listed in checksums.json" in capsys.readouterr().out


def test_dataset_prefix_sidecars(tmp_path, capsys):
    prefix = make_data(tmp_path)
    assert verify.main([prefix]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK dataset {prefix}: 3 sidecar files verified")
    scores = prefix + ".forget.tokscores"
    _flip(scores, read_header(scores).payload_offset + 10)
    assert verify.main([prefix]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"FAILED dataset {prefix}: {scores}: sidecar payload checksum mismatch")


def test_neither_checkpoint_nor_prefix_is_a_usage_error(tmp_path, capsys):
    assert verify.main([str(tmp_path / "nothing")]) == 2
    assert "neither a checkpoint directory nor a dataset prefix" in capsys.readouterr().err
    assert verify.main([str(tmp_path)]) == 1  # an empty directory: no `latest`, no iter_*
    assert "not a checkpoint" in capsys.readouterr().out
