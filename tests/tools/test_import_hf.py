"""tools/import_hf.py on small random LlamaForCausalLM models made with transformers: import -> export round-trips
bit-equal; logits through the project's model equal transformers' (fp32, 1e-5) merged (TP 1) and at TP 2 (two gloo
processes); pretrain_gpt's trainer continues from the imported checkpoint with the HF weights; bad input refused."""

import json
import os

import pytest
import torch

from tests.dist_utils import init_gloo, run_distributed
from tools import export_hf, import_hf

transformers = pytest.importorskip("transformers")

V = 128  # NullTokenizer(128): every HF row is a token, so the default export (true vocabulary) keeps them all


def _make_llama(path, seed=0, **kw):
    base = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=50000.0,
                tie_word_embeddings=False)
    cfg = transformers.LlamaConfig(**{**base, **kw})
    if getattr(cfg, "rope_parameters", None) is not None:  # transformers 5.x keeps theta here
        cfg.rope_parameters["rope_theta"] = base.get("rope_theta", 50000.0) if "rope_theta" not in kw else \
            kw["rope_theta"]
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms away from 1 so that a swapped norm would show
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return model


def _import(hf, out, tp=1, pp=1, extra=()):
    return import_hf.main(["--hf", str(hf), "--output", str(out), "--tensor-model-parallel-size", str(tp),
                           "--pipeline-model-parallel-size", str(pp), "--tokenizer-type", "NullTokenizer",
                           "--vocab-size", str(V), *extra])


def _hf_tensors(path):
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "model.safetensors"))


@pytest.mark.parametrize("kw", [{}, {"tie_word_embeddings": True, "num_key_value_heads": 4, "head_dim": 16,
                                     "rope_theta": 1e6}])
def test_round_trip_bit_equal_and_logits_equal(tmp_path, kw):
    from megatron_tf.checkpoint.derived import load_checkpoint  # what the RMU, attack and refusal tools load

    model = _make_llama(tmp_path / "hf", **kw)
    assert _import(tmp_path / "hf", tmp_path / "ckpt", tp=2, pp=2) == 0
    ckpt = tmp_path / "ckpt"
    assert {"config.json", "mp_rank_00_000", "mp_rank_00_001", "mp_rank_01_000", "mp_rank_01_001",
            "state.json"} <= set(os.listdir(ckpt / "iter_0000000"))  # (+ checksums.json where the trainer has them)
    assert export_hf.main(["--load", str(ckpt), "--output", str(tmp_path / "back")]) == 0
    a, b = _hf_tensors(tmp_path / "hf"), _hf_tensors(tmp_path / "back")
    a.pop("lm_head.weight", None) if model.config.tie_word_embeddings else None
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), "round trip is not bit-equal"
    c1 = json.loads((tmp_path / "hf" / "config.json").read_text())
    c2 = json.loads((tmp_path / "back" / "config.json").read_text())
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "vocab_size", "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings", "head_dim"):
        assert c1.get(key) == c2.get(key), key
    assert transformers.LlamaConfig.from_pretrained(tmp_path / "back").rope_parameters["rope_theta"] == \
        model.config.rope_parameters["rope_theta"]
    ids = torch.randint(0, V, (2, 13), generator=torch.Generator().manual_seed(1))
    src = load_checkpoint(str(ckpt))
    ours = src.model  # TP 2 x PP 2 shards merged
    assert src.pretrain_tokens is None and src.seq_length == 64 and src.tokenizer.vocab_size == V
    with torch.no_grad():
        ref, got = model(ids).logits, ours(ids)
    assert got.shape == (2, 13, V)
    assert (got - ref).abs().max() < 1e-5


