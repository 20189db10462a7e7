"""DataLoader over a GPT dataset with a resumable position (Megatron's MegatronPretrainingSampler rule).

The sampler walks the dataset in order from `consumed_samples`: every global step takes the next
micro_batch_size * data_parallel_size indices and gives data-parallel rank r the slice
[r * micro_batch_size, (r + 1) * micro_batch_size). Sample order is already shuffled inside the dataset (shuffle
index), so index i IS the i-th consumed sample, and the dataset's `consumed_index` for --filter-start-step and
--label-noise is simply i. Resuming with consumed_samples = iteration * global_batch_size continues exactly where the
interrupted run stopped (gradient accumulation: a global batch is several micro batches of the same sampler).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


class PretrainingSampler:
    """Batches of dataset indices for one data-parallel rank, starting at `consumed_samples`."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 data_parallel_rank: int = 0, data_parallel_size: int = 1, drop_last: bool = True):
        if total_samples <= 0:
            raise ValueError(f"no samples to load: total_samples={total_samples}")
        if not 0 <= consumed_samples <= total_samples:
            raise ValueError(f"consumed_samples {consumed_samples} outside [0, {total_samples}]")
        if micro_batch_size <= 0:
            raise ValueError(f"micro_batch_size must be > 0, got {micro_batch_size}")
        if not 0 <= data_parallel_rank < data_parallel_size:
            raise ValueError(f"data_parallel_rank {data_parallel_rank} outside [0, {data_parallel_size})")
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.step = micro_batch_size * data_parallel_size
        self.drop_last = drop_last

    def __len__(self) -> int:
        remaining = self.total_samples - self.consumed_samples
        return remaining // self.step if self.drop_last else -(-remaining // self.step)

    def __iter__(self) -> Iterator[list[int]]:
        lo = self.data_parallel_rank * self.micro_batch_size
        for start in range(self.consumed_samples, self.total_samples, self.step):
            end = min(start + self.step, self.total_samples)
            if end - start < self.step:
                if self.drop_last:
                    return
                # Megatron's last partial global batch: split it evenly-ish over the ranks in order.
                part = list(range(start, end))[lo : lo + self.micro_batch_size]
                if part:
                    yield part
                return
            yield list(range(start + lo, start + lo + self.micro_batch_size))


def collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack the samples' numpy arrays into tensors [micro_batch, seq_length] (scalars -> [micro_batch])."""
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}


def build_pretraining_data_loader(dataset, consumed_samples: int, micro_batch_size: int,
                                  data_parallel_rank: int = 0, data_parallel_size: int = 1, num_workers: int = 0,
                                  total_samples: int | None = None, drop_last: bool = True,
                                  pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader yielding dicts of tensors (tokens, labels, loss_mask, forget, forget_labels, ...)."""
    sampler = PretrainingSampler(len(dataset) if total_samples is None else min(total_samples, len(dataset)),
                                 consumed_samples, micro_batch_size, data_parallel_rank, data_parallel_size, drop_last)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
                                       pin_memory=pin_memory, persistent_workers=num_workers > 0)
