"""Annotation throughput of the biLM classifier labeler, and the cost arithmetic against pretraining compute.

    python benchmarks/bench_annotate.py                     # CPU here -> benchmarks/results/annotate_cpu_2cores.json
    python benchmarks/bench_annotate.py --sizes 112m --device cuda --tokens 2000000 --out $OUT/annotate_gpu.json

Each size is a classifier artifact (two LMs + a logistic probe; random weights unless --demo-artifact is given:
throughput does not depend on the values) annotating a dataset end to end through the annotation runner
(labeling/annotate_runner.py: read, window, batch, both LMs, probe, quantise, write sidecars), one process with all CPU
threads (or one GPU). Reported per (size, layer): tokens/s, achieved FLOP/s (annotation FLOPs from the cost
accounting, labeling/classifier/cost.py, divided by wall time), positions read per token (separator + window overlap)
and the padding overhead of the length-sorted batches, and the annotation cost as a fraction of the pretraining
compute 6 N D of a 1.8B model (the paper's ratio: a 224M biLM for a 1.8B model).

Sizes (per LM; a biLM is two of them): demo = the CPU demo's LMs (4 x 128, vocab 8192); 112m = 12 x 768, 12 heads,
SwiGLU f 2048, tied vocabulary 32768 (110M parameters, 85M of them in the blocks; two make the paper's ~224M
biLM); 56m = 12 x 512, 8 heads, same vocabulary (two make a ~112M biLM). On a GPU the labeler runs in bf16 (its
"auto" dtype); the JSON records it per row. Data: the demo held-out sets when they exist
(runs/classifier_demo/data), else synthetic documents with log-normal lengths (median 400 tokens, capped at 8192).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_common import machine_info as common_machine_info  # noqa: E402
from benchmarks.bench_common import write_json  # noqa: E402
from megatron_tf.data.indexed_dataset import IndexedDataset, write_dataset  # noqa: E402
from megatron_tf.labeling.annotate import annotate  # noqa: E402
from megatron_tf.labeling.classifier.artifact import LMSpec, read_config, save_classifier  # noqa: E402
from megatron_tf.labeling.classifier.cost import paper_arithmetic  # noqa: E402
from megatron_tf.labeling.classifier.features import padded_positions  # noqa: E402
from megatron_tf.labeling.classifier.labeler import ClassifierLabeler  # noqa: E402
from megatron_tf.labeling.classifier.probe import Probe  # noqa: E402
from megatron_tf.model.config import ModelConfig  # noqa: E402
from megatron_tf.model.flops import num_parameters  # noqa: E402
from megatron_tf.model.gpt import build_gpt_stage  # noqa: E402
from megatron_tf.tokenizer.tokenizer import NullTokenizer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name: (layers, hidden, heads, vocab, tied, window, context, layers to probe)
SIZES = {
    "demo": (4, 128, 4, 8192, False, 256, 64, (1, 3)),
    "56m": (12, 512, 8, 32768, True, 1024, 256, (3, 11)),  # two make a ~112M biLM
    "112m": (12, 768, 12, 32768, True, 1024, 256, (3, 11)),
}
PAPER_MODEL = 1.8e9


def machine_info(device: str) -> dict:
    """benchmarks/bench_common.py's record (device, driver, versions, commit, date, L2) plus the CPU model."""
    info = common_machine_info("cuda" if device.startswith("cuda") else "cpu")
    info["torch_threads"] = torch.get_num_threads()
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    return info


def random_artifact(path: str, size: str, layer: int, tok) -> str:
    layers, h, heads, vocab, tied, window, context, _ = SIZES[size]
    cfg = ModelConfig(num_layers=layers, hidden_size=h, num_attention_heads=heads, vocab_size=vocab,
                      untie_embeddings_and_output_weights=not tied)
    specs = [LMSpec(cfg, build_gpt_stage(cfg, seed=s).state_dict()) for s in (1, 2)]
    probe = Probe(2 * h)
    return save_classifier(path, forward_lm=specs[0], reversed_lm=specs[1], probe=probe, layer=layer,
                           window=window, context=context, tokenizer=tok, threshold=0.5, base_rate=0.02,
                           overwrite=True)


