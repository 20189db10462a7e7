"""config/cli.py: flags built from dataclass fields (names, defaults kept, bool pairs, lists, required fields)."""

import argparse
from dataclasses import dataclass, field

import pytest

from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args, opt


@dataclass
class Tool:
    load: list[str] = field(metadata=opt("Checkpoints."))
    output_dir: str = field(metadata=opt("Where results go."))
    seq_length: int | None = field(default=None, metadata=opt("Window."))
    progress: bool = field(default=True, metadata=opt("Progress bars."))
    write_tokenizer: bool = field(default=True, metadata=opt("Tokenizer files.", flag="--tokenizer"))
    device: str = field(default="auto", metadata=opt("Device.", choices=("auto", "cpu")))


def _parse(argv):
    p = argparse.ArgumentParser()
    add_dataclass_args(p, Tool)
    return dataclass_from_args(Tool, p.parse_args(argv))


def test_flags_defaults_bool_pairs_and_lists():
    assert _parse(["--load", "a", "--output-dir", "o"]) == Tool(["a"], "o")
    got = _parse(["--load", "a", "b", "--output-dir", "o", "--seq-length", "7", "--no-progress", "--no-tokenizer",
                  "--device", "cpu"])
    assert got == Tool(["a", "b"], "o", seq_length=7, progress=False, write_tokenizer=False, device="cpu")


def test_a_field_without_default_is_a_required_flag(capsys):
    with pytest.raises(SystemExit) as e:
        _parse(["--load", "a"])
    assert e.value.code == 2 and "--output-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(["--load", "a", "--output-dir", "o", "--device", "gpu"])  # not a choice


@dataclass
class Paths:
    paths: list[str] = field(metadata=opt("Inputs.", positional=True, metavar="P"))
    all: bool = field(default=False, metadata=opt("Every one."))


def test_positional_fields(capsys):
    p = argparse.ArgumentParser()
    add_dataclass_args(p, Paths)
    assert dataclass_from_args(Paths, p.parse_args(["a", "b", "--all"])) == Paths(["a", "b"], True)
    with pytest.raises(SystemExit):
        p.parse_args(["--all"])
    assert "the following arguments are required: P" in capsys.readouterr().err
