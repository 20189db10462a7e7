"""The compiled index helpers: build into the cache under the source hash, and a failing compiler leaves the
NumPy / Python paths (with the reason recorded)."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_tf.data import native
from megatron_tf.data.blending import build_blending_indices


def test_build_and_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGATRON_TF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    assert native.load_library() is None
    assert "false" in native.library_error() and "failed" in native.library_error()
    assert not list((tmp_path / "cache").glob("*"))  # nothing half-written left behind
    # the Python loop: hand-checked greedy for weights (0.5, 0.3, 0.2), positions 0..9
    # s=0 (errors w): 0; s=1: 1; s=2: 2; s=3: 0; s=4: 1; s=5: 0; s=6: 2; s=7: 0; s=8: 1; s=9: 0
    d, s = build_blending_indices([0.5, 0.3, 0.2], 10)
    assert d.tolist() == [0, 1, 2, 0, 1, 0, 2, 0, 1, 0]
    assert s.tolist() == [0, 0, 0, 1, 1, 2, 1, 3, 2, 4]
    monkeypatch.delenv("CC")
    monkeypatch.setattr(native, "_tried", False)
    if native.load_library() is None:
        pytest.skip(f"no C compiler: {native.library_error()}")
    assert native.library_path().parent == tmp_path / "cache" and native.library_path().exists()
    d2, s2 = build_blending_indices([0.5, 0.3, 0.2], 10)
    np.testing.assert_array_equal(d2, d)
    np.testing.assert_array_equal(s2, s)


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("MEGATRON_TF_NATIVE", "0")
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)
    assert native.load_library() is None and "MEGATRON_TF_NATIVE=0" in native.library_error()


def test_unwritable_cache_builds_privately(tmp_path, monkeypatch):
    """A cache path that cannot be created (a file in the way) compiles into a private temporary directory."""
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("MEGATRON_TF_CACHE", str(tmp_path / "file" / "cache"))
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)
    if native.shutil.which("cc") is None and native.shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    assert native.load_library() is not None, native.library_error()
    d, s = build_blending_indices([0.5, 0.3, 0.2], 10)
    assert d.tolist() == [0, 1, 2, 0, 1, 0, 2, 0, 1, 0] and s.tolist() == [0, 0, 0, 1, 1, 2, 1, 3, 2, 4]
