"""RNG for dropout inside tensor-parallel regions (Megatron's model-parallel RNG tracker, as an object).

Two kinds of dropout exist under tensor parallelism:
- on activations that are replicated across TP ranks (hidden dropout without sequence parallelism): every TP rank
  must draw the SAME mask, so it uses the default generator, which the trainer seeds identically on the ranks of a
  TP group (Megatron: seed + 100 * pp_rank);
- on activations that are partitioned (attention probabilities of this rank's heads; anything under sequence
  parallelism): every TP rank must draw a DIFFERENT mask, so it runs inside `tracker.fork()`, which swaps in a
  generator state seeded with seed + 2718 + tp_rank (Megatron's offset) and swaps the default state back afterwards.

The tracker belongs to a model instance (no module-level state). Dropout defaults to 0, in which case nothing here
runs. `states()` / `set_states()` let activation recomputation replay the same masks.
"""

from __future__ import annotations

import contextlib

import torch

TP_SEED_OFFSET = 2718  # Megatron-LM's tensor-model-parallel seed offset


class ModelParallelRNG:
    """Per-device generator states for dropout in tensor-parallel regions."""

    def __init__(self, seed: int, tp_rank: int = 0):
        self.seed = int(seed) + TP_SEED_OFFSET + int(tp_rank)
        self._states: dict[str, torch.Tensor] = {}

    @staticmethod
    def _key(device: torch.device) -> str:
        return f"{device.type}:{device.index if device.index is not None else 0}" if device.type == "cuda" else "cpu"

    def _initial_state(self, device: torch.device) -> torch.Tensor:
        g = torch.Generator(device=device)
        g.manual_seed(self.seed)
        return g.get_state()

    @contextlib.contextmanager
    def fork(self, device: torch.device):
        """Run the body with this tracker's generator state for `device`; the default state is restored after."""
        device = torch.device(device)
        key = self._key(device)
        if device.type == "cuda":
            idx = device.index if device.index is not None else torch.cuda.current_device()
            get, put = (lambda: torch.cuda.get_rng_state(idx)), (lambda s: torch.cuda.set_rng_state(s, idx))
        elif device.type == "cpu":
            get, put = torch.get_rng_state, torch.set_rng_state
        else:
            raise NotImplementedError(f"ModelParallelRNG: unsupported device type {device.type}")
        if key not in self._states:
            self._states[key] = self._initial_state(device)
        original = get()
        put(self._states[key])
        try:
            yield
        finally:
            self._states[key] = get()
            put(original)

    def states(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self._states.items()}

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self._states = {k: v.clone() for k, v in states.items()}
