"""Per-token log-likelihoods from a GPT (tensor-parallel or not), for right-padded batches of sequences.

    logprobs = token_logprobs(model, inputs, targets, pad_id, bf16=True)   # list of float64 numpy arrays

Row i scores log p(targets[i][j] | inputs[i][: j + 1]) for j < len(inputs[i]) (so targets[i] is inputs[i] shifted
by one). Rows of different lengths are padded on the RIGHT with `pad_id` into one [b, s] batch: the model is causal,
so a real position never attends to a pad that follows it and its logits equal those of the unpadded row; padded
positions get loss weight 0 and are cut away. The loss is `vocab_parallel_cross_entropy` (megatron_tf/parallel/
cross_entropy.py) on the model's vocabulary shard, so a tensor-parallel model (every TP rank calling this in lockstep
with the same rows) gives the same numbers on every rank without gathering the logits. The softmax runs over the
padded vocabulary, as in training (the padding rows are never targets).

Precision: bf16 autocast when the model is on CUDA and `bf16` is set, otherwise the model's own dtype (fp32 on CPU;
fp64 models, used by tests, score in fp64). The loss itself is computed in fp32 (fp64 for fp64 logits).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from megatron_tf.parallel.cross_entropy import vocab_parallel_cross_entropy
from megatron_tf.utils.logging import get_logger

log = get_logger(__name__)
_LOGGED: set[str] = set()


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def check_whole_model(model: torch.nn.Module) -> None:
    """Evaluation needs the whole model on this rank's pipeline stage (tensor parallelism is fine)."""
    if not (getattr(model, "pre_process", True) and getattr(model, "post_process", True)):
        raise ValueError("evaluation needs a model with all layers (pipeline-parallel size 1): merge the pipeline "
                         "stages first (megatron_tf.checkpoint.load_model does)")


def autocast_context(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when asked; nothing elsewhere (CPU evaluates in the model's dtype). Logged once."""
    use = device.type == "cuda" and bf16
    key = f"{device.type}:{use}"
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.info("evaluation precision on %s: %s", device.type, "bf16 autocast" if use else "model dtype (no autocast)")
    return torch.autocast("cuda", dtype=torch.bfloat16) if use else contextlib.nullcontext()


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """model.eval() and no_grad inside; the previous training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, length: int | None = None) -> torch.Tensor:
    """int64 [len(rows), max length] right-padded with pad_id."""
    n = max((len(r) for r in rows), default=0) if length is None else length
    out = np.full((len(rows), n), pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = np.asarray(r, dtype=np.int64)
    return torch.from_numpy(out)


def token_logprobs(model: torch.nn.Module, inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
                   pad_id: int, bf16: bool = True) -> list[np.ndarray]:
    """log-probabilities (float64 numpy, one array per row, length len(inputs[i])) of the targets. See module doc."""
    if len(inputs) != len(targets):
        raise ValueError(f"token_logprobs: {len(inputs)} input rows but {len(targets)} target rows")
    if not inputs:
        return []
    for i, (x, y) in enumerate(zip(inputs, targets)):
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"token_logprobs: row {i} has {len(x)} inputs and {len(y)} targets (need equal, > 0)")
    check_whole_model(model)
    device = model_device(model)
    lengths = torch.tensor([len(x) for x in inputs])
    ids = pad_batch(inputs, pad_id).to(device)
    tgt = pad_batch(targets, pad_id).to(device)
    real = (torch.arange(ids.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).to(device)
    with autocast_context(device, bf16):
        logits = model(ids)
    nll = vocab_parallel_cross_entropy(logits, tgt, real, tp_group=getattr(model, "tp_group", None))
    lp = (-nll.to(torch.float64)).cpu().numpy()
    return [lp[i, : int(n)] for i, n in enumerate(lengths.tolist())]
