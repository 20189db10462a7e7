"""Loader of the lm-eval test task: the JSON lines file beside this module as the "test" split (no network)."""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def load(**kwargs):
    import datasets

    with open(os.path.join(HERE, "mtf_test_cloze.jsonl"), encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return {"test": datasets.Dataset.from_list(rows)}
