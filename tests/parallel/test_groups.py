"""Process groups: Megatron's tp-dp-pp rank layout (pure) and the groups built on gloo (2 ranks)."""

import pytest
import torch

from megatron_tf.parallel.groups import ParallelConfig, build_parallel_groups, layout, single_process_groups
from tests.dist_utils import init_gloo, run_distributed


def test_layout_worked_example_world8_tp2_pp2():
    # the example of groups.py and docs/model.md, written out by hand
    lay = layout(8, 2, 2)
    assert lay.dp_size == 2
    assert lay.tp == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert lay.dp == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert lay.pp == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert lay.mp == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert lay.embedding == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert lay.coords(5) == (1, 0, 1)  # tp_rank, dp_rank, pp_rank
    assert lay.coords(6) == (0, 1, 1)


def test_layout_partitions_every_rank_once():
    for world, tp, pp in [(1, 1, 1), (8, 1, 1), (8, 8, 1), (8, 1, 8), (12, 2, 3), (16, 4, 2), (24, 2, 4)]:
        lay = layout(world, tp, pp)
        for groups, size in ((lay.tp, tp), (lay.dp, lay.dp_size), (lay.pp, pp), (lay.mp, tp * pp)):
            assert sorted(r for g in groups for r in g) == list(range(world))
            assert all(len(g) == size for g in groups)
        for rank in range(world):
            t, d, p = lay.coords(rank)
            assert rank == p * lay.dp_size * tp + d * tp + t == lay.rank_of(t, d, p)
            assert lay.tp[p * lay.dp_size + d][t] == rank
            assert lay.pp[d * tp + t][p] == rank
        # embedding groups: first and last stage of each pipeline
        assert lay.embedding == [sorted({g[0], g[-1]}) for g in lay.pp]


def test_layout_rejects_indivisible_world():
    with pytest.raises(ValueError, match="world size 6 is not divisible by tensor \\(4\\) x pipeline \\(1\\)"):
        layout(6, 4, 1)
    with pytest.raises(ValueError):
        ParallelConfig(tensor_model_parallel_size=0)


def test_single_process_groups_without_distributed():
    g = build_parallel_groups(1, 1)
    assert g == single_process_groups()
    assert g.tp_group is None and g.is_first_stage and g.is_last_stage and not g.in_embedding_group
    with pytest.raises(RuntimeError, match="needs torch.distributed"):
        build_parallel_groups(2, 1)


def _members(group, rank):
    """All global ranks of `group`, learnt by communication (all-reduce of one-hot vectors)."""
    import torch.distributed as dist

    v = torch.zeros(2)
    v[rank] = 1
    if group is not None:
        dist.all_reduce(v, group=group)
    return [i for i in range(2) if v[i] == 1]


def _worker(rank, world, port):
    init_gloo(rank, world, port)
    g = build_parallel_groups(2, 1)  # TP over both ranks
    assert (g.tp_size, g.pp_size, g.dp_size, g.tp_rank, g.pp_rank, g.dp_rank) == (2, 1, 1, rank, 0, 0)
    assert _members(g.tp_group, rank) == [0, 1] and g.tp_ranks == [0, 1]
    assert g.dp_group is None and g.pp_group is None and g.embedding_group is None
    assert g.is_first_stage and g.is_last_stage and g.next_stage_rank is None

    g = build_parallel_groups(1, 2)  # PP over both ranks
    assert (g.tp_size, g.pp_size, g.dp_size, g.pp_rank) == (1, 2, 1, rank)
    assert _members(g.pp_group, rank) == [0, 1] and _members(g.embedding_group, rank) == [0, 1]
    assert _members(g.mp_group, rank) == [0, 1]
    assert g.tp_group is None and g.dp_group is None and g.in_embedding_group
    assert g.next_stage_rank == (1 if rank == 0 else None) and g.prev_stage_rank == (0 if rank == 1 else None)

    g = build_parallel_groups(1, 1)  # pure data parallelism
    assert (g.dp_size, g.dp_rank) == (2, rank)
    assert _members(g.dp_group, rank) == [0, 1] and g.tp_group is None and g.mp_group is None


def test_groups_on_two_ranks():
    run_distributed(_worker, 2)
