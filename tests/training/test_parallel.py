"""Parallel training equals one process: TP=2 with sequence parallelism, PP=2 with tied embeddings (1F1B, embedding
group), DP=2 (DDP) on 2 gloo processes; TP=2 x PP=2 (+SP) and PP=2 x DP=2 (explicit DP all-reduce) on 4. Same loss curve
and gradient norms (global norm over TP/PP: duplicates counted once) as the single-process run over 4 steps with 4
microbatches, and the same final weights (checkpoint shards merged by megatron_tf.checkpoint.load_model)."""

import json

import pytest
import torch

from megatron_tf.checkpoint import load_model
from megatron_tf.training import pretrain
from tests.dist_utils import init_gloo, run_distributed
from tests.training.synth import make_data, tiny_args

pytestmark = pytest.mark.filterwarnings("ignore:.*meta.json not found")
TIED = ["--no-untie-embeddings-and-output-weights"]
RUNS_2 = {
    "tp2_sp": ["--tensor-model-parallel-size", "2", "--sequence-parallel"],
    "pp2_tied": ["--pipeline-model-parallel-size", "2", *TIED],
    "dp2": [],
}
RUNS_4 = {
    "tp2_pp2_sp": ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2", "--sequence-parallel"],
    "pp2_dp2_tied": ["--pipeline-model-parallel-size", "2", *TIED],
}


def _worker(rank, world, port, prefix, runs, tmp):
    init_gloo(rank, world, port)
    out = {}
    for name, extra in runs.items():
        r = pretrain(tiny_args(prefix, extra=[*extra, "--save", f"{tmp}/{name}"]))
        out[name] = {"losses": r.losses, "grad_norms": r.grad_norms, "learned": r.learned_per_step}
    if rank == 0:
        with open(f"{tmp}/result_{world}.json", "w") as f:
            json.dump(out, f)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parallel")
    prefix = make_data(tmp)
    refs = {}
    for tied in (False, True):
        extra = (TIED if tied else []) + ["--save", f"{tmp}/ref_{int(tied)}"]
        r = pretrain(tiny_args(prefix, extra=extra))
        refs[tied] = (r, load_model(f"{tmp}/ref_{int(tied)}").model.state_dict())
    return tmp, prefix, refs


def _compare(tmp, refs, runs, results):
    for name, extra in runs.items():
        tied = "--no-untie-embeddings-and-output-weights" in extra
        ref, ref_sd = refs[tied]
        got = results[name]
        assert got["learned"] == ref.learned_per_step, name
        torch.testing.assert_close(got["losses"], ref.losses, rtol=2e-6, atol=0, msg=f"{name}: losses")
        torch.testing.assert_close(got["grad_norms"], ref.grad_norms, rtol=1e-5, atol=0, msg=f"{name}: grad norms")
        sd = load_model(f"{tmp}/{name}").model.state_dict()
        assert sd.keys() == ref_sd.keys()
        for k in sd:
            torch.testing.assert_close(sd[k], ref_sd[k], rtol=1e-4, atol=1e-6,
                                       msg=lambda m, k=k, n=name: f"{n} {k}: {m}")


@pytest.mark.slow
def test_tp2_pp2_dp2_equal_single_process(references):
    tmp, prefix, refs = references
    run_distributed(_worker, 2, prefix, RUNS_2, str(tmp))
    with open(tmp / "result_2.json") as f:
        _compare(tmp, refs, RUNS_2, json.load(f))


@pytest.mark.slow
def test_tp2xpp2_and_pp2xdp2_on_4_processes(references):
    tmp, prefix, refs = references
    run_distributed(_worker, 4, prefix, RUNS_4, str(tmp))
    with open(tmp / "result_4.json") as f:
        _compare(tmp, refs, RUNS_4, json.load(f))
