"""Hidden states of a whole GPTModel at chosen layers, read with forward hooks; later blocks are not computed.

    tap = LayerTap(model, [-1, 3])          # -1: the embedding output; l in [0, L): the output of decoder block l
    states = tap(ids [b, s])                # {-1: [b, s, h], 3: [b, s, h]}, float32

"The output of block l" is the residual stream block l + 1 reads (Gemma Scope's `blocks.l.hook_resid_post`). Hooks
sit on `model.embedding` and `model.decoder.layers[str(l)]`; the hook of the deepest requested layer raises to stop
the forward pass, so the blocks after it, the final norm and the output layer are never run. The model code is
untouched. Users: the biLM classifier's features (labeling/classifier/features.py) and the SAE labeler's reference LM
adapter for megatron_tf checkpoints (labeling/sae/reference_lm.py).
"""

from __future__ import annotations

import contextlib

import torch


class _Stop(Exception):
    """Raised by the deepest hook once every requested layer is captured."""


class LayerTap:
    """Runs a GPTModel up to the deepest of `layers` and returns their hidden states [b, s, h] (float32)."""

    def __init__(self, model: torch.nn.Module, layers: list[int]):
        if not layers:
            raise ValueError("LayerTap needs at least one layer")
        num_layers = len(model.decoder.layers)
        lo, hi = model.layer_range
        if (lo, hi) != (0, model.config.num_layers) or not model.pre_process:
            raise ValueError(f"LayerTap needs the whole model (one pipeline stage); got layers [{lo}, {hi})")
        bad = [layer for layer in layers if not -1 <= layer < num_layers]
        if bad:
            raise ValueError(f"layers {bad} outside [-1, {num_layers}) (-1 = embedding output, l = output of block "
                             f"l of {num_layers})")
        self.model = model
        self.layers = sorted(set(int(x) for x in layers))

    def _module(self, layer: int) -> torch.nn.Module:
        return self.model.embedding if layer < 0 else self.model.decoder.layers[str(layer)]

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> dict[int, torch.Tensor]:
        got: dict[int, torch.Tensor] = {}
        deepest = self.layers[-1]

        def make_hook(layer):
            def hook(_mod, _inp, out):
                got[layer] = out.transpose(0, 1).float()  # [s, b, h] -> [b, s, h]
                if layer == deepest:
                    raise _Stop

            return hook

        handles = [self._module(layer).register_forward_hook(make_hook(layer)) for layer in self.layers]
        ac = (torch.autocast(ids.device.type, dtype=autocast_dtype) if autocast_dtype is not None
              else contextlib.nullcontext())
        try:
            with ac:
                self.model(input_ids=ids)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        return got