def synthetic_dataset(path: str, tokens: int, vocab: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    docs, n = [], 0
    while n < tokens:
        length = int(min(8192, max(8, rng.lognormal(np.log(400), 1.0))))
        length = min(length, tokens - n) if tokens - n >= 8 else length
        docs.append(np.append(rng.integers(0, vocab - 3, length - 1), vocab - 3))  # NullTokenizer eod = V - 3
        n += length
    write_dataset(path, docs, dtype=np.uint16 if vocab < 65500 else np.int32)
    return path


def bench_one(prefix: str, artifact: str, tok, device: str, batch_tokens: int, group_tokens: int) -> dict:
    lab = ClassifierLabeler(artifact, device=device, batch_tokens=batch_tokens, group_tokens=group_tokens)
    ds = IndexedDataset(prefix)
    lengths = np.diff(ds.document_token_offsets())
    warm = [np.asarray(ds.tokens(0, min(int(lengths[0]), 64)))]
    lab.score_documents(warm)  # load the models, first-call kernels
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    summary = annotate(prefix, lab, tok, name="bench", chunk_docs=64, progress=False, restart=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    acc = lab.cost(lengths)
    cfg = read_config(artifact)
    # padding: the labeler's document groups, one direction (both directions pad the same)
    read = padded = 0
    i = 0
    while i < len(lengths):
        j, n = i, 0
        while j < len(lengths) and (j == i or n + lengths[j] <= group_tokens):
            n += int(lengths[j])
            j += 1
        r, p = padded_positions([int(x) for x in lengths[i:j]], cfg["window"], cfg["context"], batch_tokens)
        read, padded = read + r, padded + p
        i = j
    for f in os.listdir(os.path.dirname(prefix)):
        if ".bench." in f:
            os.remove(os.path.join(os.path.dirname(prefix), f))
    return {"dtype": lab.dtype, "tokens": int(summary.num_tokens), "documents": int(summary.num_documents),
            "seconds": seconds,
            "tokens_per_s": summary.num_tokens / seconds, "flops_per_token": acc["flops_per_token"],
            "achieved_GFLOPs": acc["flops"] / seconds / 1e9, "positions_read_per_token": acc["read_overhead"],
            "padding_overhead": padded / max(read, 1) - 1.0,
            "pct_of_pretraining_1p8b": acc["flops_per_token"] / (6 * PAPER_MODEL)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="demo,112m")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tokens", type=int, default=None, help="synthetic tokens per size (default: demo 200k, "
                   "112m 24k on CPU)")
    p.add_argument("--batch-tokens", type=int, default=16384)
    p.add_argument("--group-tokens", type=int, default=65536)
    p.add_argument("--demo-data", default=os.path.join(REPO, "runs", "classifier_demo", "data", "data"))
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    device = a.device
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in a.sizes.split(","):
            layers, h, heads, vocab, tied, window, context, probe_layers = SIZES[size]
            tok = NullTokenizer(vocab)
            demo = [os.path.join(a.demo_data, f"heldout_{d}_text_document") for d in ("medical", "biology",
                                                                                      "general")]
            if size == "demo" and a.tokens is None and all(os.path.exists(x + ".bin") for x in demo):
                # the demo's held-out sets, concatenated into one prefix (real document lengths)
                docs = []
                for x in demo:
                    ds = IndexedDataset(x)
                    docs += [np.asarray(ds[i]) for i in range(len(ds))]
                prefix = os.path.join(tmp, "demo_heldout")
                write_dataset(prefix, docs, dtype=np.uint16)
                data = "demo held-out sets (medical, biology, general)"
            else:
                n = a.tokens or (200_000 if size == "demo" else 24_000)
                prefix = synthetic_dataset(os.path.join(tmp, f"syn_{size}"), n, vocab)
                data = f"synthetic, {n} tokens, log-normal lengths"
            cfg = ModelConfig(num_layers=layers, hidden_size=h, num_attention_heads=heads, vocab_size=vocab,
                              untie_embeddings_and_output_weights=not tied)
            for layer in probe_layers:
                art = random_artifact(os.path.join(tmp, f"cls_{size}_{layer}"), size, layer, tok)
                r = bench_one(prefix, art, tok, device, a.batch_tokens, a.group_tokens)
                r.update(size=size, layer=layer, biLM_params=2 * num_parameters(cfg), blocks_run=layer + 1,
                         num_layers=layers, hidden=h, vocab=vocab, params_per_lm=num_parameters(cfg), window=window,
                         context=context, data=data)
                results.append(r)
                print(f"{size:>5} layer {layer:>2} ({layer + 1}/{layers} blocks): {r['tokens_per_s']:>9,.0f} tok/s "
                      f"{r['achieved_GFLOPs']:>7.1f} GFLOP/s  {r['flops_per_token'] / 1e6:>8.2f} MFLOP/tok  "
                      f"read x{r['positions_read_per_token']:.3f} pad +{r['padding_overhead']:.1%}  "
                      f"= {r['pct_of_pretraining_1p8b']:.2%} of 6 x 1.8B", flush=True)
    paper = paper_arithmetic()
    print(f"paper ratio: 2 x 224M / (6 x 1.8B) = {paper['annotation_flops_per_token'] / 1e6:.0f} MFLOP / "
          f"{paper['pretraining_flops_per_token'] / 1e9:.1f} GFLOP = {paper['ratio']:.2%} per token")
    out = a.out or os.path.join(REPO, "benchmarks", "results",
                                f"annotate_{'gpu' if device.startswith('cuda') else 'cpu'}_{os.cpu_count()}cores.json")
    write_json(out, {"benchmark": "benchmarks/bench_annotate.py", "machine": machine_info(device), "args": vars(a),
                     "paper_arithmetic": paper, "results": results})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