def _tp2_worker(rank, world, rdzv, ckpt, ids, ref):
    from megatron_tf.checkpoint.format import load_model_shard, read_json
    from megatron_tf.model import build_gpt_stage
    from megatron_tf.parallel.groups import build_parallel_groups

    init_gloo(rank, world, rdzv)
    groups = build_parallel_groups(2, 1)
    saved = read_json(os.path.join(ckpt, "iter_0000000", "config.json"))
    from megatron_tf.model import ModelConfig

    cfg = ModelConfig.from_dict(saved["configs"]["model"])
    model = build_gpt_stage(cfg, groups.tp_group).eval()
    missing, unexpected = model.load_state_dict(load_model_shard(os.path.join(ckpt, "iter_0000000"), rank, 0),
                                                strict=False)
    assert not missing and not unexpected
    with torch.no_grad():
        logits = model(ids)  # this rank's half of the vocabulary
    assert logits.shape[-1] == V // 2
    cols = slice(rank * V // 2, (rank + 1) * V // 2)
    assert (logits - ref[..., cols]).abs().max() < 1e-5


def test_tp2_logits_equal_transformers(tmp_path):
    model = _make_llama(tmp_path / "hf", seed=3)
    assert _import(tmp_path / "hf", tmp_path / "ckpt", tp=2) == 0
    ids = torch.randint(0, V, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(ids).logits
    run_distributed(_tp2_worker, 2, str(tmp_path / "ckpt"), ids, ref, deadline_s=240)


def test_pretrain_continues_from_imported_checkpoint(tmp_path):
    from megatron_tf.training import pretrain
    from tests.training.synth import make_data, tiny_args

    model = _make_llama(tmp_path / "hf", seed=5, num_key_value_heads=4, intermediate_size=64, vocab_size=V)
    assert _import(tmp_path / "hf", tmp_path / "ckpt", extra=["--vocab-size", "103"]) == 0  # 103 tokens, 128 rows
    flags = json.loads((tmp_path / "ckpt" / "iter_0000000" / "config.json").read_text())["imported_from"]["model_flags"]
    seen = {}

    def hook(trainer):
        def capture(module, args, kwargs, out):
            if "ids" not in seen:
                seen["ids"] = (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).clone()
                seen["logits"] = out.detach().clone()
        trainer.module.register_forward_hook(capture, with_kwargs=True)

    prefix = make_data(tmp_path)
    args = tiny_args(prefix, iters=2, extra=[*flags, "--load", str(tmp_path / "ckpt"), "--finetune",
                                             "--save", str(tmp_path / "cont"), "--vocab-size", "103",
                                             "--token-filter", "mask"])
    result = pretrain(args, setup_hook=hook)
    assert result.iteration == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    with torch.no_grad():  # the first step ran the HF model: same logits on the trainer's own first batch
        ref = model(seen["ids"]).logits
    assert (seen["logits"] - ref).abs().max() < 1e-5
    assert os.path.isfile(tmp_path / "cont" / "iter_0000002" / "mp_rank_00_000" / "model.safetensors")


def test_bad_input(tmp_path):
    _make_llama(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "bad").mkdir()
    for name in os.listdir(tmp_path / "hf"):
        (tmp_path / "bad" / name).write_bytes((tmp_path / "hf" / name).read_bytes())
    (tmp_path / "bad" / "config.json").write_text(json.dumps({**cfg, "attention_bias": True}))
    with pytest.raises(SystemExit, match="attention_bias = True"):
        _import(tmp_path / "bad", tmp_path / "out")
    assert not os.path.exists(tmp_path / "out")
    with pytest.raises(SystemExit, match="vocab_size = 128 cannot be split over tensor-parallel size 3"):
        _import(tmp_path / "hf", tmp_path / "out", tp=3)
    assert _import(tmp_path / "hf", tmp_path / "out") == 0
    with pytest.raises(SystemExit, match="exists and is not empty; pass --overwrite"):
        _import(tmp_path / "hf", tmp_path / "out")
    assert _import(tmp_path / "hf", tmp_path / "out", extra=["--overwrite"]) == 0
    with pytest.raises(SystemExit, match="not a checkpoint directory"):
        _import(tmp_path / "hf", tmp_path / "hf", extra=["--overwrite"])
    assert sorted(p for p in os.listdir(tmp_path) if ".tmp-" in p or ".old-" in p) == []


def test_add_reserved_tokens_to_an_outside_tokenizer(tmp_path):
    """A Llama whose tokenizer.json lacks the reserved tokens (like a stock Llama's): refused without
    --add-reserved-tokens; with it, the three tokens get ids 300-302 after the tokenizer's 300, text encodes as
    before, the embedding and lm_head grow to 304 rows (TP 2) whose new rows are the mean row, and logits on the old
    vocabulary equal transformers'."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from megatron_tf.checkpoint.derived import load_checkpoint
    from megatron_tf.utils.jsonl import iter_texts

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    texts = list(iter_texts([os.path.join(repo, "data", "demo", "heldout", "general.jsonl.xz")]))[:3]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    assert tok.get_vocab_size() == 300
    model = _make_llama(tmp_path / "hf", seed=8, vocab_size=300)
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    args = ["--hf", str(tmp_path / "hf"), "--output", str(tmp_path / "ckpt"), "--tensor-model-parallel-size", "2"]
    with pytest.raises(SystemExit, match="no reserved token '<\\|endoftext\\|>'.*--add-reserved-tokens"):
        import_hf.main(args)
    assert import_hf.main([*args, "--add-reserved-tokens"]) == 0
    src = load_checkpoint(str(tmp_path / "ckpt"))
    assert (src.tokenizer.vocab_size, src.tokenizer.eod, src.tokenizer.hidden, src.tokenizer.pad) == (303, 300, 301,
                                                                                                       302)
    assert src.config["imported_from"]["added_tokens"] == ["<|endoftext|>", "<|hidden|>", "<|pad|>"]
    for text in texts:
        assert src.tokenizer.tokenize(text[:500]) == tok.encode(text[:500]).ids
    sd = src.model.state_dict()
    for name, hf_name in (("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
                          ("output_layer.weight", "lm_head.weight")):
        w, ref = sd[name], model.state_dict()[hf_name]
        assert w.shape == (304, 32) and torch.equal(w[:300], ref)
        assert (w[300:] - ref.double().mean(0)).abs().max() < 1e-7
    ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (src.model(ids)[..., :300] - model(ids).logits).abs().max() < 1e-5
