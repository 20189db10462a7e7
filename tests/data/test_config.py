"""FilterConfig range checks (issue 14, item 7)."""

import math

import pytest

from megatron_tf.data.config import FilterConfig


@pytest.mark.parametrize("t", [1.5, 0.0, -0.1, math.nan, math.inf, -math.inf])
def test_document_threshold_out_of_range_is_refused(t):
    # before: 1.5 silently made the filter a no-op and NaN dropped everything
    with pytest.raises(ValueError, match=r"--document-threshold must be a number in \(0, 1\]"):
        FilterConfig(token_filter="document", document_threshold=t)


@pytest.mark.parametrize("t", [1e-6, 0.5, 1.0])
def test_document_threshold_in_range_is_accepted(t):
    assert FilterConfig(token_filter="document", document_threshold=t).document_threshold == t


@pytest.mark.parametrize("flag,value", [("forget_threshold", math.nan), ("label_noise", math.nan),
                                        ("forget_threshold", 1.5)])
def test_other_thresholds_refuse_nan_and_out_of_range(flag, value):
    with pytest.raises(ValueError, match=flag.replace("_", "-")):
        FilterConfig(token_filter="mask", **{flag: value})
