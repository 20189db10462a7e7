"""The worker pool's start method (data/preprocess_run.py): fork only when this process runs one thread on Linux."""

import sys
import threading

from megatron_tf.data.preprocess_run import start_method


def test_spawn_while_another_thread_runs():
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert start_method() == "spawn"
    finally:
        stop.set()
        t.join()
    if threading.active_count() == 1:
        assert start_method() == ("fork" if sys.platform == "linux" else "spawn")


def test_one_process_run_restores_the_gc_thresholds(tmp_path):
    import gc

    from tests.data.test_preprocess import corpus, run, write_jsonl

    before = gc.get_threshold()
    run(tmp_path, [write_jsonl(tmp_path / "c.jsonl", corpus(20))], workers=1)
    assert gc.get_threshold() == before
