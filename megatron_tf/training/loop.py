"""The training loop: build everything from Configs, train with 1F1B over TP x PP x DP, evaluate, checkpoint.

One optimizer step (`Trainer.train_step`):
 1. take the step's microbatches (M = global batch / (micro batch x DP)) from the resumable loader;
 2. count their learned tokens (sum of loss_mask) on the host, all-reduce over DP -> global count N (one small
    collective, before any backward), loss scale = dp / max(N, 1) (training/loss.py);
 3. run the schedule (no pipelining, or 1F1B over the pipeline stages); the last stage back-propagates
    scale x sum(w CE) per microbatch;
 4. sum sequence-parallel norm gradients over TP and tied-embedding gradients over the first/last stage; average
    gradients over DP (DDP during the last microbatch's backward; explicitly after the schedule with PP > 1, where
    DDP's reducer would fire on the wrong microbatch; DeepSpeed in engine.step());
 5. global gradient norm over TP x PP; divergence guard (divergence.py: a non-finite loss or norm is never
    applied); clip, set the LR, AdamW step.
Host synchronisation: one flag per step, the divergence guard's (the update must not start before the host knows
the loss and norm are finite; Megatron-LM and torch's GradScaler synchronise the same way); losses, counts and
norms stay on the device until a log, eval or save point, except the learned count per step with --train-tokens
counting learned tokens (it decides when to stop; with --train-tokens-count seen the count is known on the host).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time

import torch
import torch.distributed as dist

from megatron_tf.checkpoint import format as ckpt
from megatron_tf.checkpoint import states
from megatron_tf.data.builder import build_gpt_datasets
from megatron_tf.data.loader import build_pretraining_data_loader
from megatron_tf.model import build_gpt_stage, model_flops_per_token, num_parameters
from megatron_tf.model.gpt import allreduce_embedding_grads
from megatron_tf.ops.fused_linear_cross_entropy import fused_linear_objective
from megatron_tf.parallel.cross_entropy import vocab_parallel_cross_entropy
from megatron_tf.parallel.data_parallel import allreduce_mean_grads
from megatron_tf.parallel.groups import build_parallel_groups
from megatron_tf.parallel.layers import allreduce_sequence_parallel_grads
from megatron_tf.tokenizer.tokenizer import build_tokenizer
from megatron_tf.utils.logging import get_logger

from . import deepspeed_engine as dse
from . import resume
from .arguments import Configs
from .distributed import fault_point, init_distributed, seed_all
from .divergence import DivergenceGuard, is_finite, nonfinite_step
from .loss import global_count, local_learned_tokens, loss_scale, microbatch_objective, use_one_pass
from .lr_schedule import build_lr_schedule
from .metrics import MetricsWriter, format_eval, format_train, mfu, peak_flops, progress_bar
from .optimizer import build_optimizer, clip_grads_, global_grad_norm, norm_params, set_lr
from .result import TrainResult
from .schedule import P2P, forward_backward_1f1b, forward_backward_no_pipelining
from .validation import build_eval_datasets, eval_num_samples

log = get_logger(__name__)

class Trainer:
    def __init__(self, cfgs: Configs, setup_hook=None):
        self.cfgs = cfgs
        t = cfgs.training
        self.env = init_distributed(t.device, t.distributed_backend, t.distributed_timeout_minutes,
                                    cfgs.deepspeed.local_rank)
        self.device = self.env.device
        if dist.is_initialized():
            dist.barrier()
        par = cfgs.parallel
        self.groups = g = build_parallel_groups(par.tensor_model_parallel_size, par.pipeline_model_parallel_size)
        self.num_microbatches = t.num_microbatches(g.dp_size)
        self.gbs = t.resolved_global_batch_size(g.dp_size)
        self.bf16 = t.bf16 and self.device.type == "cuda"
        if self.device.type == "cpu" and t.flush_denormal and torch.set_flush_denormal(True):
            log.info("CPU: denormal floats flushed to zero (--no-flush-denormal keeps them)")
        if t.bf16 and not self.bf16:
            log.info("--bf16 ignored on CPU: training in fp32")
        # Megatron's seeding: seed + 100 * pp_rank for the default generators (same on TP and DP ranks)
        seed_all(t.seed + 100 * g.pp_rank)

        tc = cfgs.tokenizer
        self.tokenizer = build_tokenizer(tc.tokenizer_type, tc.tokenizer_model, tc.vocab_size)
        mc = cfgs.model
        self.model_cfg = dataclasses.replace(mc, vocab_size=self.tokenizer.vocab_size,
                                             max_position_embeddings=mc.max_position_embeddings or t.seq_length)
        self.module = build_gpt_stage(self.model_cfg, g.tp_group, g.pp_rank, g.pp_size, seed=t.seed,
                                      device=self.device)
        self.flops_per_token = model_flops_per_token(self.model_cfg, t.seq_length, g.tp_size)
        n_params = num_parameters(self.model_cfg, g.tp_size)
        log.info("model: %s parameters (%.3g training GFLOP/token), stage %d/%d holds layers %s; tp %d pp %d dp %d, "
                 "%d microbatches of %d, global batch %d", f"{n_params:,}", self.flops_per_token / 1e9, g.pp_rank,
                 g.pp_size, self.module.layer_range, g.tp_size, g.pp_size, g.dp_size, self.num_microbatches,
                 t.micro_batch_size, self.gbs)

        # ---- resume (weights before wrapping) ----
        cc = cfgs.checkpoint
        saved_cfg = self._load_weights(cfgs)

        # ---- optimizer and data-parallel wrapper (after the weights, before the optimizer state) ----
        self._build_optimizer(cfgs)

        # ---- state ----
        rs = self.resume_state
        self.iteration = int(rs.get("iteration", 0))
        self.consumed_samples = int(rs.get("consumed_samples", 0))
        self.tokens_seen = int(rs.get("tokens_seen", 0))
        self.tokens_learned = int(rs.get("tokens_learned", 0))
        self.last_saved_iteration = self.iteration if self.resume_dir is not None and rs else None
        self.guard, self.step_skipped, self.step_applied = DivergenceGuard(t.skip_nonfinite_steps, g.rank), False, False

        # ---- data ----
        self._build_data()
        tokens_per_iter = self.gbs * t.seq_length
        self.lr_schedule = build_lr_schedule(cfgs.lr, t.train_iters, t.train_tokens, tokens_per_iter)
        log.info("%s", self.lr_schedule.describe())
        self.train_iter = iter(build_pretraining_data_loader(
            self.datasets.train, self.consumed_samples, t.micro_batch_size, g.dp_rank, g.dp_size,
            num_workers=cfgs.data.num_workers, total_samples=self.train_samples,
            pin_memory=self.device.type == "cuda"))

        # ---- RNG (last: nothing above may consume it differently in a resumed run) ----
        if self.resume_dir is not None and rs and not cc.no_load_rng:
            self._restore_rng(saved_cfg)

        # ---- pipeline P2P ----
        h = self.model_cfg.hidden_size
        s = t.seq_length // (g.tp_size if self.model_cfg.sequence_parallel else 1)
        self.p2p = P2P(g.prev_stage_rank, g.next_stage_rank, (s, t.micro_batch_size, h), torch.float32,
                       self.device) if g.pp_size > 1 else None
        self.fused_linear = g.is_last_stage and cfgs.cross_entropy.cross_entropy_impl == "fused-linear"
        self.one_pass = g.is_last_stage and not self.fused_linear and use_one_pass(
            cfgs.cross_entropy.cross_entropy_impl, g.tp_size, self.device,
            torch.bfloat16 if self.bf16 else torch.float32)
        if self.one_pass:
            log.info("loss: one-pass fused cross-entropy loss + gradient (TP = 1)")

        # ---- metrics ----
        save = cc.save
        self.metrics = MetricsWriter(cfgs.logging, save, enabled=g.rank == 0, run_config=cfgs.to_dict())
        if g.rank == 0 and self.metrics.path and self.resume_dir is not None and rs:
            resume.truncate_metrics(self.metrics.path, self.iteration)
        self.peak = peak_flops(self.device, self.bf16)
        self.bar = None
        if setup_hook is not None:
            setup_hook(self)

    def _build_optimizer(self, cfgs: Configs) -> None:
        """AdamW, the data-parallel wrapper (DeepSpeed engine, DDP, or explicit averaging with PP > 1) and, when
        resuming, the saved optimizer state."""
        g, t, cc = self.groups, cfgs.training, cfgs.checkpoint
        self.optimizer, self.param_names, self.optimizer_impl = build_optimizer(
            self.module, cfgs.optimizer, cfgs.lr.lr, self.device)
        self.tied_pp = self.module.share_embeddings and g.pp_size > 1
        self.engine = None
        self.ddp = None
        self.explicit_dp = False
        if cfgs.deepspeed.deepspeed:
            self.engine, self.zero_stage = dse.initialize(
                self.module, self.optimizer, g, cfgs.deepspeed, t.micro_batch_size, cfgs.optimizer.clip_grad,
                self.model_cfg.sequence_parallel, self.tied_pp)
            self.wrapped = self.engine
        elif g.dp_size > 1 and g.pp_size == 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.module, process_group=g.dp_group,
                device_ids=[self.device.index] if self.device.type == "cuda" else None)
            self.wrapped = self.ddp
        else:
            self.explicit_dp = g.dp_size > 1
            self.wrapped = self.module
        if self.resume_dir is not None and self.resume_state and not cc.no_load_optim:
            tensors, meta = ckpt.load_optimizer_shard(self.resume_dir, g.tp_rank, g.pp_rank)
            where = os.path.join(self.resume_dir, ckpt.shard_dirname(g.tp_rank, g.pp_rank))
            if self.engine is not None:
                dse.load_full_optimizer_state(self.engine, self.param_names, tensors, meta, where)
            else:
                states.load_optimizer_state(self.optimizer, self.param_names, tensors, meta, where)

    def _restore_rng(self, saved_cfg: dict) -> None:
        """This rank's saved RNG states (torch, CUDA, model-parallel, numpy, python), when the world size matches."""
        g = self.groups
        saved_world = saved_cfg["parallel"].get("world_size")
        r = ckpt.load_rng(self.resume_dir, g.rank) if saved_world == g.world_size else None
        if r is None:
            log.warning("%s: no RNG state for rank %d of a world of %d (saved with %s ranks): RNG not restored",
                        self.resume_dir, g.rank, g.world_size, saved_world)
        else:
            states.set_rng_state(r[0], r[1], self.module.rng)

    def _load_weights(self, cfgs: Configs) -> dict | None:
        """--load: find the checkpoint, check its layout, architecture and data config against this run's, load this
        rank's weights (and state.json unless --finetune). Returns the checkpoint's config.json (None: nothing to
        load)."""
        g, cc = self.groups, cfgs.checkpoint
        saved_cfg = None
        self.resume_dir = ckpt.resolve_checkpoint_dir(cc.load, cc.ckpt_step) if cc.load else None
        self.resume_state: dict = {}
        if cc.load and self.resume_dir is None:
            log.info("--load %s holds no checkpoint yet: starting from scratch", cc.load)
        if self.resume_dir is not None:
            saved_cfg = ckpt.read_json(os.path.join(self.resume_dir, "config.json"))
            resume.check_layout(self.resume_dir, saved_cfg, g.tp_size, g.pp_size)
            resume.check_architecture(self.resume_dir, saved_cfg["configs"]["model"],
                                      dataclasses.asdict(self.model_cfg))
            current = {**cfgs.to_dict(), "model": dataclasses.asdict(self.model_cfg)}
            current.pop("checkpoint")  # where to load and save is not part of the run
            resume.check_run_config(self.resume_dir, saved_cfg["configs"], current, cc.override_data_config,
                                    cc.finetune)
            sd = ckpt.load_model_shard(self.resume_dir, g.tp_rank, g.pp_rank)
            missing, unexpected = self.module.load_state_dict(sd, strict=False)
            if missing or unexpected:
                raise ckpt.CheckpointError(f"{self.resume_dir}: shard {ckpt.shard_dirname(g.tp_rank, g.pp_rank)} "
                                           f"missing {missing[:4]}, unexpected {unexpected[:4]}")
            if not cc.finetune:
                self.resume_state = ckpt.read_json(os.path.join(self.resume_dir, "state.json"))
            log.info("loaded weights from %s", self.resume_dir)
        return saved_cfg

    # ------------------------------------------------------------------------------------------------------------
    # data
    # ------------------------------------------------------------------------------------------------------------
    def _barrier_fn(self):
        return (lambda: dist.barrier()) if dist.is_initialized() else None

    def _build(self, train_samples: int):
        cfgs = self.cfgs
        ev = cfgs.eval
        sizes = [train_samples, ev.eval_iters * self.gbs if ev.eval_iters > 0 else 0, 0]
        return build_gpt_datasets(cfgs.data, cfgs.filter, self.tokenizer, sizes, global_batch_size=self.gbs,
                                  rank=self.groups.rank, barrier=self._barrier_fn())

    def _build_data(self) -> None:
        t = self.cfgs.training
        saved = self.resume_state.get("train_samples")
        if t.train_iters is not None:
            need = t.train_iters * self.gbs
            n = saved if saved is not None and saved >= need else need
        else:
            n = saved if saved is not None else t.token_budget_samples(self.gbs, self._learned_fraction)
        ds = self._build(n)
        if ds.train is None:
            raise ValueError("no training data: check --data-path / --split / --train-data-path")
        self.train_samples = min(n, len(ds.train))
        self.datasets = ds
        self.eval_sets = {}
        if ds.valid is not None and self.cfgs.eval.eval_iters > 0:
            self.eval_sets["valid"] = ds.valid
        if self.cfgs.eval.eval_iters > 0:
            fcfg = self.cfgs.filter  # the named sets' forget flags at the threshold --token-filter-fraction picked
            fcfg = fcfg if fcfg.token_filter_fraction is None else dataclasses.replace(
                fcfg, token_filter_fraction=None, forget_threshold=ds.stats["filter"]["forget_threshold"])
            self.eval_sets.update(build_eval_datasets(self.cfgs.eval, self.cfgs.data, fcfg, self.tokenizer,
                                                      self.groups.rank, self._barrier_fn()))

    def _learned_fraction(self, probe_samples: int) -> float:
        """Learned tokens / seen tokens over the first (at most 512) of `probe_samples` training samples."""
        probe = self._build(probe_samples).train
        k = min(len(probe), 512)
        keep = float(sum(float(probe[i]["loss_mask"].sum()) for i in range(k))) / (k * self.cfgs.training.seq_length)
        if keep <= 0:
            raise ValueError(f"--train-tokens: the first {k} training samples have no learned tokens (everything is "
                             "masked)")
        log.info("--train-tokens: learned fraction %.4f on the first %d samples", keep, k)
        return keep

    def _to_device(self, b: dict) -> dict:
        nb = self.device.type == "cuda"
        return {k: v.to(self.device, non_blocking=nb) for k, v in b.items()}

    # ------------------------------------------------------------------------------------------------------------
    # one step
    # ------------------------------------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def _forward(self, model, b: dict, x, hidden: bool = False):
        pos = b.get("position_ids")
        with self._autocast():
            if self.groups.is_first_stage:
                return model(input_ids=b["tokens"], position_ids=pos, output_hidden=hidden)
            return model(hidden_states=x, position_ids=pos, output_hidden=hidden)

    def _run_schedule(self, forward_step, m: int, forward_only: bool) -> None:
        g = self.groups
        if g.pp_size > 1:
            forward_backward_1f1b(forward_step, m, self.p2p, g.pp_rank, g.pp_size, forward_only)
        else:
            no_sync = None
            if self.ddp is not None and not forward_only:
                no_sync = lambda i: self.ddp.no_sync() if i < m - 1 else contextlib.nullcontext()  # noqa: E731
            forward_backward_no_pipelining(forward_step, m, forward_only, no_sync)

    def next_batches(self) -> list[dict]:
        out = []
        for _ in range(self.num_microbatches):
            try:
                out.append(next(self.train_iter))
            except StopIteration:
                raise RuntimeError(
                    f"the training data ran out at iteration {self.iteration} ({self.train_samples} samples built)"
                    + ("; give --train-iters as an upper bound with --train-tokens"
                       if self.cfgs.training.train_tokens else "")) from None
        return out

    def train_step(self, batches: list[dict], lr: float) -> torch.Tensor:
        """One optimizer step on the given microbatches; returns device tensor [loss, count, grad norm]."""
        g, cfgs = self.groups, self.cfgs
        count = global_count(local_learned_tokens(batches), g.dp_group, self.device)
        scale = loss_scale(count, g.dp_size)
        dev_batches = [self._to_device(b) for b in batches]
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        ce_cfg = cfgs.cross_entropy
        eps = cfgs.training.label_smoothing

        def forward_step(i, x):
            nonlocal loss_sum
            b = dev_batches[i]
            out = self._forward(self.wrapped, b, x, self.fused_linear)
            if not g.is_last_stage:
                return out
            if self.fused_linear:  # out = the output layer's input; the mask comes from the data
                handle, s = fused_linear_objective(out, self.module.output_weight(), b["labels"], b["loss_mask"],
                                                   scale, g.tp_group, eps,
                                                   torch.bfloat16 if self.bf16 else torch.float32)
            else:
                handle, s = microbatch_objective(out, b["labels"], b["loss_mask"], scale, g.tp_group,
                                                 ce_cfg.cross_entropy_impl, eps, self.one_pass)
            loss_sum = loss_sum + s.double()
            return handle

        if self.engine is None:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.engine.zero_grad()
        self.module.train()
        self._run_schedule(forward_step, self.num_microbatches, forward_only=False)

        if self.model_cfg.sequence_parallel:
            allreduce_sequence_parallel_grads(self.module, g.tp_group)
        if self.tied_pp:
            allreduce_embedding_grads(self.module, g.embedding_group)
        if self.explicit_dp:
            allreduce_mean_grads(list(self.module.parameters()), g.dp_group, g.dp_size)

        # global loss (sum over DP, then from the last stage to every stage), before the update: the guard needs it
        if g.dp_group is not None:
            dist.all_reduce(loss_sum, group=g.dp_group)
        if g.pp_group is not None:
            dist.all_reduce(loss_sum, group=g.pp_group)  # non-last stages contribute 0
        loss = torch.where(count[0] > 0, loss_sum / count[0].clamp(min=1.0), torch.zeros_like(loss_sum))
        params = list(self.module.parameters())
        if self.engine is None:
            counted = norm_params(self.module, g.tp_rank, skip_shared_embedding=self.tied_pp and not
                                  g.is_first_stage)
            gnorm = global_grad_norm(counted, g.mp_group)
            self.step_skipped = nonfinite_step(loss, gnorm)  # all ranks agree; a non-finite update is never applied
            if not self.step_skipped:
                clip_grads_(params, gnorm, cfgs.optimizer.clip_grad)
                set_lr(self.optimizer, lr)
                self.optimizer.step()
        else:
            set_lr(self.engine.optimizer, lr)
            self.engine.step()  # fp32 ZeRO skips an update whose gradient norm is not finite (its overflow check)
            n = self.engine.get_global_grad_norm()
            gnorm = torch.as_tensor(float(n) if n is not None else float("nan"), device=self.device)
            self.step_skipped = nonfinite_step(loss, gnorm if n is not None else torch.zeros(()))
            self.step_applied = self.step_skipped and (n is None or is_finite(float(n)))
        skipped = torch.full((), float(self.step_skipped), dtype=torch.float64, device=self.device)
        return torch.stack([loss, count[0], gnorm.double().to(self.device), skipped])

    # ------------------------------------------------------------------------------------------------------------
    # evaluation
    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, name: str, dataset) -> dict | None:
        g, t = self.groups, self.cfgs.training
        per_step = t.micro_batch_size * g.dp_size
        n = eval_num_samples(len(dataset), self.cfgs.eval.eval_iters, self.gbs, per_step)
        if n == 0:
            log.warning("eval set %s has %d samples: fewer than one micro batch x DP (%d); skipped", name,
                        len(dataset), per_step)
            return None
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            loader = build_pretraining_data_loader(dataset, 0, t.micro_batch_size, g.dp_rank, g.dp_size,
                                                   num_workers=0, total_samples=n)
            it = iter(loader)
            sums = torch.zeros(4, dtype=torch.float64, device=self.device)
            ce_cfg = self.cfgs.cross_entropy

            def forward_step(i, x):
                b = self._to_device(next(it))
                out = self._forward(self.module, b, x)
                if not g.is_last_stage:
                    return out
                mask = b["loss_mask"]
                per_tok = vocab_parallel_cross_entropy(out, b["labels"], mask, g.tp_group, ce_cfg.cross_entropy_impl)
                sums[0] += per_tok.sum().double()
                sums[1] += mask.sum().double()
                if "forget_labels" in b:
                    f = b["forget_labels"].to(per_tok.dtype)
                    sums[2] += (per_tok * f).sum().double()
                    sums[3] += (mask * f).sum().double()
                return (None, None)

            self.module.eval()
            try:
                self._run_schedule(forward_step, n // per_step, forward_only=True)
            finally:
                self.module.train()
        if g.dp_group is not None:
            dist.all_reduce(sums, group=g.dp_group)
        if g.pp_group is not None:
            dist.all_reduce(sums, group=g.pp_group)
        s = sums.tolist()
        rec = {"type": "eval", "iteration": self.iteration, "name": name, "loss": s[0] / s[1] if s[1] else 0.0,
               "tokens": int(round(s[1])), "samples": n}
        if s[3] > 0:
            rec["loss_forget"] = s[2] / s[3]
            rec["loss_retain"] = (s[0] - s[2]) / (s[1] - s[3]) if s[1] > s[3] else 0.0
            rec["tokens_forget"] = int(round(s[3]))
        return rec

    def evaluate_all(self, result: TrainResult) -> None:
        for name, ds in self.eval_sets.items():
            rec = self.evaluate(name, ds)
            if rec is None:
                continue
            result.evals.append(rec)
            if self.groups.rank == 0:
                self._print(format_eval(rec))
                self.metrics.write(rec)

    # ------------------------------------------------------------------------------------------------------------
    # checkpoint
    # ------------------------------------------------------------------------------------------------------------
    def run_config(self) -> dict:
        g = self.groups
        cfgs = self.cfgs.to_dict()
        cfgs["model"] = dataclasses.asdict(self.model_cfg)
        tm = cfgs["tokenizer"].get("tokenizer_model")
        if tm and os.path.exists(tm):
            cfgs["tokenizer"]["tokenizer_model"] = os.path.abspath(tm)
        return {"configs": cfgs, "dataset_stats": self.datasets.stats,
                "parallel": {"tensor_model_parallel_size": g.tp_size, "pipeline_model_parallel_size": g.pp_size,
                             "data_parallel_size": g.dp_size, "world_size": g.world_size},
                "padded_vocab_size": self.module.padded_vocab_size, "tokenizer": self.tokenizer.describe(),
                "optimizer_impl": self.optimizer_impl if self.engine is None else f"deepspeed/{self.optimizer_impl}",
                "torch_version": torch.__version__}

    def save(self) -> str:
        g = self.groups
        cc = self.cfgs.checkpoint
        opt_state = None
        if not cc.no_save_optim:
            if self.engine is not None:
                opt_state = dse.full_optimizer_state(self.engine, self.param_names)  # collective over DP
            elif g.dp_rank == 0:
                opt_state = states.optimizer_state(self.optimizer, self.param_names)
        payload = ckpt.RankPayload(g.rank, g.tp_rank, g.pp_rank, g.dp_rank == 0,
                                   dict(self.module.state_dict()), opt_state, states.rng_state(self.module.rng))
        state = {"iteration": self.iteration, "consumed_samples": self.consumed_samples,
                 "tokens_seen": self.tokens_seen, "tokens_learned": self.tokens_learned,
                 "train_samples": self.train_samples, "global_batch_size": self.gbs,
                 "num_microbatches": self.num_microbatches}
        out = ckpt.save_checkpoint(cc.save, self.iteration, payload, self.run_config(), state,
                                   fault_hook=lambda point: fault_point(point, self.iteration))
        self.last_saved_iteration = self.iteration
        return out

    # ------------------------------------------------------------------------------------------------------------
    # loop
    # ------------------------------------------------------------------------------------------------------------
    def _print(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    @property
    def tokens_counted(self) -> int:  # what --train-tokens budgets (--train-tokens-count): learned or seen
        return self.tokens_seen if self.cfgs.training.train_tokens_count == "seen" else self.tokens_learned

    def _done(self) -> str | None:
        t = self.cfgs.training
        if t.train_tokens is not None and self.tokens_counted >= t.train_tokens:
            return "train_tokens"
        if t.train_iters is not None and self.iteration >= t.train_iters:
            return "train_iters"
        return None

    def train(self) -> TrainResult:
        t, cfgs, g = self.cfgs.training, self.cfgs, self.groups
        token_mode = t.train_tokens is not None
        sync_each_step = token_mode and t.train_tokens_count == "learned"
        result = TrainResult(self.iteration, self.consumed_samples, self.tokens_seen, self.tokens_learned, "",
                             save_dir=cfgs.checkpoint.save)
        show = g.rank == 0 and cfgs.logging.progress_bar
        self.bar = progress_bar(t.train_tokens if token_mode else t.train_iters, "tok" if token_mode else "it",
                                show, self.tokens_counted if token_mode else self.iteration)
        pending: list[tuple[int, float, torch.Tensor]] = []
        interval_start, interval_steps, paused = time.perf_counter(), 0, 0.0
        stopped = self._done()
        save_every, eval_every = cfgs.checkpoint.save_interval, cfgs.eval.eval_interval
        try:
            while stopped is None:
                progress = self.tokens_counted if token_mode else self.iteration
                lr = self.lr_schedule(progress)
                batches = self.next_batches()
                stats = self.train_step(batches, lr)
                self.iteration += 1
                if self.step_skipped:  # logs, or raises TrainingDiverged past --skip-nonfinite-steps
                    self._nonfinite(stats)
                fault_point("step", self.iteration)
                self.consumed_samples += self.gbs
                self.tokens_seen += self.gbs * t.seq_length
                pending.append((self.iteration, lr, stats))
                interval_steps += 1
                if sync_each_step:  # one scalar to the host per step: the learned count decides when to stop
                    self._flush(pending, result)
                    pending = []
                elif self.bar is not None:
                    self.bar.update(self.gbs * t.seq_length if token_mode else 1)
                stopped = self._done()
                if t.exit_interval and self.iteration % t.exit_interval == 0 and stopped is None:
                    stopped = "exit_interval"
                log_now = self.iteration % cfgs.logging.log_interval == 0 or stopped is not None
                eval_now = self.eval_sets and (self.iteration % eval_every == 0 or stopped is not None)
                save_now = cfgs.checkpoint.save and (
                    (save_every and self.iteration % save_every == 0) or stopped is not None)
                if log_now or eval_now or save_now:
                    self._flush(pending, result)
                    pending = []
                if log_now:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize()
                    self._log(result, interval_steps, time.perf_counter() - interval_start - paused)
                    interval_start, interval_steps, paused = time.perf_counter(), 0, 0.0
                t0 = time.perf_counter()  # evaluation and saving do not count in the throughput
                if eval_now:
                    self.evaluate_all(result)
                if save_now:
                    result.last_checkpoint = self.save()
                paused += time.perf_counter() - t0
            if cfgs.checkpoint.save and self.last_saved_iteration != self.iteration:
                self._flush(pending, result)
                result.last_checkpoint = self.save()
        finally:
            if self.bar is not None:
                self.bar.close()
            self.metrics.close()
        result.iteration, result.consumed_samples = self.iteration, self.consumed_samples
        result.tokens_seen, result.tokens_learned = self.tokens_seen, self.tokens_learned
        result.stopped_by = stopped or "train_iters"
        result.skipped_nonfinite = list(self.guard.skipped)
        return result

    def _nonfinite(self, stats: torch.Tensor) -> None:
        loss, _, gnorm, _ = stats.tolist()
        last = self.last_saved_iteration
        saved = os.path.join(self.cfgs.checkpoint.save, ckpt.iter_dirname(last)) if (
            last is not None and self.cfgs.checkpoint.save) else self.resume_dir
        self.guard.on_nonfinite(self.iteration, loss, gnorm, self.step_applied, saved)

    def _flush(self, pending, result: TrainResult) -> None:
        """Bring pending step statistics to the host (one transfer) and update the counters."""
        if not pending:
            return
        values = torch.stack([s for _, _, s in pending]).tolist()
        for (it, lr, _), (loss, count, gnorm, skipped) in zip(pending, values):
            learned = 0 if skipped else int(round(count))  # a skipped (non-finite) step learned nothing
            self.tokens_learned += learned
            result.iterations.append(it)
            result.losses.append(loss)
            result.lrs.append(lr)
            result.grad_norms.append(gnorm)
            result.learned_per_step.append(learned)
            if self.bar is not None and self.cfgs.training.train_tokens is not None and \
                    self.cfgs.training.train_tokens_count == "learned":
                self.bar.update(learned)

    def _log(self, result: TrainResult, steps: int, elapsed: float) -> None:
        if steps == 0 or not result.losses:
            return
        t = self.cfgs.training
        k = min(steps, len(result.losses))
        losses = result.losses[-k:]
        learned = sum(result.learned_per_step[-k:])
        seen = k * self.gbs * t.seq_length
        tps = seen / elapsed if elapsed > 0 else 0.0
        m = mfu(tps, self.flops_per_token, self.groups.world_size, self.peak)
        rec = {"type": "train", "iteration": self.iteration, "loss": sum(losses) / k, "loss_last": losses[-1],
               "lr": result.lrs[-1], "grad_norm": result.grad_norms[-1], "tokens_seen": self.tokens_seen,
               "tokens_learned": self.tokens_learned, "masked_fraction": 1.0 - learned / seen,
               "consumed_samples": self.consumed_samples, "tokens_per_s": tps, "step_time_s": elapsed / k,
               "mfu": m}
        result.tokens_per_s, result.mfu = tps, m
        if self.groups.rank == 0:
            self._print(format_train(rec))
            self.metrics.write(rec)
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{rec['loss']:.4f}", refresh=False)
