"""TP=2 equals TP=1 (init, logits, every gradient), with and without sequence parallelism; merged TP state dicts
equal the TP=1 state dict; PP=2 with tied embeddings (embedding-group gradient sum) equals the full model.
Two gloo processes; every rank also builds the TP=1 reference in-process."""

import torch
import torch.distributed as dist

from megatron_tf.model import ModelConfig, allreduce_embedding_grads, build_gpt_stage
from megatron_tf.model.hf_export import merge_tp_state_dicts
from megatron_tf.parallel.groups import build_parallel_groups
from megatron_tf.parallel.layers import allreduce_sequence_parallel_grads, shard_tensor
from tests.dist_utils import init_gloo, run_distributed

V, B, S = 120, 2, 8  # vocab 120 pads to 128 with TP 1 and TP 2 (multiple of 32 * tp)

CONFIGS = [
    dict(),  # Llama: SwiGLU, MHA, untied
    dict(sequence_parallel=True, group_query_attention=True, num_query_groups=2,
         untie_embeddings_and_output_weights=False),
    dict(sequence_parallel=True, activation="relu2", normalization="LayerNorm"),
]


def _cfg(**kw):
    base = dict(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=48, vocab_size=V,
                make_vocab_size_divisible_by=32, init_method_std=0.05)
    return ModelConfig(**{**base, **kw})


def _shard(full, p, rank):
    if getattr(p, "tensor_model_parallel", False):
        return shard_tensor(full, p.partition_dim, p.partition_chunks, 2, rank)
    return full


def _check_tp(rank, groups, kw):
    cfg = _cfg(**kw)
    ref = build_gpt_stage(cfg, None, seed=11).double()  # float64: differences are summation order only
    model = build_gpt_stage(cfg, groups.tp_group, seed=11).double()
    assert model.padded_vocab_size == ref.padded_vocab_size == 128
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():  # init independent of the TP size
        assert torch.equal(p, _shard(ref_params[name], p, rank)), name

    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, V, (B, S), generator=g)
    target = torch.randn(B, S, 128, generator=g, dtype=torch.float64)
    ref_logits = ref(ids)
    (ref_logits * target).sum().backward()

    logits = model(ids)  # this rank's vocabulary shard [b, s, V/2]
    cols = slice(rank * 64, (rank + 1) * 64)
    assert logits.shape == (B, S, 64)
    torch.testing.assert_close(logits, ref_logits[..., cols], rtol=1e-10, atol=1e-12)
    (logits * target[..., cols]).sum().backward()
    if cfg.sequence_parallel:
        allreduce_sequence_parallel_grads(model, groups.tp_group)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, _shard(ref_params[name].grad, p, rank), rtol=1e-10, atol=1e-12,
                                   msg=lambda m, n=name: f"{kw}: grad of {n}: {m}")
    with torch.no_grad():
        torch.testing.assert_close(model(ids, gather_logits=True), ref_logits, rtol=1e-10, atol=1e-12)

    # merging the two ranks' state dicts gives the TP=1 state dict
    shards = [None, None]
    dist.all_gather_object(shards, {k: v.clone() for k, v in model.state_dict().items()}, group=groups.tp_group)
    merged = merge_tp_state_dicts(shards, cfg)
    ref_sd = ref.state_dict()
    assert merged.keys() == ref_sd.keys()
    for k in ref_sd:
        assert torch.equal(merged[k], ref_sd[k]), k


def _check_pp_tied(rank):
    groups = build_parallel_groups(1, 2)
    cfg = _cfg(num_layers=3, untie_embeddings_and_output_weights=False, decoder_first_pipeline_num_layers=2)
    ref = build_gpt_stage(cfg, None, seed=3).double()
    stage = build_gpt_stage(cfg, None, groups.pp_rank, 2, seed=3).double()
    assert stage.layer_range == ((0, 2) if rank == 0 else (2, 3))
    g = torch.Generator().manual_seed(9)
    ids = torch.randint(0, V, (B, S), generator=g)
    target = torch.randn(B, S, 128, generator=g, dtype=torch.float64)
    (ref(ids) * target).sum().backward()
    if rank == 0:
        x = stage(input_ids=ids)
        dist.send(x.detach().contiguous(), 1)
        grad = torch.empty_like(x)
        dist.recv(grad, 1)
        x.backward(grad)
    else:
        x = torch.empty(S, B, 32, dtype=torch.float64)
        dist.recv(x, 0)
        x.requires_grad_(True)
        logits = stage(hidden_states=x)
        torch.testing.assert_close(logits, ref(ids), rtol=1e-10, atol=1e-12)
        (logits * target).sum().backward()
        dist.send(x.grad.contiguous(), 0)
    allreduce_embedding_grads(stage, groups.embedding_group)
    ref_params = dict(ref.named_parameters())
    for name, p in stage.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-10, atol=1e-12,
                                   msg=lambda m, n=name: f"pp: {n}: {m}")


def _worker(rank, world, port):
    init_gloo(rank, world, port)
    groups = build_parallel_groups(2, 1)
    for kw in CONFIGS:
        _check_tp(rank, groups, kw)
    _check_pp_tied(rank)


def test_tp2_equals_tp1_and_pp2_tied_equals_full():
    run_distributed(_worker, 2)
