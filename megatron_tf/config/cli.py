"""Command-line flags generated from dataclass configs.

Configs live next to what they configure (model/config.py, data/config.py, ...). Each field becomes a flag named
after it (`num_layers` -> `--num-layers`, Megatron-LM's spelling), with help text and options from the field metadata:

    @dataclass
    class ModelConfig:
        num_layers: int = field(default=2, metadata=opt("Number of transformer layers."))
        ffn_hidden_size: int | None = field(default=None, metadata=opt("MLP width (default 4h, 8h/3 for SwiGLU)."))
        activation: str = field(default="swiglu", metadata=opt("MLP activation.", choices=("swiglu", "relu2")))

    parser = argparse.ArgumentParser(); add_dataclass_args(parser, ModelConfig)
    cfg = dataclass_from_args(ModelConfig, parser.parse_args())

`opt(..., flag="--other-name", aliases=("--alias",))` renames a flag; `opt(..., cli=False)` keeps a field off the
command line; `opt(..., positional=True)` makes it a positional argument (`tool.py PATH...`). bool fields get
`--x/--no-x`; list fields take several values (`nargs="+"`); a field without a default is a required flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


def opt(help: str, *, flag: str | None = None, aliases: tuple[str, ...] = (), choices=None, cli: bool = True,
        metavar: str | None = None, positional: bool = False) -> dict:
    return {"help": help, "flag": flag, "aliases": tuple(aliases), "choices": choices, "cli": cli,
            "metavar": metavar, "positional": positional}


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(element type, is_list) for int, float, str, bool, X | None, list[X]."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _base_type(args[0])
        return str, False
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return (args[0] if args else str), True
    return tp, False


def add_dataclass_args(parser: argparse.ArgumentParser, cls, title: str | None = None) -> argparse._ArgumentGroup:
    group = parser.add_argument_group(title or cls.__name__, (cls.__doc__ or "").strip().split("\n")[0] or None)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        md = f.metadata
        if not md.get("cli", True) or not f.init:
            continue
        tp, is_list = _base_type(hints[f.name])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        positional = md.get("positional", False)
        names = [f.name] if positional else [_flag(f), *md.get("aliases", ())]
        help_text = ((md.get("help") or "") + ("" if required else f" (default: {default})")).replace("%", "%%")
        kw: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS}
        if not positional:
            kw["dest"] = f.name
        if required and not positional:  # a field without a default is a required flag (a positional always is)
            kw["required"] = True
        if md.get("metavar"):
            kw["metavar"] = md["metavar"]
        if tp is bool and not is_list:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = tp if tp in (int, float, str) else str
            if is_list:
                kw["nargs"] = "+"
            if md.get("choices") is not None:
                kw["choices"] = md["choices"]
        group.add_argument(*names, **kw)
    return group


def dataclass_from_args(cls, args: argparse.Namespace, **overrides):
    """Build `cls` from parsed args (flags not given keep the dataclass defaults)."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.init and hasattr(args, f.name):
            v = getattr(args, f.name)
            hint = typing.get_type_hints(cls)[f.name]
            if typing.get_origin(_strip_optional(hint)) is tuple and isinstance(v, list):
                v = tuple(v)
            values[f.name] = v
    values.update(overrides)
    return cls(**values)


def _strip_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
