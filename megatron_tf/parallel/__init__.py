"""Megatron-style parallelism on torch.distributed with explicit process groups (no global state).

groups.py (ParallelGroups, build_parallel_groups, rank layout), mappings.py (autograd collectives), layers.py
(Column/Row/VocabParallel layers, sharding helpers), random.py (dropout RNG in TP regions), cross_entropy.py
(vocab-parallel masked cross-entropy).
"""

from .groups import ParallelConfig, ParallelGroups, build_parallel_groups, layout, single_process_groups

__all__ = ["ParallelConfig", "ParallelGroups", "build_parallel_groups", "layout", "single_process_groups"]
