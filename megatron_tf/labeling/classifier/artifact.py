"""The classifier artifact: one directory holding the two LMs, the probe and a JSON config. Nothing is pickled.

    DIR/config.json              format, feature spec (layer, window, context), model configs, probe config,
                                 tokenizer identity, operating threshold, training report, the teacher labels
                                 ("teacher": annotation name, threshold, the labeler's describe(); null when
                                 unknown), sha256 of every file
    DIR/forward_lm.safetensors   the forward LM's full state dict (TP/PP shards merged), fp32
    DIR/reversed_lm.safetensors  the reversed LM's (absent for a forward-only classifier)
    DIR/probe.safetensors        mean, std and head weights of the probe (probe.py)
    DIR/tokenizer.model          a copy of the tokenizer file when it is a single file (SentencePiece)

The directory is written under a temporary name and renamed when complete. `load_classifier` checks the format,
the sha256 of every file (verify=True) and that the weights fit the configs exactly (strict load).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file

from ...model.config import ModelConfig
from ...model.gpt import GPTModel
from ...utils.io import atomic_directory, read_json, sha256_file
from .probe import Probe

FORMAT = "megatron_tf-token-classifier"
VERSION = 1
FEATURES = ("bidirectional", "forward")


class ArtifactError(ValueError):
    pass


@dataclass
class LMSpec:
    """An LM of the artifact: its (single-process) ModelConfig and full state dict."""

    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    source: str | None = None  # where it came from (a checkpoint directory), for the record


def lm_from_checkpoint(path: str) -> tuple[LMSpec, dict]:
    """(LMSpec, the run's config.json) of a trainer checkpoint (--save directory or iter_* directory)."""
    from ...checkpoint import merged_state_dict, resolve_checkpoint_dir

    d = resolve_checkpoint_dir(path, None)
    if d is None:
        raise ArtifactError(f"{path}: no checkpoint (no `latest` file and not an iter_* directory)")
    sd, cfg, run_config = merged_state_dict(d)
    return LMSpec(cfg, sd, os.path.abspath(d)), run_config


def lm_from_model(model: GPTModel, source: str | None = None) -> LMSpec:
    return LMSpec(model.config, {k: v.detach().float().cpu() for k, v in model.state_dict().items()}, source)


def build_lm(spec_config: dict, state_dict: dict[str, torch.Tensor], device="cpu", where: str = "") -> GPTModel:
    cfg = ModelConfig.from_dict(spec_config)
    model = GPTModel(cfg, None, device=torch.device("meta")).to_empty(device=device)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ArtifactError(f"{where}: weights do not fit the model config (missing {missing[:4]}, unexpected "
                            f"{unexpected[:4]})")
    return model.float().eval()


def _tensors(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float32).cpu().contiguous().clone() for k, v in sd.items()}


