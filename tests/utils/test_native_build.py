"""utils/native_build.py: cache path by source digest; build_once renames only a complete build and reuses it."""

import pytest

from megatron_tf.utils import native_build as nb


def test_cached_path_names_the_source(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGATRON_TF_CACHE", str(tmp_path))
    a, b = nb.cached_library_path("libx", b"int f;"), nb.cached_library_path("libx", b"int g;", "_sm90")
    assert a.parent == tmp_path and a.name.startswith("libx_") and a.name.endswith(".so") and len(a.stem) == 4 + 1 + 16
    assert b.name.endswith("_sm90.so") and a.name[:21] != b.name[:21]


def test_build_once(tmp_path):
    out = tmp_path / "d" / "lib.so"
    calls = []

    def ok(directory, name):
        calls.append(directory)
        p = f"{directory}/{name}"
        open(p, "wb").write(b"ELF")
        return p

    def fail(directory, name):
        open(f"{directory}/{name}", "wb").write(b"half")
        raise RuntimeError("compiler failed")

    with pytest.raises(RuntimeError, match="compiler failed"):
        nb.build_once(out, fail)
    assert list((tmp_path / "d").iterdir()) == []  # nothing half-written left
    assert nb.build_once(out, ok) == out and out.read_bytes() == b"ELF"
    assert nb.build_once(out, fail) == out and len(calls) == 1  # reused, not rebuilt
