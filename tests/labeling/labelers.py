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


class BlockingLabeler:
    """Scores the first `calls` batches, then touches `marker` and blocks: a kill test waits for the marker (an
    observable state: exactly `calls` chunks written, with one worker), never for a time, so it neither kills too
    early on a slow machine nor finds the run finished on a fast one."""

    def __init__(self, inner, calls: int, marker: str):
        self.inner, self.calls, self.marker = inner, calls, marker
        self.name = inner.name
        self._n = 0

    def describe(self) -> dict:
        return self.inner.describe()

    def score_documents(self, docs):
        self._n += 1
        if self._n > self.calls:
            with open(self.marker, "w") as f:
                f.write("blocked\n")
            while True:  # until the test kills the process
                time.sleep(1)
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
