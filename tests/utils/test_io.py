"""utils/io.py: JSON reading with errors that name the file, atomic writes."""

import json
import os

import pytest

from megatron_tf.checkpoint.format import CheckpointError
from megatron_tf.checkpoint.format import read_json as read_checkpoint_json
from megatron_tf.data.builder import DatasetMetaError
from megatron_tf.utils.io import atomic_write, read_json


def test_read_json_names_the_file_and_raises_the_callers_error(tmp_path):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"a": [1, "é"]}), encoding="utf-8")
    bad.write_text('{"a": 1,', encoding="utf-8")
    assert read_json(str(good)) == {"a": [1, "é"]}
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON: Expecting"):
        read_json(str(bad))
    with pytest.raises(DatasetMetaError, match=r"bad\.json: not valid JSON"):
        read_json(str(bad), DatasetMetaError)
    # the checkpoint reader keeps its own error type and its missing-file message
    with pytest.raises(CheckpointError, match=r"bad\.json: not valid JSON"):
        read_checkpoint_json(str(bad))
    with pytest.raises(CheckpointError, match="checkpoint file missing"):
        read_checkpoint_json(str(tmp_path / "absent.json"))


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_write(str(target), "w") as f:
            f.write("partial")
            raise RuntimeError("killed")
    assert not target.exists() and os.listdir(tmp_path) == []
    with atomic_write(str(target), "w") as f:
        f.write("{}")
    assert target.read_text() == "{}" and os.listdir(tmp_path) == ["out.json"]


def test_atomic_directory_swaps_whole_directories(tmp_path):
    from megatron_tf.utils.io import atomic_directory

    out = tmp_path / "art"
    with atomic_directory(str(out)) as d:
        assert os.path.dirname(d) == str(tmp_path)  # beside the target: same filesystem, rename is atomic
        open(os.path.join(d, "a.txt"), "w").write("one")
        assert not out.exists()  # nothing visible until the block completes
    assert (out / "a.txt").read_text() == "one" and oct(out.stat().st_mode & 0o777) == "0o755"
    with pytest.raises(RuntimeError):
        with atomic_directory(str(out)) as d:
            open(os.path.join(d, "b.txt"), "w").write("two")
            raise RuntimeError("killed")
    assert sorted(os.listdir(out)) == ["a.txt"]  # the old directory is intact, the temporary one is gone
    with atomic_directory(str(out)) as d:
        open(os.path.join(d, "b.txt"), "w").write("two")
    assert sorted(os.listdir(out)) == ["b.txt"]  # replaced as a whole
    assert os.listdir(tmp_path) == ["art"]  # no temporary or moved-aside directory left


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_atomic_writers_honour_the_umask_even_for_safetensors(tmp_path, umask, file_mode, dir_mode):
    """safetensors' save_file creates 0600 files (issue 14, item 12): exports and artifacts written through
    atomic_directory, and atomic_write files, get the umask's modes so a shared cluster's group can read them."""
    import torch
    from safetensors.torch import save_file

    from megatron_tf.utils.io import atomic_directory

    old = os.umask(umask)
    try:
        with atomic_directory(str(tmp_path / "export")) as d:
            save_file({"w": torch.zeros(2)}, os.path.join(d, "model.safetensors"))
            os.makedirs(os.path.join(d, "sub"))
            save_file({"w": torch.zeros(2)}, os.path.join(d, "sub", "x.safetensors"))
        with atomic_write(str(tmp_path / "f.json"), "w") as f:
            f.write("{}")
    finally:
        os.umask(old)
    out = tmp_path / "export"
    assert out.stat().st_mode & 0o777 == dir_mode and (out / "sub").stat().st_mode & 0o777 == dir_mode
    for p in (out / "model.safetensors", out / "sub" / "x.safetensors", tmp_path / "f.json"):
        assert p.stat().st_mode & 0o777 == file_mode, p
