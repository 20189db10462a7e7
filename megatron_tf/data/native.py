"""Small C helpers for the index builders (the loops megatron-core runs in helpers.cpp), compiled on first use.

The source is below (no Python or torch headers: plain C called through ctypes). It is compiled once with the system
C compiler (`$CC`, else `cc`/`gcc`; `-O2 -ffp-contract=off -fno-fast-math`, so no fused multiply-add changes a
float64 rounding of the blending errors) into a shared library cached under $MEGATRON_TF_CACHE or
~/.cache/megatron_tf, named by the source hash and written to a temporary name, then renamed (concurrent ranks each
build and rename; a killed build leaves no library). When that directory is not writable the library is compiled
into a private temporary directory for the process (never a shared one like /tmp/megatron_tf, where another user
could plant a library under the expected name).
Without a compiler, or with MEGATRON_TF_NATIVE=0, `load_library()` returns None and the callers use NumPy or Python
paths with the same results (logged once).

- mtf_greedy_blend / mtf_greedy_exhaustive: the blending index (data/blend_greedy.py).
- mtf_sample_index: the GPT sample index (data/gpt_dataset.py build_sample_index), megatron-core's build_sample_idx
  loop: per sample, walk seq_length + 1 tokens through the documents in document-index order.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..utils.logging import get_logger
from ..utils.native_build import build_once, cached_library_path

log = get_logger(__name__)

C_SOURCE = r"""
#include <float.h>
#include <stdint.h>
#include <string.h>

int mtf_abi(void) { return 3; }

int mtf_sample_index(const int32_t *sizes, const int32_t *doc_index, int64_t n_doc, int64_t seq,
                     int64_t num_samples, int64_t *out) {
    int64_t d = 0, off = 0;
    out[0] = 0;
    out[1] = 0;
    for (int64_t j = 1; j <= num_samples; ++j) {
        int64_t remaining = seq + 1;
        while (remaining != 0) {
            int64_t len = (int64_t)sizes[doc_index[d]] - off;
            remaining -= len;
            if (remaining <= 0) {
                off += remaining + len - 1;
                remaining = 0;
            } else {
                if (d == n_doc - 1) {  /* out of documents: only the last sample may end here */
                    off = (int64_t)sizes[doc_index[d]] - 1;
                    if (j != num_samples) return -1;
                    break;
                }
                ++d;
                off = 0;
            }
        }
        out[2 * j] = d;
        out[2 * j + 1] = off;
    }
    return 0;
}

void mtf_greedy_blend(const double *w, int32_t n, int64_t size, int16_t *didx, int64_t *sidx, int64_t *counts) {
    for (int64_t s = 0; s < size; ++s) {
        double sd = s > 1 ? (double)s : 1.0;
        int32_t best = 0;
        double best_err = w[0] * sd - (double)counts[0];
        for (int32_t i = 1; i < n; ++i) {
            double e = w[i] * sd - (double)counts[i];
            if (e > best_err) { best = i; best_err = e; }
        }
        didx[s] = (int16_t)best;
        sidx[s] = counts[best];
        counts[best] += 1;
    }
}

void mtf_greedy_exhaustive(const double *w, const int64_t *sizes, int32_t n, int64_t total, int16_t *didx,
                           int64_t *sidx, int64_t *counts, int32_t *live, double *lw) {
    /* live[j], lw[j], counts[j]: id, weight and samples taken of the j-th dataset not yet used up, ascending ids */
    int32_t nlive = 0;
    for (int32_t i = 0; i < n; ++i) {
        if (sizes[i] > 0) { live[nlive] = i; lw[nlive] = w[i]; counts[nlive] = 0; ++nlive; }
    }
    for (int64_t s = 0; s < total; ++s) {
        double sd = s > 1 ? (double)s : 1.0;
        int32_t bj = 0;
        double be = -DBL_MAX;
        for (int32_t j = 0; j < nlive; ++j) {
            double e = lw[j] * sd - (double)counts[j];
            if (e > be) { be = e; bj = j; }
        }
        int32_t i = live[bj];
        didx[s] = (int16_t)i;
        sidx[s] = counts[bj];
        counts[bj] += 1;
        if (counts[bj] == sizes[i]) {
            size_t rest = (size_t)(nlive - bj - 1);
            memmove(live + bj, live + bj + 1, rest * sizeof(int32_t));
            memmove(lw + bj, lw + bj + 1, rest * sizeof(double));
            memmove(counts + bj, counts + bj + 1, rest * sizeof(int64_t));
            nlive -= 1;
        }
    }
}
"""

_lib: ctypes.CDLL | None = None
_lib_error: str | None = None
_tried = False


def library_path() -> Path:
    return cached_library_path("libmtf_native", C_SOURCE.encode())


def build_library(out: Path | None = None) -> Path:
    """Compile C_SOURCE into the shared library `out` (default library_path(); temporary name, then rename) unless it
    exists; returns its path."""
    return build_once(out or library_path(), _compile)


def _compile(directory: str, name: str) -> str:
    cc = shlex.split(os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or "")
    if not cc:
        raise RuntimeError("no C compiler ($CC, cc, gcc) to build data/native.py's helpers")
    src, lib = os.path.join(directory, "mtf_native.c"), os.path.join(directory, name)
    with open(src, "w") as f:
        f.write(C_SOURCE)
    cmd = [*cc, "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", src, "-o", lib]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
    return lib


def _load_private() -> ctypes.CDLL:
    """Cache directory not writable: compile into a private (0700) temporary directory, load, remove it. Never a
    shared directory such as /tmp/megatron_tf, where another user could plant a library under the expected name."""
    with tempfile.TemporaryDirectory(prefix="mtf_native_") as tmp:
        return ctypes.CDLL(_compile(tmp, "libmtf_native.so"))


def load_library() -> ctypes.CDLL | None:
    """The compiled helpers (built on first use), or None (reason: library_error())."""
    global _lib, _lib_error, _tried
    if _tried:
        return _lib
    _tried = True
    try:
        if os.environ.get("MEGATRON_TF_NATIVE", "1") == "0":
            raise RuntimeError("MEGATRON_TF_NATIVE=0")
        try:
            path = build_library()
            lib = ctypes.CDLL(str(path))
        except OSError:  # cache directory not writable (read-only home, a file in the way)
            path, lib = "a private temporary directory", _load_private()
        if lib.mtf_abi() != 3:
            raise RuntimeError(f"{path}: unexpected ABI {lib.mtf_abi()}")
        p, i32, i64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
        lib.mtf_greedy_blend.argtypes = [p, i32, i64, p, p, p]
        lib.mtf_greedy_exhaustive.argtypes = [p, p, i32, i64, p, p, p, p, p]
        lib.mtf_greedy_blend.restype = lib.mtf_greedy_exhaustive.restype = None
        lib.mtf_sample_index.argtypes = [p, p, i64, i64, i64, p]
        lib.mtf_sample_index.restype = ctypes.c_int
        _lib = lib
    except Exception as e:  # noqa: BLE001 - the Python loop stays available
        _lib_error = f"{type(e).__name__}: {e}"
        log.warning("native index helpers unavailable (%s): the sample index uses NumPy (~2x slower) and blending "
                    "indices of 3+ datasets a Python loop", _lib_error)
    return _lib


def library_error() -> str | None:
    return _lib_error
