"""The MLP: SwiGLU (default) or squared ReLU, no biases, tensor-parallel (fc1 column-, fc2 row-parallel).

    swiglu: y = W2 (silu(W_gate x) * (W_up x))   (Shazeer 2020), linear_fc1.weight = [W_gate; W_up]  [2f, h]
    relu2:  y = W2 relu(W1 x)^2                  (So et al. 2021, "Primer"),  linear_fc1.weight = W1  [f, h]

linear_fc1 declares the (gate, up) blocks so TP rank r holds [W_gate rows of shard r; W_up rows of shard r] while
the full TP=1 weight stays [W_gate; W_up] (the order Megatron uses and Llama's gate_proj/up_proj split).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megatron_tf.parallel.layers import ColumnParallelLinear, RowParallelLinear


class MLP(nn.Module):
    def __init__(self, config, tp_group=None, device=None):
        super().__init__()
        h, f = config.hidden_size, config.ffn_hidden_size
        self.swiglu = config.activation == "swiglu"
        fc1_out = 2 * f if self.swiglu else f
        self.linear_fc1 = ColumnParallelLinear(h, fc1_out, tp_group, sequence_parallel=config.sequence_parallel,
                                               output_chunks=(f, f) if self.swiglu else (f,), device=device)
        self.linear_fc2 = RowParallelLinear(f, h, tp_group, input_is_parallel=True,
                                            sequence_parallel=config.sequence_parallel, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear_fc1(x)
        if self.swiglu:
            gate, up = y.chunk(2, dim=-1)
            y = F.silu(gate) * up
        else:
            y = torch.square(F.relu(y))
        return self.linear_fc2(y)
