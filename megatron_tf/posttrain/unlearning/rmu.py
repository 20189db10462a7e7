"""RMU: Representation Misdirection for Unlearning (Li et al. 2024, "The WMDP Benchmark", arXiv:2403.03218, sec. 5).

With h_l(x) the residual stream after decoder layer l (fp32, [tokens, hidden]) of the model being updated, h*_l(x)
that of a frozen copy, u a fixed random unit vector and c the steering coefficient, one step on a forget batch F and
a retain batch R minimises

    L = L_forget + alpha * L_retain
    L_forget = sum_{t in F, w_t = 1} ||h_l(t) - c u||^2   / (n_F * hidden)
    L_retain = sum_{t in R, w_t = 1} ||h_l(t) - h*_l(t)||^2 / (n_R * hidden)

(mean squared error over the non-padding positions and the hidden units; w_t = 0 on padding and on the start token,
n = sum of w). Only the parameters selected BY NAME are updated: by default `decoder.layers.{i}.mlp.linear_fc2.weight`
(the MLP output projections) of layers i = l-2 .. l. The WMDP reference picks `params[param_ids]` of each layer's
module list, which happens to be the MLP down projection on Zephyr and other tensors elsewhere: naming the tensors
makes the choice architecture-independent and checkable.

c: fixed (`--steering-coeff`), or calibrated (`--steering-coeff-scale k`): c = k * the mean L2 norm of h*_l over the
non-padding forget tokens of the first calibration batches (the reference used c = 6.5 for Zephyr-7B and 300 for
Mixtral, a few times their layer-7 activation norms). Optimiser: AdamW on the selected tensors with weight decay 0
(the reference's torch.optim.AdamW(lr)).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from megatron_tf.config.cli import opt
from megatron_tf.posttrain.data import Row, RowBatches, pad_rows
from megatron_tf.utils.logging import get_logger

log = get_logger(__name__)


@dataclass
class RMUConfig:
    """RMU unlearning (Li et al. 2024)."""

    layer_id: int | None = field(default=None, metadata=opt(
        "Layer l whose output residual is steered (default: the middle layer, num_layers // 2)."))
    layer_ids: list[int] | None = field(default=None, metadata=opt(
        "Layers whose parameters are updated (default: l-2, l-1, l; those below 0 dropped)."))
    param_names: list[str] = field(default_factory=lambda: ["mlp.linear_fc2.weight"], metadata=opt(
        "Parameter name suffixes (within a layer) to update, e.g. mlp.linear_fc2.weight (the MLP output projection)."))
    steering_coeff: float | None = field(default=None, metadata=opt(
        "c: the norm of the target c*u. Default: calibrated as --steering-coeff-scale x the measured activation norm."))
    steering_coeff_scale: float = field(default=4.0, metadata=opt(
        "k of the calibrated c = k x mean L2 norm of layer-l forget activations (when --steering-coeff is unset)."))
    calibration_batches: int = field(default=4, metadata=opt("Forget batches used to measure the activation norm."))
    alpha: float = field(default=100.0, metadata=opt("Retain loss weight (literature: 100-1200)."))
    lr: float = field(default=5e-5, metadata=opt("AdamW learning rate (literature: 5e-5..1e-4).", flag="--lr"))
    weight_decay: float = field(default=0.0, metadata=opt("AdamW weight decay (the reference uses 0)."))
    adam_beta1: float = field(default=0.9, metadata=opt("AdamW beta1."))
    adam_beta2: float = field(default=0.999, metadata=opt("AdamW beta2."))
    train_iters: int = field(default=150, metadata=opt("Update steps (one forget + one retain batch each)."))
    micro_batch_size: int = field(default=4, metadata=opt("Sequences per forget / retain batch."))
    max_length: int = field(default=512, metadata=opt("Tokens per sequence (start token included)."))
    seed: int = field(default=42, metadata=opt("Seed of u and of the batch order."))

    def __post_init__(self):
        if self.alpha < 0:
            raise ValueError(f"--alpha must be >= 0, got {self.alpha}")
        if self.train_iters < 0 or self.micro_batch_size < 1 or self.max_length < 2:
            raise ValueError("--train-iters >= 0, --micro-batch-size >= 1 and --max-length >= 2 are required")
        if self.steering_coeff is not None and self.steering_coeff <= 0:
            raise ValueError(f"--steering-coeff must be > 0, got {self.steering_coeff}")

    def resolve_layers(self, num_layers: int) -> tuple[int, list[int]]:
        lid = num_layers // 2 if self.layer_id is None else self.layer_id
        if not 0 <= lid < num_layers:
            raise ValueError(f"--layer-id {lid} outside the model's layers [0, {num_layers})")
        ids = self.layer_ids if self.layer_ids is not None else [i for i in (lid - 2, lid - 1, lid) if i >= 0]
        bad = [i for i in ids if not 0 <= i < num_layers]
        if bad:
            raise ValueError(f"--layer-ids {bad} outside the model's layers [0, {num_layers})")
        return lid, sorted(set(ids))


def select_parameters(model: torch.nn.Module, layer_ids: Sequence[int], suffixes: Sequence[str]
                      ) -> dict[str, torch.nn.Parameter]:
    """{name: parameter} of `decoder.layers.{i}.{suffix}` for every layer id and suffix; each must exist."""
    params = dict(model.named_parameters())
    out = {}
    for i in layer_ids:
        for s in suffixes:
            name = f"decoder.layers.{i}.{s}"
            if name not in params:
                near = [n for n in params if re.match(rf"decoder\.layers\.{i}\.", n)]
                raise KeyError(f"RMU: the model has no parameter {name!r} (layer {i} has: {near})")
            out[name] = params[name]
    return out


class _Stop(Exception):
    pass


def layer_output(model: torch.nn.Module, ids: torch.Tensor, layer_id: int) -> torch.Tensor:
    """Residual stream after decoder layer `layer_id`, fp32 [b, s, h]; the forward stops there (later layers and
    the output layer are not run)."""
    layer = model.decoder.layers[str(layer_id)]
    box = {}

    def hook(_mod, _inp, out):
        box["h"] = out
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        model(input_ids=ids)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "h" not in box:
        raise RuntimeError(f"layer {layer_id} was not run by the forward pass")
    return box["h"].transpose(0, 1).float()


def masked_mse(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_t w_t ||a_t - b_t||^2 / (sum_t w_t * hidden); a, b [b, s, h] (b may broadcast), weights [b, s]."""
    w = weights.to(a.dtype)
    sq = ((a - b) ** 2).sum(-1)
    return (sq * w).sum() / (w.sum().clamp(min=1.0) * a.shape[-1])