def save_classifier(out_dir: str, *, forward_lm: LMSpec, reversed_lm: LMSpec | None, probe: Probe, layer: int,
                    window: int, context: int, tokenizer, threshold: float | None = None,
                    base_rate: float | None = None, report: dict | None = None, overwrite: bool = False,
                    teacher: dict | None = None) -> str:
    """Write the artifact directory atomically; returns its path. `teacher`: the labels the probe was trained on
    (train.teacher_labels; config.json "teacher", null when unknown)."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise ArtifactError(f"{out_dir} exists (pass overwrite=True / --overwrite to replace it)")
    if reversed_lm is not None and reversed_lm.config.hidden_size != forward_lm.config.hidden_size:
        raise ArtifactError("forward and reversed LMs must have the same hidden size")
    feature_dim = forward_lm.config.hidden_size * (2 if reversed_lm is not None else 1)
    if probe.dim != feature_dim:
        raise ArtifactError(f"probe expects {probe.dim} features, the LMs give {feature_dim}")
    with atomic_directory(out_dir) as tmp:
        files = {}

        def put_lm(name: str, spec: LMSpec) -> dict:
            fn = f"{name}.safetensors"
            save_file(_tensors(spec.state_dict), os.path.join(tmp, fn), {"format": FORMAT})
            files[fn] = sha256_file(os.path.join(tmp, fn))
            return {"file": fn, "model_config": dataclasses.asdict(spec.config), "source": spec.source}

        cfg = {"format": FORMAT, "version": VERSION,
               "features": "bidirectional" if reversed_lm is not None else "forward",
               "layer": int(layer), "window": int(window), "context": int(context),
               "forward_lm": put_lm("forward_lm", forward_lm),
               "reversed_lm": put_lm("reversed_lm", reversed_lm) if reversed_lm is not None else None}
        save_file(_tensors(probe.state_dict()), os.path.join(tmp, "probe.safetensors"), {"format": FORMAT})
        files["probe.safetensors"] = sha256_file(os.path.join(tmp, "probe.safetensors"))
        cfg["probe"] = {"file": "probe.safetensors", **probe.config()}
        tok_file = None
        path = getattr(tokenizer, "path", None)
        if path and os.path.isfile(path):
            tok_file = "tokenizer" + os.path.splitext(path)[1]
            shutil.copyfile(path, os.path.join(tmp, tok_file))
            files[tok_file] = sha256_file(os.path.join(tmp, tok_file))
        cfg["tokenizer"] = {"type": tokenizer.type_name, "fingerprint": tokenizer.fingerprint,
                            "vocab_size": tokenizer.vocab_size, "eod": int(tokenizer.eod), "file": tok_file,
                            "source": path}
        cfg["threshold"] = threshold
        cfg["base_rate"] = base_rate
        cfg["report"] = report or {}
        cfg["teacher"] = teacher
        cfg["files"] = files
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=1, sort_keys=True)
    return out_dir


def read_config(path: str) -> dict:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise ArtifactError(f"{path}: not a classifier artifact (no config.json)")
    cfg = read_json(cfg_path, ArtifactError)
    if cfg.get("format") != FORMAT:
        raise ArtifactError(f"{cfg_path}: format {cfg.get('format')!r}, expected {FORMAT!r}")
    if cfg.get("version") != VERSION:
        raise ArtifactError(f"{cfg_path}: version {cfg.get('version')!r}, expected {VERSION}")
    if cfg.get("features") not in FEATURES:
        raise ArtifactError(f"{cfg_path}: features {cfg.get('features')!r}, expected one of {FEATURES}")
    return cfg


@dataclass
class LoadedClassifier:
    path: str
    config: dict
    forward_model: GPTModel
    reversed_model: GPTModel | None
    probe: Probe

    @property
    def layer(self) -> int:
        return int(self.config["layer"])


def load_classifier(path: str, device="cpu", verify: bool = True) -> LoadedClassifier:
    """Open an artifact directory: models in eval mode (fp32) and the probe, on `device`."""
    cfg = read_config(path)
    if verify:
        for fn, digest in cfg["files"].items():
            fp = os.path.join(path, fn)
            if not os.path.isfile(fp):
                raise ArtifactError(f"{path}: missing {fn}")
            got = sha256_file(fp)
            if got != digest:
                raise ArtifactError(f"{fp}: sha256 {got}, config.json expects {digest} (file changed or damaged)")

    def lm(key):
        spec = cfg[key]
        if spec is None:
            return None
        fp = os.path.join(path, spec["file"])
        return build_lm(spec["model_config"], load_file(fp), device, fp)

    fwd, rev = lm("forward_lm"), lm("reversed_lm")
    if (rev is None) != (cfg["features"] == "forward"):
        raise ArtifactError(f"{path}: features {cfg['features']!r} but reversed_lm is "
                            f"{'absent' if rev is None else 'present'}")
    pc = cfg["probe"]
    probe = Probe(pc["dim"], pc["kind"], pc.get("hidden") or 256)
    fp = os.path.join(path, pc["file"])
    missing, unexpected = probe.load_state_dict(load_file(fp), strict=False)
    if missing or unexpected:
        raise ArtifactError(f"{fp}: probe weights do not fit its config (missing {missing}, unexpected {unexpected})")
    return LoadedClassifier(os.path.abspath(path), cfg, fwd, rev, probe.to(device).eval())
