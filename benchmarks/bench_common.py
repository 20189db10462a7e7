"""What every benchmark JSON records, and timing with spread.

machine_info(device) -> {date (UTC), python, torch, cuda (torch's CUDA version), git_commit, git_dirty, device,
driver, sm_count, gpu_memory_GiB, capability, L2_cache_MiB (read from torch.cuda.get_device_properties), clocks,
attention_backends (which torch SDPA kernels are enabled, whether flash-attn imports)}.

git_commit: $MEGATRON_TF_COMMIT when set (the GPU machine gets a copy of the tree without .git, so the launcher
passes the hash: `MEGATRON_TF_COMMIT=$(git rev-parse HEAD)` evaluated where the repository is), else `git rev-parse
HEAD`, else null. git_dirty likewise from $MEGATRON_TF_DIRTY or `git status --porcelain` (null when unknown).

time_spread(fn, device, reps) -> {median_ms, p20_ms, p80_ms, reps}: CUDA events around each call (after a warm-up),
wall clock on CPU. write_json(path, obj): temporary file + rename.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args: str) -> str | None:
    try:
        p = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout if p.returncode == 0 else None


def git_commit() -> tuple[str | None, bool | None]:
    env = os.environ.get("MEGATRON_TF_COMMIT")
    if env:
        dirty = os.environ.get("MEGATRON_TF_DIRTY")
        return env.strip(), None if dirty is None else dirty == "1"
    sha = (_git("rev-parse", "HEAD") or "").strip()
    if len(sha) != 40:  # a copied tree without history
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return sha, None if status is None else bool(status.strip())


def attention_backends() -> dict:
    out = {"sdpa_flash": None, "sdpa_mem_efficient": None, "sdpa_cudnn": None, "sdpa_math": None,
           "flash_attn_package": None}
    b = getattr(torch.backends, "cuda", None)
    for key, fn in (("sdpa_flash", "flash_sdp_enabled"), ("sdpa_mem_efficient", "mem_efficient_sdp_enabled"),
                    ("sdpa_cudnn", "cudnn_sdp_enabled"), ("sdpa_math", "math_sdp_enabled")):
        f = getattr(b, fn, None)
        out[key] = bool(f()) if f else None
    try:
        import flash_attn  # noqa: F401

        out["flash_attn_package"] = getattr(flash_attn, "__version__", "importable")
    except Exception:  # noqa: BLE001 (not installed, or broken: either way not used)
        out["flash_attn_package"] = None
    return out


def machine_info(device: torch.device | str) -> dict:
    device = torch.device(device)
    sha, dirty = git_commit()
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "host_cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "git_commit": sha, "git_dirty": dirty, "device": "cpu", "driver": None,
            "attention_backends": attention_backends()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        l2 = getattr(p, "L2_cache_size", None)
        info.update(device=p.name, sm_count=p.multi_processor_count, gpu_memory_GiB=round(p.total_memory / 2**30, 1),
                    capability=f"{p.major}.{p.minor}", L2_cache_bytes=l2,
                    L2_cache_MiB=None if l2 is None else round(l2 / 2**20, 2),
                    cudnn=torch.backends.cudnn.version())
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem,power.limit",
                                "--format=csv,noheader", f"--id={device.index or 0}"], capture_output=True,
                               text=True, timeout=20).stdout.strip()
            vals = [s.strip() for s in q.split(",")]
            info.update(driver=vals[0], max_sm_clock=vals[1], max_mem_clock=vals[2], power_limit=vals[3])
        except (OSError, IndexError, subprocess.TimeoutExpired):
            pass
    return info


def _pct(sorted_vals: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of sorted values."""
    if len(sorted_vals) == 1:
        return sorted_vals[0]
    x = q * (len(sorted_vals) - 1)
    lo = int(x)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (x - lo)


def spread(values_ms: list[float]) -> dict:
    s = sorted(values_ms)
    return {"median_ms": round(_pct(s, 0.5), 4), "p20_ms": round(_pct(s, 0.2), 4), "p80_ms": round(_pct(s, 0.8), 4),
            "reps": len(s)}


def time_calls(fn, device: torch.device, reps: int = 20, warmup: int = 3) -> list[float]:
    """Milliseconds of each of `reps` calls of fn() after `warmup` untimed ones (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def time_spread(fn, device: torch.device, reps: int = 20, warmup: int = 3) -> dict:
    """Per-call milliseconds of fn(): median, p20, p80 over `reps` calls (CUDA events on a GPU)."""
    return spread(time_calls(fn, device, reps, warmup))


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)
