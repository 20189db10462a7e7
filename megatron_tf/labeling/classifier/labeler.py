"""`ClassifierLabeler`: the biLM classifier as a `TokenLabeler` for the annotation runner
(labeling/annotate_runner.py).

The runner streams the dataset in chunks of whole documents (document order), shards the chunks over worker
processes, keeps finished chunks for resumption and merges them in order; this labeler scores the documents of one
chunk. Within a chunk, documents are taken in groups of about `group_tokens` tokens (features of a group are held
at once); each group's windows are batched (features.py) and the probe gives every token a probability. The
result is a pure function of (artifact, documents of the chunk, batch_tokens, group_tokens, dtype, device type):
those are in `describe()`, so they key the runner's resume manifest.

Special tokens (the artifact's `<|endoftext|>`, and `<|hidden|>` / `<|pad|>` of the tokenizer given to
`check_tokenizer`) always get probability 0: they are never forget, whatever the probe says.

The artifact is opened lazily in each process (it is not pickled to workers). Device: `cuda` puts annotation
worker k on GPU (k - 1) mod the GPU count (the pool's worker numbering), `auto` picks cuda when available.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from ...utils.device import resolve_device
from .artifact import read_config


def _resolve_device(device: str) -> str:
    device = resolve_device(device)
    if device == "cuda":
        import multiprocessing

        import torch

        ident = multiprocessing.current_process()._identity  # (k,) in a pool worker, () in the main process
        k = ident[0] - 1 if ident else 0
        device = f"cuda:{k % max(torch.cuda.device_count(), 1)}"
    return device


def _resolve_dtype(dtype: str, device_type: str) -> str:
    if dtype == "auto":
        return "bfloat16" if device_type == "cuda" else "float32"
    return dtype


class ClassifierLabeler:
    name = "classifier"

    def __init__(self, path: str, *, device: str = "auto", dtype: str = "auto", batch_tokens: int = 16384,
                 group_tokens: int = 65536, threads: int | None = None, calibration: str = "balanced"):
        self.path = os.path.abspath(path)
        self.config = read_config(self.path)
        with open(os.path.join(self.path, "config.json"), "rb") as f:
            self.config_sha256 = hashlib.sha256(f.read()).hexdigest()
        self.device_spec = device
        device_type = "cuda" if resolve_device(device).startswith("cuda") else "cpu"
        self.device_type = device_type
        self.dtype = _resolve_dtype(dtype, device_type)
        if self.dtype == "bfloat16" and device_type == "cpu":
            raise ValueError("--classifier-dtype bfloat16 needs a GPU (bf16 autocast on this CPU is ~40x slower "
                             "than fp32; docs/classifier.md)")
        self.batch_tokens, self.group_tokens = int(batch_tokens), int(group_tokens)
        if self.batch_tokens < int(self.config["window"]):
            raise ValueError(f"batch_tokens {batch_tokens} must be >= the classifier's window "
                             f"{self.config['window']}")
        self.threads = threads
        if calibration not in ("balanced", "natural"):
            raise ValueError(f"calibration must be balanced or natural, got {calibration!r}")
        self.calibration = calibration
        self.logit_shift = 0.0
        if calibration == "natural":
            from .probe import prior_shift

            if not self.config.get("base_rate"):
                raise ValueError(f"{self.path}: no training base rate in config.json; cannot calibrate to it")
            self.logit_shift = prior_shift(float(self.config["base_rate"]))
        self._loaded = None
        self._bilm = None
        self.special_ids = np.array([int(self.config["tokenizer"]["eod"])], dtype=np.int64)

    @classmethod
    def from_options(cls, options, workers: int = 1) -> ClassifierLabeler:
        if not options.classifier:
            raise ValueError("--labeler classifier needs --classifier DIR")
        if not os.path.isdir(options.classifier):
            raise FileNotFoundError(f"--classifier {options.classifier}: not a directory")
        threads = options.classifier_threads or max(1, (os.cpu_count() or 1) // max(workers, 1))
        return cls(options.classifier, device=options.classifier_device, dtype=options.classifier_dtype,
                   batch_tokens=options.classifier_batch_tokens, group_tokens=options.classifier_group_tokens,
                   threads=threads, calibration=options.classifier_calibration)

    def check_tokenizer(self, tokenizer) -> None:
        t = self.config["tokenizer"]
        if t["fingerprint"] != tokenizer.fingerprint:
            raise ValueError(f"{self.path}: the classifier's LMs were trained with tokenizer fingerprint "
                             f"{t['fingerprint']} ({t.get('source')}), the dataset's tokenizer {tokenizer.path} has "
                             f"{tokenizer.fingerprint}")
        if int(t["eod"]) != int(tokenizer.eod):
            raise ValueError(f"{self.path}: eod id {t['eod']} differs from the tokenizer's {tokenizer.eod}")
        self.special_ids = np.array(sorted({int(tokenizer.eod), int(tokenizer.hidden), int(tokenizer.pad)}),
                                    dtype=np.int64)

    # ---- lazy loading ------------------------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        return {**self.__dict__, "_loaded": None, "_bilm": None}

    @property
    def bilm(self):
        if self._bilm is None:
            import torch

            from .artifact import load_classifier
            from .features import BiLM

            if self.threads and self.device_type == "cpu":
                torch.set_num_threads(int(self.threads))
            device = _resolve_device(self.device_spec)
            self._loaded = load_classifier(self.path, device)
            c = self.config
            self._bilm = BiLM(self._loaded.forward_model, self._loaded.reversed_model, int(c["tokenizer"]["eod"]),
                              window=int(c["window"]), context=int(c["context"]), batch_tokens=self.batch_tokens,
                              autocast_dtype=torch.bfloat16 if self.dtype == "bfloat16" else None)
        return self._bilm

    def describe(self) -> dict:
        c = self.config
        return {"labeler": self.name, "artifact": self.path, "config_sha256": self.config_sha256,
                "features": c["features"], "layer": c["layer"], "window": c["window"], "context": c["context"],
                "probe": c["probe"]["kind"], "device_type": self.device_type, "dtype": self.dtype,
                "batch_tokens": self.batch_tokens, "group_tokens": self.group_tokens,
                "calibration": self.calibration, "teacher": self.config.get("teacher")}

    # ---- labeling ----------------------------------------------------------------------------------------------
    def score_documents(self, docs: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        bilm = self.bilm
        probe = self._loaded.probe
        layer = int(self.config["layer"])
        out: list[np.ndarray] = []
        i = 0
        while i < len(docs):
            j, n = i, 0
            while j < len(docs) and (j == i or n + len(docs[j]) <= self.group_tokens):
                n += len(docs[j])
                j += 1
            group = docs[i:j]
            if n:
                with torch.inference_mode():
                    p = probe.probabilities(bilm.features(group, layer), self.logit_shift)
                p = p.float().cpu().numpy()
            else:
                p = np.zeros(0, np.float32)
            offs = np.cumsum([0] + [len(d) for d in group])
            for k, d in enumerate(group):
                pk = np.clip(p[offs[k] : offs[k + 1]], 0.0, 1.0).astype(np.float32)
                pk[np.isin(d, self.special_ids)] = 0.0  # special tokens are never forget
                out.append(pk)
            i = j
        return out

    # ---- cost accounting -----------------------------------------------------------------------------------------
    def cost(self, doc_lengths: np.ndarray) -> dict:
        from ...model.config import ModelConfig
        from .cost import annotation_flops

        c = self.config
        cfgs = [ModelConfig.from_dict(c[k]["model_config"]) for k in ("forward_lm", "reversed_lm") if c[k]]
        return annotation_flops(doc_lengths, cfgs, int(c["layer"]), int(c["window"]), int(c["context"]), c["probe"])
