"""Tensor-, pipeline- and data-parallel process groups with Megatron-LM's rank layout, returned as a value.

No module-level state: `build_parallel_groups` returns a `ParallelGroups` that the caller passes to whatever needs it.

Layout (Megatron's default order "tp-dp-pp": TP ranks adjacent, then DP, then PP):

    rank = pp_rank * (dp * tp) + dp_rank * tp + tp_rank,      dp = world_size // (tp * pp)

Worked example, world 8, tp 2, pp 2 (so dp 2):

    rank:     0  1  2  3  4  5  6  7
    tp_rank:  0  1  0  1  0  1  0  1
    dp_rank:  0  0  1  1  0  0  1  1
    pp_rank:  0  0  0  0  1  1  1  1
    TP groups [0,1] [2,3] [4,5] [6,7]    DP groups [0,2] [1,3] [4,6] [5,7]    PP groups [0,4] [1,5] [2,6] [3,7]
    model-parallel (tp x pp, same dp) groups [0,1,4,5] [2,3,6,7]
    embedding groups (first + last stage, same dp and tp) = the PP groups here: [0,4] [1,5] [2,6] [3,7]

`layout(world_size, tp, pp)` computes these lists without torch.distributed (tested directly); the builder creates
every group on every rank in the same order (torch.distributed.new_group is collective) and keeps the handles of the
groups this rank belongs to (groups of a single rank get no communicator). A group handle of `None` means "size 1,
no communication" throughout megatron_tf (the convention of megatron_tf/ops/row_stats.group_size_and_rank), so a
single process needs no torch.distributed at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.distributed as dist

from megatron_tf.config.cli import opt


@dataclass
class ParallelConfig:
    """Model parallelism (data parallelism takes the remaining ranks)."""

    tensor_model_parallel_size: int = field(default=1, metadata=opt("Tensor model parallel size (TP)."))
    pipeline_model_parallel_size: int = field(default=1, metadata=opt("Pipeline model parallel size (PP)."))

    def __post_init__(self):
        for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ParallelConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class RankLayout:
    """Every group of the layout as lists of global ranks (index i of `tp` is TP group i, etc.)."""

    world_size: int
    tp_size: int
    pp_size: int
    dp_size: int
    tp: list[list[int]]
    dp: list[list[int]]
    pp: list[list[int]]
    mp: list[list[int]]  # tensor x pipeline (all model-parallel ranks of one data-parallel replica)
    embedding: list[list[int]]  # first and last pipeline stage of each pipeline (one rank when pp == 1)

    def coords(self, rank: int) -> tuple[int, int, int]:
        """(tp_rank, dp_rank, pp_rank) of a global rank."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside world of size {self.world_size}")
        tp_rank = rank % self.tp_size
        dp_rank = (rank // self.tp_size) % self.dp_size
        pp_rank = rank // (self.tp_size * self.dp_size)
        return tp_rank, dp_rank, pp_rank

    def rank_of(self, tp_rank: int, dp_rank: int, pp_rank: int) -> int:
        return pp_rank * (self.dp_size * self.tp_size) + dp_rank * self.tp_size + tp_rank


def layout(world_size: int, tp_size: int, pp_size: int) -> RankLayout:
    """Megatron's tp-dp-pp rank layout for `world_size` ranks; raises if tp * pp does not divide the world."""
    if tp_size < 1 or pp_size < 1 or world_size < 1:
        raise ValueError(f"sizes must be >= 1: world {world_size}, tp {tp_size}, pp {pp_size}")
    if world_size % (tp_size * pp_size):
        raise ValueError(f"world size {world_size} is not divisible by tensor ({tp_size}) x pipeline ({pp_size}) "
                         f"model parallel size {tp_size * pp_size}")
    dp = world_size // (tp_size * pp_size)

    def r(t, d, p):
        return p * dp * tp_size + d * tp_size + t

    tp_groups = [[r(t, d, p) for t in range(tp_size)] for p in range(pp_size) for d in range(dp)]
    dp_groups = [[r(t, d, p) for d in range(dp)] for p in range(pp_size) for t in range(tp_size)]
    pp_groups = [[r(t, d, p) for p in range(pp_size)] for d in range(dp) for t in range(tp_size)]
    mp_groups = [[r(t, d, p) for p in range(pp_size) for t in range(tp_size)] for d in range(dp)]
    emb_groups = [sorted({g[0], g[-1]}) for g in pp_groups]
    return RankLayout(world_size, tp_size, pp_size, dp, tp_groups, dp_groups, pp_groups, mp_groups, emb_groups)


@dataclass
class ParallelGroups:
    """This rank's coordinates and group handles (None = size 1, no communication)."""

    rank: int
    world_size: int
    tp_size: int
    pp_size: int
    dp_size: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    tp_group: object | None
    pp_group: object | None
    dp_group: object | None
    mp_group: object | None
    embedding_group: object | None
    tp_ranks: list[int]
    pp_ranks: list[int]
    dp_ranks: list[int]
    mp_ranks: list[int]
    embedding_ranks: list[int]

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def next_stage_rank(self) -> int | None:
        """Global rank of the next pipeline stage (same tp/dp coordinates), None on the last stage."""
        return None if self.is_last_stage else self.pp_ranks[self.pp_rank + 1]

    @property
    def prev_stage_rank(self) -> int | None:
        return None if self.is_first_stage else self.pp_ranks[self.pp_rank - 1]

    @property
    def in_embedding_group(self) -> bool:
        return self.rank in self.embedding_ranks and len(self.embedding_ranks) > 1


def single_process_groups() -> ParallelGroups:
    """Groups of a run without torch.distributed (every size 1, every handle None)."""
    return ParallelGroups(0, 1, 1, 1, 1, 0, 0, 0, None, None, None, None, None, [0], [0], [0], [0], [0])


def build_parallel_groups(tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1,
                          backend: str | None = None) -> ParallelGroups:
    """Create all groups (collective: every rank must call this with the same sizes) and return this rank's.

    Without an initialised torch.distributed, only tp = pp = 1 is allowed and `single_process_groups()` is returned.
    `backend` is passed to new_group (None: the default process group's backend).
    """
    tp, pp = tensor_model_parallel_size, pipeline_model_parallel_size
    if not (dist.is_available() and dist.is_initialized()):
        if tp == 1 and pp == 1:
            return single_process_groups()
        raise RuntimeError(f"tensor ({tp}) / pipeline ({pp}) parallelism needs torch.distributed to be initialised")
    world, rank = dist.get_world_size(), dist.get_rank()
    lay = layout(world, tp, pp)
    tp_rank, dp_rank, pp_rank = lay.coords(rank)

    def build(groups: list[list[int]]):
        mine_handle, mine = None, None
        for ranks in groups:  # same order on every rank: new_group is collective over the whole world
            # groups of one rank get no communicator (handle None = size 1)
            handle = dist.new_group(ranks, backend=backend) if len(ranks) > 1 else None
            if rank in ranks:
                mine_handle, mine = handle, ranks
        if mine is None:
            raise AssertionError(f"rank {rank} in no group of {groups}")
        return mine_handle, mine

    tp_group, tp_ranks = build(lay.tp)
    dp_group, dp_ranks = build(lay.dp)
    pp_group, pp_ranks = build(lay.pp)
    mp_group, mp_ranks = build(lay.mp)
    emb_group, emb_ranks = build(lay.embedding)  # one rank each (no handle) when pp == 1
    return ParallelGroups(rank, world, tp, pp, lay.dp_size, tp_rank, pp_rank, dp_rank, tp_group, pp_group, dp_group,
                          mp_group, emb_group, tp_ranks, pp_ranks, dp_ranks, mp_ranks, emb_ranks)


def group_size(group) -> int:
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def group_rank(group) -> int:
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 0
    return dist.get_rank(group)
