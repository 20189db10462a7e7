"""Sparse autoencoders through sae-lens (an optional dependency: `pip install -e ".[sae]"`), offline only.

`load_sae(spec)` accepts
- a directory saved by sae-lens (`save_inference_model` / `save_model`: cfg.json + sae_weights.safetensors):
  `SAE.load_from_disk`;
- "RELEASE:SAE_ID", e.g. "gemma-scope-9b-pt-res-canonical:layer_31/width_16k/canonical": `SAE.from_pretrained`
  from the local Hugging Face cache. HF_HUB_OFFLINE=1 is set before sae-lens is imported, so nothing is downloaded;
  a missing cache entry is an error that says how to fetch it on a machine with network access.

The result is wrapped in `SaeEncoder`: `encode(x [T, d_in]) -> [T, d_sae]`, `d_in`, `d_sae`, `hook_layer` (parsed
from the SAE's metadata hook name `blocks.L.hook_resid_post` when present), `describe()`.
"""

from __future__ import annotations

import hashlib
import os
import re

import torch

from ...utils.logging import get_logger

log = get_logger(__name__)

_INSTALL = 'sae-lens is not installed: pip install -e ".[sae]" (or: pip install sae-lens "torch==<your torch>")'


def import_sae_lens():
    """Import sae-lens offline (HF_HUB_OFFLINE=1, WANDB_MODE=disabled unless already set); clear error if absent."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    try:
        import sae_lens
    except ImportError as e:
        raise ImportError(f"{_INSTALL} ({e})") from e
    return sae_lens


def parse_hook_layer(hook_name: str | None) -> int | None:
    """`blocks.31.hook_resid_post` -> 31; None for other hooks or no name."""
    if not hook_name:
        return None
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", hook_name)
    return int(m.group(1)) if m else None


class SaeEncoder:
    """The encoder half of an SAE, with what the pipeline needs to know about it."""

    def __init__(self, sae, source: dict, device: str = "cpu"):
        self.sae = sae.to(device).eval()
        self.device = device
        self.d_in = int(sae.cfg.d_in)
        self.d_sae = int(sae.cfg.d_sae)
        meta = getattr(sae.cfg, "metadata", None)
        self.hook_name = getattr(meta, "hook_name", None) if meta is not None else None
        self.hook_layer = parse_hook_layer(self.hook_name)
        self.context_size = getattr(meta, "context_size", None) if meta is not None else None
        self.architecture = sae.cfg.architecture()
        self.dtype = next(sae.parameters()).dtype
        self.source = source

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.sae.encode(x.to(self.device, self.dtype))

    def describe(self) -> dict:
        return {**self.source, "architecture": self.architecture, "d_in": self.d_in, "d_sae": self.d_sae,
                "hook_name": self.hook_name}

    def __getstate__(self) -> dict:  # workers reload from the source instead of pickling weights
        return {"source": self.source, "device": self.device}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(load_sae(state["source"]["spec"], device=state["device"]).__dict__)


def _weights_sha256(path: str) -> str | None:
    f = os.path.join(path, "sae_weights.safetensors")
    if not os.path.isfile(f):
        return None
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def load_sae(spec: str, device: str = "cpu") -> SaeEncoder:
    """A directory (SAE.load_from_disk) or RELEASE:SAE_ID from the local cache (SAE.from_pretrained)."""
    sl = import_sae_lens()
    if os.path.isdir(spec):
        if not os.path.isfile(os.path.join(spec, "cfg.json")):
            raise FileNotFoundError(f"SAE directory {spec} has no cfg.json (expected a directory written by sae-lens "
                                    "save_inference_model / save_model, or by tools/train_sae.py)")
        sae = sl.SAE.load_from_disk(spec, device=device)
        return SaeEncoder(sae, {"spec": spec, "path": os.path.abspath(spec), "sha256": _weights_sha256(spec)},
                          device)
    if ":" not in spec:
        raise FileNotFoundError(f"--sae {spec}: not a directory, and not RELEASE:SAE_ID (e.g. "
                                "gemma-scope-9b-pt-res-canonical:layer_31/width_16k/canonical)")
    release, sae_id = spec.split(":", 1)
    try:
        sae = sl.SAE.from_pretrained(release, sae_id, device=device)
    except Exception as e:  # noqa: BLE001 - huggingface_hub raises several unrelated types when offline
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise FileNotFoundError(
                f"SAE {release}:{sae_id} is not in the local Hugging Face cache and downloads are off "
                f"(HF_HUB_OFFLINE=1): fetch it once on a machine with network access, e.g. python -c \"from sae_lens "
                f"import SAE; SAE.from_pretrained('{release}', '{sae_id}')\", and copy ~/.cache/huggingface "
                f"(or set HF_HOME). Underlying error: {type(e).__name__}: {e}") from e
        raise
    return SaeEncoder(sae, {"spec": spec, "release": release, "sae_id": sae_id}, device)
