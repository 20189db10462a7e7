"""Forward/backward schedules over microbatches: no pipelining, and pipelined 1F1B (PipeDream-Flush).

Why our own and not torch.distributed.pipelining: the loss here is normalised by a global token count known
before the first backward, the last stage may take the one-pass fused cross-entropy gradient, evaluation needs a
forward-only pass, and DDP / DeepSpeed gradient reduction must fire once after the last microbatch. The schedule is
~100 lines of Megatron-LM's non-interleaved 1F1B (Narayanan et al. 2021, section 2.2) on torch.distributed P2P ops
(`batch_isend_irecv`: NCCL on GPU, gloo on CPU).

1F1B with 4 stages and 8 microbatches (F3 = forward of microbatch 3, B3 its backward, time runs right):

    stage 0:  F0 F1 F2 F3 B0 F4 B1 F5 B2 F6 B3 F7 B4 B5 B6 B7
    stage 1:     F0 F1 F2 B0 F3 B1 F4 B2 F5 B3 F6 B4 F7 B5 B6 B7
    stage 2:        F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 F6 B5 F7 B6 B7
    stage 3:           F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5 F6 B6 F7 B7
              |warmup |  steady state: one forward, one backward  | cooldown

Stage r runs min(pp - r - 1, M) warmup forwards, then alternates, then drains the remaining backwards, so at most
pp - r microbatches' activations are alive on stage r (GPipe keeps all M). Bubble fraction (pp - 1) / (M + pp - 1).

Callbacks (the trainer's):
    forward_step(i, input_tensor) -> output       first stage: input_tensor is None. Non-last stages return the
                                                  hidden states to send on; the last stage returns a "backward
                                                  handle" (tensor, grad or None) for torch.autograd.backward.
    backward contexts: `no_sync(i)` returns a context manager entered around microbatch i's forward AND backward
                       when there is no pipelining (DDP's no_sync for all but the last microbatch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.distributed as dist


class P2P:
    """Sends/receives activations between adjacent pipeline stages (fixed shape and dtype per run)."""

    def __init__(self, prev_rank: int | None, next_rank: int | None, shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device):
        self.prev, self.next = prev_rank, next_rank
        self.shape, self.dtype, self.device = tuple(shape), dtype, device

    def _buf(self) -> torch.Tensor:
        return torch.empty(self.shape, dtype=self.dtype, device=self.device)

    def _check(self, t: torch.Tensor, what: str) -> torch.Tensor:
        if tuple(t.shape) != self.shape:
            raise RuntimeError(f"pipeline {what}: tensor of shape {tuple(t.shape)}, expected {self.shape}")
        return t.detach().to(self.dtype).contiguous()

    def exchange(self, send_next: torch.Tensor | None = None, send_prev: torch.Tensor | None = None,
                 recv_prev: bool = False, recv_next: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One batch of P2P ops; returns (tensor from prev, tensor from next). No-ops at the pipeline ends."""
        ops, from_prev, from_next = [], None, None
        if self.prev is not None:
            if send_prev is not None:
                ops.append(dist.P2POp(dist.isend, self._check(send_prev, "send backward"), self.prev))
            if recv_prev:
                from_prev = self._buf()
                ops.append(dist.P2POp(dist.irecv, from_prev, self.prev))
        if self.next is not None:
            if send_next is not None:
                ops.append(dist.P2POp(dist.isend, self._check(send_next, "send forward"), self.next))
            if recv_next:
                from_next = self._buf()
                ops.append(dist.P2POp(dist.irecv, from_next, self.next))
        if ops:
            for req in dist.batch_isend_irecv(ops):
                req.wait()
        return from_prev, from_next

    def recv_forward(self):
        return self.exchange(recv_prev=True)[0]

    def send_forward(self, t):
        self.exchange(send_next=t)

    def recv_backward(self):
        return self.exchange(recv_next=True)[1]

    def send_backward(self, t):
        self.exchange(send_prev=t)

    def send_forward_recv_backward(self, t):
        return self.exchange(send_next=t, recv_next=True)[1]

    def send_backward_recv_forward(self, t):
        return self.exchange(send_prev=t, recv_prev=True)[0]


def backward_step(input_tensor: torch.Tensor | None, output, output_grad: torch.Tensor | None,
                  is_last: bool) -> torch.Tensor | None:
    """Back-propagate one microbatch; returns the gradient w.r.t. the stage input (None on the first stage)."""
    if is_last:
        tensor, grad = output
    else:
        tensor, grad = output, output_grad
    torch.autograd.backward(tensor, grad_tensors=grad)
    return None if input_tensor is None else input_tensor.grad


def _prep_input(x: torch.Tensor | None, forward_only: bool) -> torch.Tensor | None:
    if x is not None and not forward_only:
        x.requires_grad_(True)
    return x


def forward_backward_no_pipelining(forward_step: Callable, num_microbatches: int, forward_only: bool = False,
                                   no_sync: Callable[[int], contextlib.AbstractContextManager] | None = None) -> None:
    """Single stage: forward + backward per microbatch; no_sync(i) wraps microbatch i (DDP: all but the last)."""
    for i in range(num_microbatches):
        ctx = no_sync(i) if no_sync is not None else contextlib.nullcontext()
        with ctx:
            out = forward_step(i, None)
            if not forward_only:
                backward_step(None, out, None, True)


def forward_backward_1f1b(forward_step: Callable, num_microbatches: int, p2p: P2P, pp_rank: int, pp_size: int,
                          forward_only: bool = False) -> None:
    """Megatron-LM's non-interleaved 1F1B schedule (see the module docstring)."""
    is_last = pp_rank == pp_size - 1
    m = num_microbatches
    warmup = m if forward_only else min(pp_size - pp_rank - 1, m)
    remaining = m - warmup
    inputs: list = []
    outputs: list = []

    for i in range(warmup):
        x = _prep_input(p2p.recv_forward(), forward_only)
        out = forward_step(i, x)
        p2p.send_forward(None if is_last else out)
        if not forward_only:
            inputs.append(x)
            outputs.append(out)

    x = _prep_input(p2p.recv_forward(), forward_only) if remaining > 0 else None
    for i in range(remaining):
        last_iteration = i == remaining - 1
        out = forward_step(warmup + i, x)
        send = None if is_last else out
        if forward_only:
            p2p.send_forward(send)
            if not last_iteration:
                x = _prep_input(p2p.recv_forward(), forward_only)
            continue
        grad = p2p.send_forward_recv_backward(send)
        inputs.append(x)
        outputs.append(out)
        x_b, out_b = inputs.pop(0), outputs.pop(0)
        dx = backward_step(x_b, out_b, grad, is_last)
        if last_iteration:
            x = None
            p2p.send_backward(dx)
        else:
            x = _prep_input(p2p.send_backward_recv_forward(dx), forward_only)

    if not forward_only:
        for _ in range(warmup):
            x_b, out_b = inputs.pop(0), outputs.pop(0)
            grad = p2p.recv_backward()
            dx = backward_step(x_b, out_b, grad, is_last)
            p2p.send_backward(dx)
