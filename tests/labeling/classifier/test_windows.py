"""Windows with overlap (labeling/classifier/windows.py): every position scored exactly once, with the required
context."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_tf.labeling.classifier.windows import num_windows, plan_windows, window_cost


@pytest.mark.parametrize("window,context", [(8, 3), (8, 0), (8, 7), (2, 1), (16, 4), (5, 2)])
def test_every_position_scored_once_with_context(window, context):
    for m in range(0, 60):
        wins = plan_windows(m, window, context)
        count = np.zeros(m, np.int64)
        for w in wins:
            assert 0 <= w.start <= w.score_start < w.score_end <= w.end <= m
            assert w.end - w.start <= window
            count[w.score_start : w.score_end] += 1
            for p in range(w.score_start, w.score_end):
                # all of the left context inside the window, or at least `context` positions of it
                assert p - w.start >= min(p, context), (m, w, p)
                if p < window:
                    assert w.start == 0
        if m >= 1:
            assert count[0] == 0  # the separator is never scored
            assert (count[1:] == 1).all(), (m, count)
        assert len(wins) == num_windows(np.array([m]), window, context)[0]
        read = sum(w.end - w.start for w in wins)
        sq = sum((w.end - w.start) ** 2 for w in wins)
        assert window_cost(np.array([m]), window, context) == (read, sq)


def test_worked_example_of_the_docstring():
    wins = plan_windows(12, 8, 3)
    assert [(w.start, w.end, w.score_start, w.score_end) for w in wins] == [(0, 8, 1, 8), (5, 12, 8, 12)]


def test_bad_window_arguments():
    with pytest.raises(ValueError, match="context"):
        plan_windows(10, 8, 8)
    with pytest.raises(ValueError, match="window"):
        plan_windows(10, 1, 0)