def random_unit_vector(hidden: int, seed: int) -> torch.Tensor:
    """u: uniform [0, 1) entries normalised to norm 1 (the reference's torch.rand(...) / norm), fp32, CPU."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(hidden, generator=g, dtype=torch.float64)
    return (u / u.norm()).float()


@torch.no_grad()
def activation_norm(model, batches: Iterator[list[Row]], n_batches: int, layer_id: int, pad_id: int,
                    device) -> float:
    """Mean L2 norm of the layer-l residual over the non-padding positions of n_batches batches."""
    total, count = 0.0, 0.0
    for _ in range(n_batches):
        ids, w = pad_rows(next(batches), pad_id)
        h = layer_output(model, ids.to(device), layer_id)
        w = w.to(device)
        total += float((h.norm(dim=-1) * w).sum())
        count += float(w.sum())
    if count == 0:
        raise ValueError("RMU calibration: the forget batches hold no tokens")
    return total / count


@dataclass
class RMUResult:
    layer_id: int
    layer_ids: list[int]
    updated: list[str]
    steering_coeff: float
    activation_norm: float | None
    history: list[dict]  # per step: forget_loss, retain_loss, loss


def run_rmu(model: torch.nn.Module, forget_rows: Sequence[Row], retain_rows: Sequence[Row], cfg: RMUConfig,
            pad_id: int, *, progress: bool = True) -> RMUResult:
    """Update `model` in place with RMU; returns what was done. The model must be whole (TP = 1, all layers)."""
    if getattr(model, "tp_size", 1) != 1:
        raise ValueError("RMU runs on a whole model in one process (megatron_tf.checkpoint.load_checkpoint)")
    device = next(model.parameters()).device
    lid, ids = cfg.resolve_layers(model.config.num_layers)
    selected = select_parameters(model, ids, cfg.param_names)
    frozen = _frozen_copy(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in selected.values():
        p.requires_grad_(True)
    forget_it = RowBatches(forget_rows, cfg.micro_batch_size, cfg.seed)
    retain_it = RowBatches(retain_rows, cfg.micro_batch_size, cfg.seed + 1)
    norm = None
    if cfg.steering_coeff is None:
        norm = activation_norm(frozen, RowBatches(forget_rows, cfg.micro_batch_size, cfg.seed + 2),
                               cfg.calibration_batches, lid, pad_id, device)
        c = cfg.steering_coeff_scale * norm
        log.info("RMU: measured activation norm %.4f at layer %d -> c = %.3g x %.4f = %.4f", norm, lid,
                 cfg.steering_coeff_scale, norm, c)
    else:
        c = cfg.steering_coeff
    target = (c * random_unit_vector(model.config.hidden_size, cfg.seed)).to(device)
    opt = torch.optim.AdamW(list(selected.values()), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                            weight_decay=cfg.weight_decay)
    log.info("RMU: layer %d, updating %s (%d parameters), alpha %g, lr %g", lid, list(selected),
             sum(p.numel() for p in selected.values()), cfg.alpha, cfg.lr)
    history = []
    was_training = model.training
    model.eval()  # no dropout: the reference trains in eval-equivalent mode (dropout 0 in Zephyr)
    bar = tqdm(range(cfg.train_iters), desc="rmu", disable=not progress, dynamic_ncols=True)
    for step in bar:
        f_ids, f_w = pad_rows(next(forget_it), pad_id)
        r_ids, r_w = pad_rows(next(retain_it), pad_id)
        f_ids, f_w, r_ids, r_w = f_ids.to(device), f_w.to(device), r_ids.to(device), r_w.to(device)
        lf = masked_mse(layer_output(model, f_ids, lid), target.view(1, 1, -1), f_w)
        with torch.no_grad():
            r_ref = layer_output(frozen, r_ids, lid)
        lr_ = masked_mse(layer_output(model, r_ids, lid), r_ref, r_w)
        loss = lf + cfg.alpha * lr_
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rec = {"step": step + 1, "forget_loss": lf.item(), "retain_loss": lr_.item(), "loss": loss.item()}
        history.append(rec)
        bar.set_postfix(forget=f"{rec['forget_loss']:.4g}", retain=f"{rec['retain_loss']:.3g}")
    bar.close()
    model.train(was_training)
    for p in model.parameters():
        p.requires_grad_(True)
    return RMUResult(lid, ids, list(selected), float(c), norm, history)


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen
