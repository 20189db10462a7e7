"""The domain-latent list: which SAE latents mean "the domain", with their thresholds.

File format (JSON, UTF-8), written by `sae_label.py select` / `thresholds` and accepted from users (e.g. built from a
Neuronpedia export); either an object with a "latents" array, or just the array:

    {"format": "megatron_tf.sae_latents/1",
     "sae": "gemma-scope-9b-pt-res-canonical:layer_31/width_16k/canonical",    (optional, informational)
     "threshold_rule": {"k": 4.0, "num_tokens": 1048576, "source": "..."},     (optional, how thresholds were made)
     "latents": [{"id": 1234, "description": "medical conditions and symptoms", "threshold": 7.5, "score": 0.95},
                 ...]}

Per latent: "id" (int, the SAE latent index; "index" is accepted too), "description" (str, optional), "threshold"
(float, optional: missing thresholds are computed as mean + k std over a reference sample by `sae_label.py
thresholds`), "score" (float, optional: recall/AUROC or whatever ranked it). Other keys are kept as they are.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from ...utils.io import read_json

FORMAT = "megatron_tf.sae_latents/1"


@dataclass
class Latent:
    id: int
    description: str = ""
    threshold: float | None = None
    score: float | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {"id": self.id, "description": self.description}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        if self.score is not None:
            out["score"] = self.score
        return {**out, **self.extra}


@dataclass
class LatentList:
    latents: list[Latent]
    header: dict = field(default_factory=dict)
    path: str | None = None

    @property
    def ids(self) -> np.ndarray:
        return np.asarray([x.id for x in self.latents], dtype=np.int64)

    def thresholds(self) -> np.ndarray:
        missing = [x.id for x in self.latents if x.threshold is None]
        if missing:
            raise ValueError(f"{self.path or 'latent list'}: latents {missing[:10]} have no threshold; compute them "
                             "with tools/sae_label.py thresholds (mean + k std over a reference sample)")
        return np.asarray([x.threshold for x in self.latents], dtype=np.float64)

    def check_range(self, d_sae: int) -> None:
        bad = [x.id for x in self.latents if not 0 <= x.id < d_sae]
        if bad:
            raise ValueError(f"{self.path or 'latent list'}: latent ids {bad[:10]} are outside the SAE's "
                             f"{d_sae} latents [0, {d_sae})")

    def to_json(self) -> dict:
        return {"format": FORMAT, **{k: v for k, v in self.header.items() if k not in ("format", "latents")},
                "latents": [x.to_json() for x in self.latents]}

    def sha256(self) -> str:
        """Hash of what the labels depend on: ids and thresholds, in order."""
        text = json.dumps([[x.id, x.threshold] for x in self.latents])
        return hashlib.sha256(text.encode()).hexdigest()


def parse_latents(obj, where: str = "latent list") -> LatentList:
    header: dict = {}
    if isinstance(obj, dict):
        if "latents" not in obj:
            raise ValueError(f"{where}: expected a JSON array of latents or an object with a 'latents' array, found "
                             f"an object with keys {sorted(obj)[:10]}")
        header = {k: v for k, v in obj.items() if k != "latents"}
        fmt = header.get("format")
        if fmt is not None and fmt != FORMAT:
            raise ValueError(f"{where}: unsupported format {fmt!r}, expected {FORMAT!r}")
        obj = obj["latents"]
    if not isinstance(obj, list) or not obj:
        raise ValueError(f"{where}: expected a non-empty list of latents, found {type(obj).__name__}")
    out, seen = [], set()
    for k, e in enumerate(obj):
        if isinstance(e, int) and not isinstance(e, bool):
            e = {"id": e}
        if not isinstance(e, dict):
            raise ValueError(f"{where}: latent #{k} must be an object or an int, found {type(e).__name__}")
        e = dict(e)
        raw = e.pop("id", e.pop("index", None))
        try:
            lid = int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: latent #{k} has no integer 'id' (found {raw!r})") from None
        if lid in seen:
            raise ValueError(f"{where}: latent {lid} is listed twice")
        seen.add(lid)
        desc = e.pop("description", "") or ""
        thr = e.pop("threshold", None)
        score = e.pop("score", None)
        for name, v in (("threshold", thr), ("score", score)):
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)):
                raise ValueError(f"{where}: latent {lid} has {name} {v!r}, expected a finite number")
        out.append(Latent(lid, str(desc), None if thr is None else float(thr), None if score is None else float(score),
                          e))
    return LatentList(out, header, None)


def read_latents(path: str) -> LatentList:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"latent list not found: {path}")
    obj = read_json(path, ValueError)
    ll = parse_latents(obj, path)
    ll.path = path
    return ll


def write_latents(path: str, ll: LatentList) -> None:
    from ...utils.io import atomic_write

    with atomic_write(path, "w") as f:
        json.dump(ll.to_json(), f, indent=1)
        f.write("\n")
