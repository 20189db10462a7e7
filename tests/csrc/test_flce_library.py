"""The fused-linear cross-entropy kernel library (csrc/fused_linear_cross_entropy.cu): it builds as a shared library
with nvcc exactly as megatron_tf/ops/flce_cuda.py builds it on a GPU machine, exports the C ABI the ctypes binding
declares, and its launchers reject bad arguments before touching the device (so they can be called here, without a
GPU)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import pytest

from megatron_tf.ops import flce_cuda

pytestmark = [pytest.mark.nvcc, pytest.mark.skipif(flce_cuda._nvcc() is None, reason="nvcc not found")]


@pytest.fixture(scope="module")
def lib_path(tmp_path_factory):
    return flce_cuda.build_library("90", tmp_path_factory.mktemp("flce") / "libflce.so")


def test_builds_and_exports_the_declared_abi(lib_path):
    assert lib_path.exists() and not list(lib_path.parent.glob("*.tmp"))
    if shutil.which("nm"):
        syms = subprocess.run(["nm", "-D", "--defined-only", str(lib_path)], capture_output=True, text=True).stdout
        exported = {line.split()[-1] for line in syms.splitlines() if " T " in line}
        assert set(flce_cuda._SIGNATURES) | {"flce_abi_version", "flce_last_error", "flce_set_pipeline"} <= exported


def test_launchers_reject_bad_arguments_without_a_device(lib_path):
    try:
        lib = ctypes.CDLL(str(lib_path))
    except OSError as e:  # libcudart.so not on the loader path of this machine
        pytest.skip(f"cannot load the library here: {e}")
    lib.flce_last_error.restype = ctypes.c_char_p
    for name, argtypes in flce_cuda._SIGNATURES.items():
        getattr(lib, name).argtypes = argtypes
    assert lib.flce_abi_version() == flce_cuda.ABI_VERSION
    assert lib.flce_set_pipeline(0) == 1 and lib.flce_set_pipeline(1) == 0  # default: pipelined
    rc = lib.flce_forward_stats(None, 8, None, None, None, 8, 4, 16, 8, 0, 0, None, None)
    assert rc == -1 and b"n_splits" in lib.flce_last_error()
    rc = lib.flce_forward_stats(None, 8, None, None, None, 8, 4, 16, 8, 7, 1, None, None)
    assert rc == -1 and b"dtype must be 0 (bfloat16) or 1 (float16)" in lib.flce_last_error()
    assert lib.flce_target_dot(None, 8, None, None, None, 8, None, None, 4, 16, 8, 2, None, None, None) == -1
    assert lib.flce_dlogits(None, 8, None, None, None, 8, 0, 4, 16, 8, 3, None, None, None, 0.0, 1.0, None, 16,
                            None) == -1
    assert lib.flce_grad_hidden(None, 16, None, None, 8, 4, 16, 8, -1, None, None) == -1
    assert lib.flce_grad_weight(None, 16, None, None, 8, None, 4, 16, 8, 9, None, 8, None) == -1
    # empty problems launch nothing and succeed
    assert lib.flce_target_dot(None, 8, None, None, None, 8, None, None, 0, 16, 8, 0, None, None, None) == 0
