"""Benchmark the masked cross-entropy: forward + backward time and peak memory, fused kernels against baselines.

    python benchmarks/bench_cross_entropy.py --out benchmarks/results/cross_entropy_<device>.json   # on a GPU
    python benchmarks/bench_cross_entropy.py --dry-run                                 # CPU smoke run, tiny sizes

Methods (bf16 logits [N, V], 30% masked rows where named, per-token upstream gradient = 1/count):
  f_ce_fp32      F.cross_entropy(logits.float(), reduction='none') * mask, autograd backward   (baseline a)
  ours_torch     vocab_parallel_cross_entropy(impl="torch"), the PyTorch reference              (baseline b)
  liger          Liger-Kernel LigerCrossEntropyFunction, reduction='mean', ignore_index=-100 on masked rows
                 (writes its gradient into the logits during the forward; calls .item() once)  (baseline c)
  fused_2k       vocab_parallel_cross_entropy(impl="fused"): forward kernel + backward kernel (autograd)
  fused_2k_inpl  same, inplace_backward=True (gradient written into the logits buffer)
  fused_1k       cross_entropy_loss_and_grad(impl="fused"), TP = 1: one kernel (forward and gradient)
  fused_1k_inpl  same, gradient written in place
  fused_fwd / fused_bwd   the two kernels alone (for their own floors: 2 and 4 bytes per bf16 logit)
Methods that write into the logits leave gradients there; later iterations run on those values (timings of
memory-bound kernels do not depend on the values; noted in the JSON).

Floor: the two-pass algorithm must read the logits in the forward and read + write them in the backward, 6 bytes per
bf16 logit; floor time = 6 N V / B with B the device-to-device copy bandwidth measured here (bytes read + written per
second of a large torch copy). Timing: triton.testing.do_bench (it flushes L2 between runs), else CUDA events; every row
records the median and the p20/p80 spread of the timed calls. The machine block (benchmarks/bench_common.py) records
device, driver, torch/CUDA versions, commit, date, L2 size (torch.cuda.get_device_properties().L2_cache_size).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_common import machine_info, spread, time_calls, write_json  # noqa: E402
from megatron_tf.ops import cross_entropy as fused_ce  # noqa: E402
from megatron_tf.parallel.cross_entropy import cross_entropy_loss_and_grad, vocab_parallel_cross_entropy  # noqa: E402


def bench_all(fn, device: torch.device, warmup_ms: float = 25, rep_ms: float = 100) -> list[float]:
    """Milliseconds of each timed call of fn() (triton's do_bench flushes L2 between calls, else CUDA events)."""
    if device.type == "cuda":
        try:
            from triton.testing import do_bench

            return [float(t) for t in do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")]
        except ImportError:
            return time_calls(fn, device, reps=20, warmup=3)
    return time_calls(fn, device, reps=5, warmup=1)


def bench(fn, device: torch.device, warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median milliseconds of fn()."""
    return statistics.median(bench_all(fn, device, warmup_ms, rep_ms))


def peak_extra_bytes(fn, device: torch.device) -> int | None:
    """Peak allocated bytes during fn() above what was allocated before (inputs excluded)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return int(peak)


def copy_bandwidth(device: torch.device, nbytes: int = 4 << 30) -> float | None:
    """Bytes read + written per second of a device-to-device copy (GB/s)."""
    if device.type != "cuda":
        return None
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), device)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def make_inputs(n, v, dtype, device, masked, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    logits = (torch.randn(n, v, generator=g, device=device, dtype=torch.float32) * 3).to(dtype)
    target = torch.randint(0, v, (n,), generator=g, device=device)
    mask = torch.rand(n, generator=g, device=device) >= masked
    return logits, target, mask


def methods(logits, target, mask, device, have_fused, liger_fn):
    """name -> (fn, bytes per logit of its floor or None, mutates logits)."""
    scale = 1.0 / mask.sum().clamp(min=1).float()
    up = scale.expand(target.shape[0]).contiguous()
    x = logits.clone().requires_grad_(True)
    out = {}

    def f_ce():
        loss = F.cross_entropy(x.float(), target, reduction="none") * mask
        return torch.autograd.grad(loss, x, up)[0]

    def ours_torch():
        return torch.autograd.grad(vocab_parallel_cross_entropy(x, target, mask, impl="torch"), x, up)[0]

    out["f_ce_fp32"] = (f_ce, None, False)
    out["ours_torch"] = (ours_torch, None, False)
    if liger_fn is not None:
        xl = logits.clone().requires_grad_(True)
        t_ign = torch.where(mask, target, torch.full_like(target, -100))

        def liger():
            loss = liger_fn(xl, t_ign, None, -100, 0.0, 0.0, "mean", None, False, False, False)[0]
            return torch.autograd.grad(loss, xl)[0]

        out["liger"] = (liger, None, True)
    if have_fused:
        xi = logits.clone().requires_grad_(True)
        ext = fused_ce.load_extension()
        w = mask.float()
        _, lse = ext.cross_entropy_forward(logits, target, w, 0, 0.0, logits.shape[1], True)
        gbuf = torch.empty_like(logits)

        def fused_2k():
            return torch.autograd.grad(vocab_parallel_cross_entropy(x, target, mask, impl="fused"), x, up)[0]

        def fused_2k_inpl():
            loss = vocab_parallel_cross_entropy(xi, target, mask, impl="fused", inplace_backward=True)
            return torch.autograd.grad(loss, xi, up)[0]

        def fused_1k():
            return cross_entropy_loss_and_grad(logits, target, mask, scale, impl="fused")[1]

        def fused_1k_inpl():
            return cross_entropy_loss_and_grad(xi.detach(), target, mask, scale, impl="fused", inplace=True)[1]

        def fused_fwd():
            return ext.cross_entropy_forward(logits, target, w, 0, 0.0, logits.shape[1], True)

        def fused_bwd():
            ext.cross_entropy_backward(logits, gbuf, target, w, up, lse, 0, 0.0, logits.shape[1])
            return gbuf

        out.update(fused_2k=(fused_2k, 6, False), fused_2k_inpl=(fused_2k_inpl, 6, True), fused_1k=(fused_1k, 6, False),
                   fused_1k_inpl=(fused_1k_inpl, 6, True), fused_fwd=(fused_fwd, 2, False),
                   fused_bwd=(fused_bwd, 4, False))
    return out


def thread_sweep(logits, target, mask, device, threads_list):
    ext = fused_ce.load_extension()
    w = mask.float()
    v = logits.shape[1]
    scale = (1.0 / mask.sum().clamp(min=1).float()).reshape(1)
    up = scale.expand(logits.shape[0]).contiguous()
    _, lse = ext.cross_entropy_forward(logits, target, w, 0, 0.0, v, True)
    g = torch.empty_like(logits)
    rows = []
    for t in threads_list:
        rows.append({"threads": t,
                     "fwd_ms": bench(lambda t=t: ext.cross_entropy_forward(logits, target, w, 0, 0.0, v, True, t),
                                     device),
                     "bwd_ms": bench(lambda t=t: ext.cross_entropy_backward(logits, g, target, w, up, lse, 0, 0.0, v,
                                                                            t), device),
                     "fwd_bwd_1k_ms": bench(lambda t=t: ext.cross_entropy_forward_backward(logits, g, target, w, scale,
                                                                                           0.0, t), device)})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="JSON output path (default: print only)")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU (checks the script, times nothing real)")
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--vocab", type=int, nargs="+", default=[50304, 128256])
    ap.add_argument("--masked", type=float, default=0.3)
    ap.add_argument("--threads", type=int, nargs="*", default=[128, 256, 512])
    args = ap.parse_args(argv)
    if args.dry_run:
        device, dtype, args.n, args.vocab = torch.device("cpu"), torch.float32, 64, [1000]
    else:
        if not torch.cuda.is_available():
            raise SystemExit("bench_cross_entropy: no CUDA device (use --dry-run on CPU)")
        device, dtype = torch.device("cuda"), torch.bfloat16
    have_fused = device.type == "cuda" and fused_ce.fused_available()
    liger_fn = None
    if device.type == "cuda":
        try:
            from liger_kernel.ops.cross_entropy import LigerCrossEntropyFunction

            liger_fn = LigerCrossEntropyFunction.apply
        except Exception as e:  # noqa: BLE001 (any import-time failure of the optional baseline skips it)
            print(f"bench_cross_entropy: Liger-Kernel not importable ({type(e).__name__}: {e}); skipping it",
                  file=sys.stderr)
    info = machine_info(device)
    bw = copy_bandwidth(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    report = {"benchmark": "benchmarks/bench_cross_entropy.py", "machine": info, "copy_bandwidth_GBps": bw,
              "fused_available": have_fused, "fused_error": None if have_fused else fused_ce.extension_error(),
              "liger": None, "dtype": str(dtype), "n_rows": args.n, "results": [], "threads_sweep": {},
              "notes": "liger and *_inpl methods overwrite the logits with gradients; later iterations run on "
                       "those values. peak_extra_MiB = peak allocation during one call above the inputs."}
    if liger_fn is not None:
        import importlib.metadata as md

        report["liger"] = md.version("liger-kernel")
    for v in args.vocab:
        for masked in (0.0, args.masked):
            logits, target, mask = make_inputs(args.n, v, dtype, device, masked, seed=v)
            for name, (fn, floor_bytes, _) in methods(logits, target, mask, device, have_fused, liger_fn).items():
                if masked and name in ("ours_torch", "fused_2k_inpl", "fused_1k_inpl", "fused_fwd", "fused_bwd"):
                    continue
                try:
                    peak = peak_extra_bytes(fn, device)
                    sp = spread(bench_all(fn, device))
                    ms = sp["median_ms"]
                except torch.OutOfMemoryError as e:
                    report["results"].append({"vocab": v, "masked": masked, "method": name, "error": str(e)[:200]})
                    continue
                row = {"vocab": v, "masked": masked, "method": name, **sp,
                       "peak_extra_MiB": None if peak is None else round(peak / 2**20, 1)}
                if bw and floor_bytes:
                    floor_ms = floor_bytes * args.n * v * logits.element_size() / 2 / (bw * 1e9) * 1e3
                    row["floor_ms"] = round(floor_ms, 4)
                    row["frac_of_floor"] = round(floor_ms / ms, 3)
                report["results"].append(row)
                print(f"V={v:6d} masked={masked:.1f} {name:14s} {ms:9.3f} ms  peak+{row['peak_extra_MiB']} MiB",
                      flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            if have_fused and not masked and args.threads:
                report["threads_sweep"][str(v)] = thread_sweep(logits, target, mask, device, args.threads)
            del logits, target, mask
            if device.type == "cuda":
                torch.cuda.empty_cache()
    report["goals"] = goals(report)
    print_table(report)
    if args.out:
        write_json(args.out, report)
        print(f"wrote {args.out}")


def goals(report) -> dict:
    """The issue's goals, per vocabulary size, from the measured medians."""
    t = {(r["vocab"], r["masked"], r["method"]): r.get("median_ms") for r in report["results"]}
    out = {}
    for v in sorted({r["vocab"] for r in report["results"]}):
        masked = max([r["masked"] for r in report["results"] if r["vocab"] == v])
        g = {}
        for fused in ("fused_2k", "fused_1k"):
            tf = t.get((v, 0.0, fused))
            if not tf:
                continue
            row = next(r for r in report["results"] if (r["vocab"], r["masked"], r["method"]) == (v, 0.0, fused))
            g[fused] = {"frac_of_6B_floor": row.get("frac_of_floor"),
                        "speedup_vs_f_ce_fp32": _ratio(t.get((v, 0.0, "f_ce_fp32")), tf),
                        "speedup_vs_ours_torch": _ratio(t.get((v, 0.0, "ours_torch")), tf),
                        "speedup_vs_liger": _ratio(t.get((v, 0.0, "liger")), tf),
                        "masked_over_unmasked": _ratio(t.get((v, masked, fused)), tf)}
            g[fused]["met"] = {"floor>=0.8": _ge(g[fused]["frac_of_6B_floor"], 0.8),
                               "vs_f_ce>=5": _ge(g[fused]["speedup_vs_f_ce_fp32"], 5.0),
                               "vs_liger>=1.3": _ge(g[fused]["speedup_vs_liger"], 1.3),
                               "masked<=0.85": None if g[fused]["masked_over_unmasked"] is None
                               else g[fused]["masked_over_unmasked"] <= 0.85}
        out[str(v)] = g
    return out


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


def _ge(a, b):
    return None if a is None else a >= b


def print_table(report):
    print(f"\n{report['machine'].get('device')}  torch {report['machine']['torch']}  cuda {report['machine']['cuda']}"
          f"  copy bandwidth {report['copy_bandwidth_GBps'] and round(report['copy_bandwidth_GBps'])} GB/s")
    print(f"{'V':>7} {'masked':>6} {'method':14} {'ms':>9} {'floor%':>7} {'peak MiB':>9}")
    for r in report["results"]:
        if "error" in r:
            print(f"{r['vocab']:7d} {r['masked']:6.1f} {r['method']:14} error: {r['error'][:60]}")
            continue
        frac = f"{100 * r['frac_of_floor']:.0f}" if r.get("frac_of_floor") else "-"
        print(f"{r['vocab']:7d} {r['masked']:6.1f} {r['method']:14} {r['median_ms']:9.3f} {frac:>7} "
              f"{r['peak_extra_MiB'] if r['peak_extra_MiB'] is not None else '-':>9}")
    for v, rows in report["threads_sweep"].items():
        for row in rows:
            print(f"threads V={v} {row}")
    print(json.dumps(report["goals"], indent=1))


if __name__ == "__main__":
    main()
