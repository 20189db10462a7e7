"""Reference language models: text -> tokens with character spans -> residual stream after block L.

`ReferenceLM` is the adapter interface the SAE pipeline needs:

    tokenize_with_offsets(text) -> (ids, [(start, end), ...])   no BOS; Python-string character spans
    residual_batch([ids, ...])   -> [tensor [T_i, d_model], ...] the residual stream after block `layer`
    bos_id, d_model, num_layers, layer, context_size, describe()

The caller (pipeline.py) puts `bos_id` in front of every window it feeds, and drops that position from every
statistic and label.

Implemented here:
- `HFReferenceLM`: a Hugging Face causal LM directory with a fast tokenizer (tokenizer.json; character offsets),
  loaded with `local_files_only=True`.
- `CallableReferenceLM`: any megatron_tf `Tokenizer` (they all have `tokenize_with_offsets`) plus a callable
  `residual_fn(ids [B, T] LongTensor, attention_mask [B, T]) -> [B, T, d_model]`.
- `megatron_tf_reference_lm`: a checkpoint of this project's trainer (TP/PP shards merged), as a
  `CallableReferenceLM` over the run's tokenizer and the output of block L (model/taps.py).

Which tensor is "after block L": the output of decoder block L (0-based), i.e. the residual stream that block L+1
reads; Gemma Scope's `blocks.L.hook_resid_post`. In Hugging Face models that is `hidden_states[L + 1]` of
`output_hidden_states=True` (hidden_states[0] is the embedding output), except for the last block, whose
`hidden_states[num_layers]` has the final norm applied. `HFReferenceLM` therefore reads the block's output with a
forward hook on block L and stops the forward pass there (blocks after L are not computed: 10 of Gemma-2-9B's 42
blocks for layer 31). Tested against `hidden_states[L + 1]` and against an unpadded single-sequence forward.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch

from ...utils.logging import get_logger

log = get_logger(__name__)


@runtime_checkable
class ReferenceLM(Protocol):
    bos_id: int | None
    d_model: int
    num_layers: int
    layer: int
    context_size: int  # tokens per window, BOS included

    def tokenize_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]: ...

    def residual_batch(self, ids: Sequence[Sequence[int]]) -> list[torch.Tensor]: ...

    def describe(self) -> dict: ...


class _StopForward(Exception):
    """Raised by the block-L hook once it has the residual: the rest of the network is not run."""


def find_blocks(model: torch.nn.Module, num_layers: int) -> torch.nn.ModuleList:
    """The model's list of decoder blocks: the first `nn.ModuleList` of length `num_layers` in module order
    (`model.layers` for Llama/Gemma/Mistral/Qwen, `transformer.h` for GPT-2, ...)."""
    for _, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == num_layers:
            return mod
    raise ValueError(f"cannot find the {num_layers} decoder blocks of {type(model).__name__} (no nn.ModuleList of "
                     "that length)")


def _pad(ids: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    lens = [len(x) for x in ids]
    t = max(lens)
    out = torch.full((len(ids), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), t), dtype=torch.long)
    for i, x in enumerate(ids):
        out[i, : len(x)] = torch.as_tensor(list(x), dtype=torch.long)
        mask[i, : len(x)] = 1
    return out.to(device), mask.to(device)


def _dtype(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(table)}")
    return table[name]


class HFReferenceLM:
    """A Hugging Face causal LM directory (config.json + weights + a fast tokenizer), local files only.

    Windows are right-padded into batches with an attention mask; a causal model's outputs at real positions do not
    depend on the padding after them (tested).
    """

    def __init__(self, path: str, layer: int, device: str = "cpu", dtype: str = "float32",
                 context_size: int = 1024, attn_implementation: str | None = None, bos: str = "auto"):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"reference LM directory {path} has no config.json (expected a Hugging Face "
                                    "causal LM directory saved with save_pretrained)")
        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if not getattr(self.tokenizer, "is_fast", False) or not hasattr(self.tokenizer, "backend_tokenizer"):
            raise ValueError(f"{path}: the tokenizer is not a fast tokenizer (no tokenizer.json); character offsets "
                             "are needed to transfer labels")
        self._backend = self.tokenizer.backend_tokenizer
        self._backend.encode_special_tokens = True  # "<bos>" inside a document is text, not a control token
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        self.num_layers = int(text_cfg.num_hidden_layers)
        self.d_model = int(text_cfg.hidden_size)
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"--hook-layer {layer} outside the {self.num_layers} blocks of {path}")
        self.layer = int(layer)
        max_pos = getattr(text_cfg, "max_position_embeddings", None)
        if max_pos is not None and context_size > max_pos:
            raise ValueError(f"--context-size {context_size} exceeds the model's max_position_embeddings {max_pos}")
        self.context_size = int(context_size)
        kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=_dtype(dtype), **kw)
        self.model.to(device).eval()
        self.device, self.dtype = device, dtype
        self.blocks = find_blocks(self.model, self.num_layers)
        if bos == "auto":
            self.bos_id = self.tokenizer.bos_token_id
            if self.bos_id is None:  # GPT-2 convention (as TransformerLens/sae-lens): <|endoftext|> starts a text
                self.bos_id = self.tokenizer.eos_token_id
            if self.bos_id is None:
                raise ValueError(f"{path}: the tokenizer has no BOS or EOS token; pass --bos none to run without one")
        elif bos == "none":
            self.bos_id = None
        else:
            self.bos_id = int(bos)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.bos_id if self.bos_id is not None else 0))

    def tokenize_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self._backend.encode(text, add_special_tokens=False)
        return list(enc.ids), [(int(a), int(b)) for a, b in enc.offsets]

    @torch.inference_mode()
    def residual_batch(self, ids: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        if not ids:
            return []
        x, mask = _pad(ids, self.pad_id, self.device)
        captured: dict[str, torch.Tensor] = {}

        def hook(_mod, _inp, out):
            captured["h"] = out[0] if isinstance(out, tuple) else out
            raise _StopForward

        handle = self.blocks[self.layer].register_forward_hook(hook)
        try:
            self.model(input_ids=x, attention_mask=mask, use_cache=False)
        except _StopForward:
            pass
        finally:
            handle.remove()
        h = captured["h"]
        return [h[i, : len(s)] for i, s in enumerate(ids)]

    def describe(self) -> dict:
        return {"type": "hf", "path": os.path.abspath(self.path), "layer": self.layer, "dtype": self.dtype,
                "context_size": self.context_size, "bos_id": self.bos_id, "hook": "output of block L (resid_post)"}


class CallableReferenceLM:
    """A megatron_tf tokenizer plus a residual function: the adapter for models that are not Hugging Face ones.

    `residual_fn(ids [B, T], attention_mask [B, T]) -> [B, T, d_model]` must return the residual stream after block
    `layer` (for a megatron_tf GPT: the output of `decoder.layers[layer]`).
    """

    def __init__(self, tokenizer, residual_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, d_model: int,
                 num_layers: int, layer: int, bos_id: int | None, context_size: int = 1024, pad_id: int = 0,
                 name: str = "callable", device: str = "cpu"):
        self.tokenizer, self.residual_fn = tokenizer, residual_fn
        self.d_model, self.num_layers, self.layer = int(d_model), int(num_layers), int(layer)
        self.bos_id, self.context_size, self.pad_id = bos_id, int(context_size), int(pad_id)
        self.name, self.device = name, device

    def tokenize_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        return self.tokenizer.tokenize_with_offsets(text)

    @torch.inference_mode()
    def residual_batch(self, ids: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        if not ids:
            return []
        x, mask = _pad(ids, self.pad_id, self.device)
        h = self.residual_fn(x, mask)
        return [h[i, : len(s)] for i, s in enumerate(ids)]

    def describe(self) -> dict:
        fp = getattr(self.tokenizer, "fingerprint", None)
        return {"type": "callable", "name": self.name, "layer": self.layer, "context_size": self.context_size,
                "bos_id": self.bos_id, "tokenizer_fingerprint": fp}


def is_megatron_tf_checkpoint(path: str) -> bool:
    """A trainer --save directory (a `latest` file) or one of its iter_* directories (checkpoint/format.py)."""
    from ...checkpoint.format import resolve_checkpoint_dir

    if not os.path.isdir(path):
        return False
    try:
        return resolve_checkpoint_dir(path) is not None
    except Exception:  # a `latest` naming a missing directory is still a (broken) checkpoint: say so when loading
        return os.path.isfile(os.path.join(path, "latest"))


def megatron_tf_reference_lm(path: str, layer: int, *, device: str = "cpu", dtype: str = "float32",
                             context_size: int = 1024, bos: str = "auto") -> CallableReferenceLM:
    """A megatron_tf checkpoint as the reference LM: TP/PP shards merged into one model
    (megatron_tf.checkpoint.load_model), the run's own tokenizer (character offsets from
    `tokenize_with_offsets`), the residual stream after block `layer` read with model/taps.LayerTap (later blocks
    not run). BOS (`--bos auto`): the tokenizer's <|endoftext|>, the separator the model saw before every document
    in training. Windows are right-padded (causal attention: padding never reaches a real position; tested).
    `context_size` may not exceed the run's --seq-length (RoPE is not asked to extrapolate)."""
    from ...checkpoint.load import load_model
    from ...model.taps import LayerTap

    model, _, tcfg, tok, run = load_model(path, device=device, dtype=_dtype(dtype))
    if tok is None:
        raise FileNotFoundError(f"{path}: the run's tokenizer file ({tcfg.tokenizer_model}) is gone; the "
                                "reference LM needs it to map labels back to characters")
    num_layers = model.config.num_layers
    if not 0 <= layer < num_layers:
        raise ValueError(f"--hook-layer {layer} outside the {num_layers} blocks of {path}")
    seq = run.seq_length
    if context_size > seq:
        raise ValueError(f"--context-size {context_size} exceeds the checkpoint's --seq-length {seq} ({path})")
    if bos == "auto":
        bos_id = tok.eod
    elif bos == "none":
        bos_id = None
    else:
        bos_id = int(bos)
    tap = LayerTap(model, [layer])

    def residual_fn(ids: torch.Tensor, _mask: torch.Tensor) -> torch.Tensor:
        return tap(ids)[layer]

    return CallableReferenceLM(tok, residual_fn, d_model=model.config.hidden_size, num_layers=num_layers,
                               layer=layer, bos_id=bos_id, context_size=context_size, pad_id=tok.pad,
                               name=f"megatron_tf:{os.path.abspath(path)}", device=device)


def load_reference_lm(path: str, layer: int, *, device: str = "cpu", dtype: str = "float32",
                      context_size: int = 1024, attn_implementation: str | None = None, bos: str = "auto"):
    """Open a reference LM: a Hugging Face directory (`HFReferenceLM`) or a megatron_tf checkpoint
    (`megatron_tf_reference_lm`)."""
    if is_megatron_tf_checkpoint(path):  # first: an iter_* directory has a config.json too
        return megatron_tf_reference_lm(path, layer, device=device, dtype=dtype, context_size=context_size, bos=bos)
    if os.path.isfile(os.path.join(path, "config.json")):
        return HFReferenceLM(path, layer, device=device, dtype=dtype, context_size=context_size,
                             attn_implementation=attn_implementation, bos=bos)
    raise FileNotFoundError(f"reference LM {path}: expected a Hugging Face causal LM directory (config.json, "
                            "weights, tokenizer.json) or a megatron_tf checkpoint (a --save directory with `latest`, "
                            "or an iter_* directory)")
