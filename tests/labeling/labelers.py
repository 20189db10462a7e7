"""Test labelers (module level so that spawned annotation workers can unpickle them)."""

from __future__ import annotations

import time

import numpy as np


class HashLabeler:
    """Deterministic pseudo-random scores in [0, 1] from (token id, position): exercises every quantization level."""

    name = "hash"

    def __init__(self, salt: int = 0):
        self.salt = salt

    def describe(self) -> dict:
        return {"labeler": "hash", "salt": self.salt}

    def score_documents(self, docs):
        out = []
        for d in docs:
            x = (np.asarray(d, np.int64) * 2654435761 + np.arange(len(d)) * 40503 + self.salt) % 1021
            out.append((x / 1020.0).astype(np.float32))
        return out


class SlowLabeler:
    """Wraps a labeler and sleeps per call, so that a test can kill an annotation run in the middle."""

    def __init__(self, inner, seconds: float):
        self.inner, self.seconds = inner, seconds
        self.name = inner.name

    def describe(self) -> dict:
        return self.inner.describe()

    def score_documents(self, docs):
        time.sleep(self.seconds)
        return self.inner.score_documents(docs)


class BadLabeler:
    name = "bad"

    def __init__(self, mode: str):
        self.mode = mode

    def describe(self) -> dict:
        return {"labeler": "bad", "mode": self.mode}

    def score_documents(self, docs):
        if self.mode == "shape":
            return [np.zeros(len(d) + 1, np.float32) for d in docs]
        if self.mode == "count":
            return [np.zeros(len(d), np.float32) for d in docs[1:]]
        return [np.full(len(d), 1.5, np.float32) for d in docs]
