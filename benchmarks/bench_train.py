"""Training throughput: tokens/s and MFU per model size, and the cost of --token-filter mask / remove vs none.

    python benchmarks/bench_train.py                                   # CPU: tiny sizes -> benchmarks/results/
    python benchmarks/bench_train.py --sizes 1b --bf16 --out $OUT/train_bench.json     # one GPU
    python benchmarks/bench_train.py --dry-run                                         # seconds, smoke test

Per size, ONE Trainer (one model; init of a 1B model costs ~15 s) trains on synthetic token data (NullTokenizer,
random documents, ~25% of tokens forget in spans) whose train iterator is swapped between the three filters in
rounds (none, mask, remove, none, ...), so all modes share the model, the process and the warm-up; each round runs
`--warmup` untimed + `--steps` timed optimizer steps. Per step: data time (the loader's next microbatches, filter
included: the filter runs in the data loader) and step time (forward/backward/optimizer, then a device sync on the
step's statistics). Overhead of a mode = median step+data time / none's - 1. MFU = tokens/s x
model_flops_per_token / peak (training/metrics.py; None on CPU, where achieved GFLOP/s is reported instead).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_common import machine_info, spread, write_json  # noqa: E402
from megatron_tf.data.builder import build_gpt_datasets  # noqa: E402
from megatron_tf.data.config import FilterConfig  # noqa: E402
from megatron_tf.data.indexed_dataset import write_dataset  # noqa: E402
from megatron_tf.data.loader import build_pretraining_data_loader  # noqa: E402
from megatron_tf.data.sidecar import write_token_mask, write_token_scores  # noqa: E402
from megatron_tf.model.flops import model_flops_per_token  # noqa: E402
from megatron_tf.training import Trainer, parse_args  # noqa: E402
from megatron_tf.training.metrics import mfu  # noqa: E402

# name: (layers, hidden, heads, vocab, seq, micro batch, global batch)
SIZES = {
    "tiny": (2, 64, 4, 512, 64, 4, 8),
    "small": (4, 128, 4, 2048, 128, 4, 8),
    "demo": (4, 256, 4, 8192, 128, 4, 8),  # the CPU demo's model (vocab of data/demo's tokenizer)
    "350m": (24, 1024, 16, 32000, 2048, 4, 16),
    "1b": (24, 2048, 16, 32000, 2048, 4, 16),  # 1.34 B parameters (SwiGLU f 5440, untied)
}
MODES = ("none", "mask", "remove")
# two-sided 95% Student-t quantiles by degrees of freedom (rounds - 1); 1.96 beyond the table
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_ci(values: list[float]) -> dict:
    """Mean and the half-width of its 95% t confidence interval over independent runs (rounds)."""
    m = statistics.mean(values)
    if len(values) < 2:
        return {"mean": m, "ci95": None, "runs": len(values)}
    half = T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / len(values) ** 0.5
    return {"mean": m, "ci95": half, "runs": len(values)}


def make_data(directory: str, vocab: int, num_tokens: int, seed: int = 0) -> str:
    """Random documents (ids < vocab - 3; the NullTokenizer reserves the last 3) with forget spans (~25%)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(200, 3000, num_tokens // 1000 + 2)
    docs = [np.append(rng.integers(0, vocab - 3, n), vocab - 3) for n in lengths]
    ds = write_dataset(os.path.join(directory, "bench"), docs, dtype=np.uint16 if vocab <= 65536 else np.int32)
    q = np.zeros(ds.num_tokens, dtype=np.uint8)
    starts = rng.integers(0, ds.num_tokens, ds.num_tokens // 40)
    for s, n in zip(starts, rng.integers(2, 20, len(starts))):
        q[s:s + n] = 255
    write_token_scores(ds, q, {"labeler": "bench"})
    write_token_mask(ds, q >= 128, 0.5, {"labeler": "bench"})
    return os.path.join(directory, "bench")


def bench_size(name: str, args, prefix: str) -> dict:
    layers, hidden, heads, vocab, seq, mbs, gbs = SIZES[name]
    mbs, gbs = args.micro_batch_size or mbs, args.global_batch_size or gbs
    steps_total = (args.warmup + args.steps) * args.rounds * len(MODES) + 5
    flags = ["--num-layers", str(layers), "--hidden-size", str(hidden), "--num-attention-heads", str(heads),
             "--seq-length", str(seq), "--micro-batch-size", str(mbs), "--global-batch-size", str(gbs),
             "--train-iters", str(steps_total), "--lr", "1e-4", "--tokenizer-type", "NullTokenizer",
             "--vocab-size", str(vocab), "--data-path", prefix, "--split", "1,0,0", "--num-workers",
             str(args.num_workers), "--eval-iters", "0", "--no-progress-bar", "--forget-threshold", "0.5",
             "--cross-entropy-impl", args.cross_entropy_impl, "--device", args.device,
             "--make-vocab-size-divisible-by", "128"]
    if args.bf16:
        flags.append("--bf16")
    t0 = time.perf_counter()
    trainer = Trainer(parse_args(flags))
    init_s = time.perf_counter() - t0
    dev = trainer.device
    cfgs = trainer.cfgs
    loaders = {}
    for mode in [m for m in args.modes.split(",") if m]:
        ds = build_gpt_datasets(cfgs.data, FilterConfig(token_filter=mode, forget_threshold=0.5), trainer.tokenizer,
                                [steps_total * gbs, 0, 0], global_batch_size=gbs).train
        loaders[mode] = iter(build_pretraining_data_loader(ds, 0, mbs, 0, 1, num_workers=args.num_workers,
                                                           pin_memory=dev.type == "cuda"))
    modes = [m for m in args.modes.split(",") if m]
    times = {m: {"data": [], "step": [], "learned": [], "round_total": []} for m in modes}
    lr = cfgs.lr.lr
    for _ in range(args.rounds):
        for mode in modes:
            trainer.train_iter = loaders[mode]
            tot = []
            for i in range(args.warmup + args.steps):
                t0 = time.perf_counter()
                batches = trainer.next_batches()
                t1 = time.perf_counter()
                stats = trainer.train_step(batches, lr).tolist()  # the device sync of the step
                t2 = time.perf_counter()
                if i >= args.warmup:
                    times[mode]["data"].append(t1 - t0)
                    times[mode]["step"].append(t2 - t1)
                    times[mode]["learned"].append(stats[1])
                    tot.append(t2 - t0)
            times[mode]["round_total"].append(statistics.median(tot))  # one run = one round of timed steps
    tokens = gbs * seq
    f_full = trainer.flops_per_token
    f_causal = model_flops_per_token(trainer.model_cfg, seq, 1, causal_attention=True)
    rows = []
    base = None
    for mode in modes:
        d = statistics.median(times[mode]["data"])
        s = statistics.median(times[mode]["step"])
        total = d + s
        if base is None:
            base = total
        tps = tokens / total
        per_run_tps = [tokens / t for t in times[mode]["round_total"]]
        row = {"size": name, "mode": mode, "layers": layers, "hidden": hidden, "vocab": vocab, "seq": seq,
               "micro_batch": mbs, "global_batch": gbs, "parameters": trainer_params(trainer),
               "data_ms": d * 1e3, "step_ms": s * 1e3, "total_ms": total * 1e3, "tokens_per_s": tps,
               "step_spread": spread([t * 1e3 for t in times[mode]["step"]]),
               "tokens_per_s_per_run": per_run_tps, "tokens_per_s_mean_ci95": mean_ci(per_run_tps),
               "flops_per_token_full_attention": f_full, "flops_per_token_causal_attention": f_causal,
               "achieved_TFLOPs": tps * f_full / 1e12, "mfu": mfu(tps, f_full, 1, trainer.peak),
               "mfu_causal": mfu(tps, f_causal, 1, trainer.peak),
               "mfu_per_run": [mfu(t, f_full, 1, trainer.peak) for t in per_run_tps],
               "mfu_causal_per_run": [mfu(t, f_causal, 1, trainer.peak) for t in per_run_tps],
               "overhead_vs_none": total / base - 1.0,
               "learned_fraction": statistics.mean(times[mode]["learned"]) / tokens,
               "steps_timed": len(times[mode]["step"]), "runs": args.rounds, "init_s": init_s}
        if mode != modes[0]:  # paired by round: the same model state and warm-up
            ratios = [a / b - 1.0 for a, b in zip(times[mode]["round_total"], times[modes[0]]["round_total"])]
            row["overhead_vs_none_per_run"] = ratios
            row["overhead_vs_none_mean_ci95"] = mean_ci(ratios)
        rows.append(row)
    rows[0]["one_pass_cross_entropy"] = trainer.one_pass
    rows[0]["fused_linear_cross_entropy"] = getattr(trainer, "fused_linear", False)
    rows[0]["optimizer_impl"] = trainer.optimizer_impl
    rows[0]["attention_backend_flag"] = trainer.model_cfg.attention_backend
    rows[0]["peak_flops"] = trainer.peak
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"rows": rows}


def trainer_params(trainer) -> int:
    from megatron_tf.model import num_parameters

    return num_parameters(trainer.model_cfg)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="tiny,small,demo", help=f"comma-separated of {sorted(SIZES)}")
    p.add_argument("--steps", type=int, default=8, help="timed steps per mode and round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="rounds (runs) of none/mask/remove; the CI is over rounds")
    p.add_argument("--micro-batch-size", type=int, default=None)
    p.add_argument("--global-batch-size", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--cross-entropy-impl", default="auto", choices=("auto", "torch", "fused", "fused-linear"))
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated filters; the first is the baseline")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/train_<device>.json)")
    p.add_argument("--dry-run", action="store_true", help="tiny size, 2 steps: a smoke test")
    args = p.parse_args(argv)
    if args.dry_run:
        args.sizes, args.steps, args.warmup, args.rounds = "tiny", 2, 1, 2  # 2 runs: the CI code runs too
    sizes = [s for s in args.sizes.split(",") if s]
    for s in sizes:
        if s not in SIZES:
            p.error(f"unknown size {s!r}; known: {sorted(SIZES)}")
    device = torch.device("cuda" if (args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()))
                          else "cpu")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in sizes:
            layers, hidden, heads, vocab, seq, mbs, gbs = SIZES[s]
            mbs, gbs = args.micro_batch_size or mbs, args.global_batch_size or gbs
            need = ((args.warmup + args.steps) * args.rounds * len(MODES) + 8) * gbs * (seq + 1) * 1.2
            os.makedirs(os.path.join(tmp, s))
            prefix = make_data(os.path.join(tmp, s), vocab, int(need))
            t0 = time.perf_counter()
            results.extend(bench_size(s, args, prefix)["rows"])
            print(f"[{s}: {time.perf_counter() - t0:.1f} s]", flush=True)
    hdr = (f"{'size':<6} {'mode':<7} {'params':>12} {'data ms':>9} {'step ms':>9} {'tokens/s':>11} "
           f"{'TFLOP/s':>8} {'MFU':>6} {'overhead':>9} {'learned':>8}")
    print(hdr)
    for r in results:
        m = f"{r['mfu'] * 100:5.1f}%" if r["mfu"] is not None else "   n/a"
        print(f"{r['size']:<6} {r['mode']:<7} {r['parameters']:>12,} {r['data_ms']:>9.2f} {r['step_ms']:>9.2f} "
              f"{r['tokens_per_s']:>11,.0f} {r['achieved_TFLOPs']:>8.3f} {m} {r['overhead_vs_none'] * 100:>8.2f}% "
              f"{r['learned_fraction']:>8.3f}")
    info = machine_info(device)
    tag = f"cpu_{os.cpu_count()}cores" if device.type == "cpu" else info["device"].replace(" ", "_")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"train_{tag}{'_dry' if args.dry_run else ''}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_json(out, {"benchmark": "benchmarks/bench_train.py", "machine": info, "args": vars(args),
                     "mfu_conventions": "mfu: attention over the full s x s square (Narayanan et al. 2021, PaLM); "
                                        "mfu_causal: half of it (the lower triangle FlashAttention computes). "
                                        "peak_flops: training/metrics.py peak_flops (dense bf16 of the device)",
                     "results": results})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
