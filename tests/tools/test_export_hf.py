"""HF export: our logits equal LlamaForCausalLM's (fp32) after export, from a full model and from TP/PP shards."""

import json
import os

import pytest
import torch

from megatron_tf.model import ModelConfig, build_gpt_stage
from megatron_tf.model.hf_export import export_llama, merge_tp_state_dicts, partition_specs
from megatron_tf.parallel.layers import shard_tensor
from tools import export_hf

transformers = pytest.importorskip("transformers")

V = 100  # pads to 128


def _cfg(**kw):
    base = dict(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=48, vocab_size=V,
                make_vocab_size_divisible_by=64, max_position_embeddings=64, init_method_std=0.1,
                rotary_base=1000.0, norm_epsilon=1e-6)
    return ModelConfig(**{**base, **kw})


def _shards(sd, cfg, names=None, tp=2):
    specs = partition_specs(cfg)
    out = []
    for rank in range(tp):
        shard = {}
        for k in names or sd:
            spec = specs[k]
            shard[k] = sd[k].clone() if spec is None else shard_tensor(sd[k], spec[0], spec[1], tp, rank)
        out.append(shard)
    return out


def _hf_logits(path, ids):
    model = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("kw", [{}, {"group_query_attention": True, "num_query_groups": 2,
                                     "untie_embeddings_and_output_weights": False, "kv_channels": 16}])
def test_export_logits_equal(tmp_path, kw):
    cfg = _cfg(**kw)
    model = build_gpt_stage(cfg, seed=2).eval()
    ids = torch.randint(0, V, (2, 11))
    with torch.no_grad():
        ours = model(ids)
    out = export_llama(model.state_dict(), cfg, str(tmp_path / "hf"), eos_token_id=V - 3)
    hf_cfg = json.load(open(os.path.join(out, "config.json")))
    assert hf_cfg["tie_word_embeddings"] == cfg.tied_embeddings and hf_cfg["vocab_size"] == V
    assert hf_cfg["num_key_value_heads"] == cfg.num_kv_heads and hf_cfg["eos_token_id"] == V - 3
    hf = _hf_logits(out, ids)
    assert hf.shape == (2, 11, V)  # padding rows dropped
    torch.testing.assert_close(hf, ours[..., :V], rtol=1e-5, atol=1e-5)
    assert (hf - ours[..., :V]).abs().max() < 1e-5
    # keep_padded_vocab: all 128 rows, so the softmax (and the loss) equals ours exactly
    out2 = export_llama(model.state_dict(), cfg, str(tmp_path / "hf_padded"), keep_padded_vocab=True)
    torch.testing.assert_close(_hf_logits(out2, ids), ours, rtol=1e-5, atol=1e-5)
    assert sorted(os.listdir(tmp_path)) == ["hf", "hf_padded"]  # no temporary directories left behind


def test_tool_merges_tp_and_pp_shards(tmp_path):
    from safetensors.torch import save_file

    cfg = _cfg(num_layers=4)
    full = build_gpt_stage(cfg, seed=4).eval()
    sd = full.state_dict()
    last = ("decoder.layers.2", "decoder.layers.3", "decoder.final", "output")
    files = []
    for pp_rank, names in enumerate([[k for k in sd if not k.startswith(last)], [k for k in sd if k.startswith(last)]]):
        for tp_rank, shard in enumerate(_shards(sd, cfg, names)):
            files.append(str(tmp_path / f"pp{pp_rank}_tp{tp_rank}.safetensors"))
            save_file(shard, files[-1])
    cfg_path = tmp_path / "model_config.json"
    cfg_path.write_text(json.dumps(cfg.to_dict()))
    out = str(tmp_path / "export")
    assert export_hf.main(["--model-config", str(cfg_path), "--state-dict", *files, "--tensor-model-parallel-size",
                           "2", "--pipeline-model-parallel-size", "2", "--output", out]) == 0
    ids = torch.randint(0, V, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(_hf_logits(out, ids), full(ids)[..., :V], rtol=1e-5, atol=1e-5)
    with pytest.raises(FileExistsError, match="exists"):
        export_hf.main(["--model-config", str(cfg_path), "--state-dict", *files, "--tensor-model-parallel-size",
                        "2", "--pipeline-model-parallel-size", "2", "--output", out])
    with pytest.raises(ValueError, match="expected 4 state dict files"):
        export_hf.main(["--model-config", str(cfg_path), "--state-dict", *files[:3], "--tensor-model-parallel-size",
                        "2", "--pipeline-model-parallel-size", "2", "--output", out + "2"])


def test_merge_checks_replicated_tensors_and_names():
    cfg = _cfg()
    sd = build_gpt_stage(cfg).state_dict()
    a, b = _shards(sd, cfg)
    merged = merge_tp_state_dicts([a, b], cfg)
    assert all(torch.equal(merged[k], sd[k]) for k in sd)
    b["decoder.final_layernorm.weight"] += 1e-3
    with pytest.raises(ValueError, match="replicated tensor 'decoder.final_layernorm.weight' differs"):
        merge_tp_state_dicts([a, b], cfg)
    del b["decoder.final_layernorm.weight"]
    with pytest.raises(ValueError, match="different tensor names"):
        merge_tp_state_dicts([a, b], cfg)


def test_relu2_and_layernorm_models_are_refused(tmp_path):
    for kw, msg in (({"activation": "relu2"}, "ReLU\\^2"), ({"normalization": "LayerNorm"}, "RMSNorm")):
        cfg = _cfg(**kw)
        with pytest.raises(ValueError, match=msg):
            export_llama(build_gpt_stage(cfg).state_dict(), cfg, str(tmp_path / "x"))
    assert not os.path.exists(tmp_path / "x")


def test_load_round_trip_with_the_checkpoint_tokenizer(tmp_path):
    """export (SentencePiece tokenizer) -> tools/import_hf.py (picks tokenizer.model, copies it into the checkpoint)
    -> tools/export_hf.py --load (rebuilds the tokenizer from the checkpoint): the same files, byte for byte."""
    from megatron_tf.tokenizer.tokenizer import SentencePieceTokenizer
    from tools import import_hf

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sp = SentencePieceTokenizer(os.path.join(repo, "data", "demo", "tokenizer", "demo_sp.model"))
    cfg = _cfg(vocab_size=sp.vocab_size, make_vocab_size_divisible_by=128)
    first = export_llama(build_gpt_stage(cfg, seed=6).state_dict(), cfg, str(tmp_path / "a"), tokenizer=sp)
    assert import_hf.main(["--hf", first, "--output", str(tmp_path / "ckpt"), "--tensor-model-parallel-size", "2"]) == 0
    assert os.path.isfile(tmp_path / "ckpt" / "tokenizer" / "tokenizer.model")
    assert export_hf.main(["--load", str(tmp_path / "ckpt"), "--output", str(tmp_path / "b")]) == 0
    names = sorted(os.listdir(first))
    assert names == sorted(os.listdir(tmp_path / "b"))
    for name in names:
        if name != "megatron_tf_config.json":
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    a, b = (json.loads((tmp_path / d / "megatron_tf_config.json").read_text()) for d in "ab")
    assert b.pop("make_vocab_size_divisible_by") == 2 * a.pop("make_vocab_size_divisible_by")  # merged from TP 2
    assert a == b
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        export_hf.main(["--load", str(tmp_path / "ckpt"), "--output", str(tmp_path / "b")])
    assert export_hf.main(["--load", str(tmp_path / "ckpt"), "--output", str(tmp_path / "b"), "--overwrite"]) == 0
