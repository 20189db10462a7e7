"""Host tests of csrc/cross_entropy_math.h: g++ compiles tests/csrc/cross_entropy_math_test.cpp, which runs the kernels'
per-row math and per-thread loops (a CUDA block emulated on the CPU) and prints results; we compare them with float64
references."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    exe = tmp_path_factory.mktemp("cross_entropy_math") / "cross_entropy_math_test"
    subprocess.run(["g++", "-O2", "-std=c++17", "-Wall", "-Werror", f"-I{ROOT / 'csrc'}",
                    str(ROOT / "tests" / "csrc" / "cross_entropy_math_test.cpp"), "-o", str(exe)], check=True)

    def run(lines: list[str]) -> list[str]:
        out = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True)
        return out.stdout.splitlines()

    return run


def _block_cases(rng):
    """(kV, n, misalignment in bytes, threads, target, eps, coef, values) covering head/body/tail and unroll tails."""
    cases = []
    for kv, mis_list in ((8, (0, 2, 6, 14)), (4, (0, 4, 12))):
        for n in (1, 3, 7, 8, 9, 64, 1000, 1001, 4097):
            for mis in mis_list:
                nt = 32 if n < 500 else 128
                x = (rng.standard_normal(n) * 3).astype(np.float32)
                targets = {0, n - 1, n // 2, -1, n}  # -1 and n: target in another shard
                for t in sorted(targets):
                    eps = 0.1 if (t % 2 == 0) else 0.0
                    cases.append((kv, n, mis, nt, t, eps, float(rng.uniform(0.2, 2.0)), x))
    # numerically hard rows: large offset, -inf entries, all equal, one dominant logit
    big = (rng.standard_normal(300) * 2 + 80).astype(np.float32)
    neg = (rng.standard_normal(300)).astype(np.float32)
    neg[::7] = -np.inf
    eq = np.full(257, 1.5, dtype=np.float32)
    dom = (rng.standard_normal(300) * 0.1).astype(np.float32)
    dom[123] = 40.0
    for x, t in ((big, 5), (neg, 1), (eq, 256), (dom, 123)):
        cases.append((8, len(x), 6, 64, t, 0.0, 1.0, x))
    return cases


def test_block_emulation_matches_float64(driver):
    rng = np.random.default_rng(1234)
    cases = _block_cases(rng)
    lines = []
    for kv, n, mis, nt, t, eps, coef, x in cases:
        lines.append(f"block {kv} {n} {mis} {nt} {t} {eps!r} {coef!r}")
        lines.append(" ".join(repr(float(v)) for v in x))
    out = iter(driver(lines))
    for kv, n, mis, nt, t, eps, coef, x in cases:
        what = f"kV={kv} n={n} misalign={mis} threads={nt} target={t} eps={eps}"
        lse = float(next(out).split()[1])
        sum_x = float(next(out).split()[1])
        writes = next(out).split()[1:]
        grad = np.array([float(v) for v in next(out).split()[1:]])
        zero_writes = next(out).split()[1:]
        x64 = x.astype(np.float64)
        ref_lse = float(torch.logsumexp(torch.from_numpy(x64), 0))
        assert abs(lse - ref_lse) <= 2e-6 * max(1.0, abs(ref_lse)), what
        finite = np.isfinite(x64)
        ref_sum = x64[finite].sum() if finite.all() else -np.inf
        assert sum_x == pytest.approx(ref_sum, rel=1e-5, abs=1e-3), what
        assert writes == ["1", "1"], f"{what}: every gradient element written exactly once, got min/max {writes}"
        assert zero_writes == ["1", "1"], f"{what}: masked-row zeros written exactly once, got {zero_writes}"
        p = np.exp(x64 - ref_lse)
        onehot = np.zeros(n)
        if 0 <= t < n:
            onehot[t] = 1.0
        ref_grad = (p - (1 - eps) * onehot - eps / n) * coef
        assert np.abs(grad - ref_grad).max() <= 2e-6 * max(1.0, coef), what


def test_split_row_partitions_and_aligns(driver):
    cases = [(addr, n, eb) for eb in (2, 4) for addr in range(0, 48, eb) for n in (0, 1, 2, 5, 8, 17, 100)]
    out = driver([f"split {a} {n} {eb}" for a, n, eb in cases])
    for (addr, n, eb), line in zip(cases, out):
        head, nvec, tail0 = map(int, line.split()[1:])
        per = 16 // eb
        assert 0 <= head <= n and tail0 == head + nvec * per and 0 <= n - tail0 < per
        if nvec:
            assert (addr + head * eb) % 16 == 0, (addr, n, eb)
        # the head is as short as possible: it stops at the first 16-byte boundary (or the row end)
        assert head == min(n, ((16 - addr % 16) % 16) // eb), (addr, n, eb)


def test_combine_and_loss(driver):
    rng = np.random.default_rng(7)
    shards = [rng.standard_normal(k).astype(np.float32) * 5 for k in (1, 2, 4, 8)]
    losses = [(3.25, 1.5, -12.0, 0.0, 1 / 1000), (10.5, -2.0, 400.0, 0.1, 1 / 50304), (0.0, 0.0, 0.0, 0.3, 1.0)]
    lines = [f"combine {len(s)} " + " ".join(repr(float(v)) for v in s) for s in shards]
    lines += [f"loss {a!r} {b!r} {c!r} {d!r} {e!r}" for a, b, c, d, e in losses]
    out = driver(lines)
    for s, line in zip(shards, out[: len(shards)]):
        ref = float(torch.logsumexp(torch.from_numpy(s.astype(np.float64)), 0))
        assert float(line.split()[1]) == pytest.approx(ref, rel=1e-6, abs=1e-6)
    for (lse, xt, sx, eps, inv), line in zip(losses, out[len(shards):]):
        ref = (1 - eps) * (lse - xt) + eps * (lse - sx * np.float64(np.float32(inv)))
        assert float(line.split()[1]) == pytest.approx(ref, rel=1e-6, abs=1e-6)


def test_bf16_rounding_matches_torch(driver):
    specials = [0.0, -0.0, 1.0, -1.5, 3.0e38, -3.0e38, 1e-40, -1e-42, float("inf"), float("-inf"), float("nan"),
                1.00390625, 1.01171875, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 65504.0]
    rng = np.random.default_rng(3)
    vals = np.concatenate([np.array(specials, dtype=np.float32), rng.standard_normal(2000).astype(np.float32),
                           rng.uniform(-1e30, 1e30, 500).astype(np.float32),
                           # exact halfway points between neighbouring bf16 values (ties to even)
                           (np.arange(1, 300, dtype=np.uint32) * (1 << 16) + 0x3F800000 + 0x8000).view(np.float32)])
    bits = [struct.unpack("<I", struct.pack("<f", float(v)))[0] for v in vals]
    out = driver([f"bf16 {b}" for b in bits])
    got = np.array([int(line.split()[1]) for line in out], dtype=np.int64)
    ref = torch.from_numpy(vals.copy()).to(torch.bfloat16).view(torch.int16).numpy().astype(np.int64) & 0xFFFF
    nan = np.isnan(vals)
    assert (got[~nan] == ref[~nan]).all()
    # NaN stays NaN (exponent all ones, non-zero mantissa)
    assert all((g & 0x7F80) == 0x7F80 and (g & 0x7F) != 0 for g in got[nan])
