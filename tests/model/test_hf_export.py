"""A self-contained HF export: transformers' AutoModelForCausalLM + AutoTokenizer, loaded offline from the export,
give the project's next-token log-probabilities (fp32, 1e-5) on held-out demo text, pipeline("text-generation")
generates what the project's model generates greedily; non-finite weights and unsafe overwrites are refused."""

import itertools
import json
import os

import pytest
import torch

from megatron_tf.evaluation.scoring import token_logprobs
from megatron_tf.model import ModelConfig, build_gpt_stage
from megatron_tf.model.hf_export import export_llama
from megatron_tf.tokenizer.tokenizer import HFTokenizer, SentencePieceTokenizer
from megatron_tf.tokenizer.train import TrainTokenizerConfig, train_tokenizer
from megatron_tf.utils.jsonl import iter_texts

transformers = pytest.importorskip("transformers")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "data", "demo")
HELDOUT = [os.path.join(DEMO, "heldout", f"{d}.jsonl.xz") for d in ("medical", "biology", "general")]


def _cfg(vocab, **kw):
    base = dict(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=48, vocab_size=vocab,
                max_position_embeddings=96, init_method_std=0.1, rotary_base=1000.0, norm_epsilon=1e-6,
                group_query_attention=True, num_query_groups=2)
    return ModelConfig(**{**base, **kw})


def _texts():
    return [t[:250] for p in HELDOUT for t in itertools.islice(iter_texts([p]), 2)]


def _check_logprobs(model, project_tok, out, keep_padded):
    """HF next-token log-probs of [bos] + text equal the project's: its scorer (padded-vocabulary softmax) when the
    export keeps the padded rows, else the log-softmax of its logits over the true vocabulary."""
    tok = transformers.AutoTokenizer.from_pretrained(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    for text in _texts():
        ids = project_tok.tokenize(text)[:80]
        enc = tok(project_tok.detokenize(ids), return_tensors="pt").input_ids
        assert enc[0].tolist() == [project_tok.eod, *ids]
        with torch.no_grad():
            lp_hf = torch.log_softmax(hf(enc).logits[0, :-1].double(), -1).gather(1, enc[0, 1:, None])[:, 0]
            if keep_padded:
                ref = torch.from_numpy(token_logprobs(model, [enc[0, :-1].tolist()], [ids], project_tok.pad,
                                                      bf16=False)[0])
            else:
                logits = model(enc)[0, :-1, :project_tok.vocab_size].double()
                ref = torch.log_softmax(logits, -1).gather(1, enc[0, 1:, None])[:, 0]
        assert (lp_hf - ref).abs().max() < 1e-5, text[:60]


def test_sentencepiece_export_logprobs_and_pipeline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sp = SentencePieceTokenizer(os.path.join(DEMO, "tokenizer", "demo_sp.model"))
    cfg = _cfg(sp.vocab_size)  # 8192 = padded size: no padding rows
    model = build_gpt_stage(cfg, seed=3).eval()
    out = export_llama(model.state_dict(), cfg, str(tmp_path / "hf"), tokenizer=sp)
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "megatron_tf_config.json",
                                       "model.safetensors", "special_tokens_map.json", "tokenizer.json",
                                       "tokenizer.model", "tokenizer_config.json"]
    c = json.loads(open(os.path.join(out, "config.json")).read())
    g = json.loads(open(os.path.join(out, "generation_config.json")).read())
    assert (c["bos_token_id"], c["eos_token_id"], c["pad_token_id"]) == (sp.eod, sp.eod, sp.pad) == (1, 1, 2)
    assert (g["bos_token_id"], g["eos_token_id"], g["pad_token_id"]) == (1, 1, 2)
    _check_logprobs(model, sp, out, keep_padded=True)

    pipe = transformers.pipeline("text-generation", model=out, device="cpu")
    prompt = "The patient was"
    got = pipe(prompt, max_new_tokens=8, do_sample=False, return_full_text=False)[0]["generated_text"]
    ids = [sp.eod, *sp.tokenize(prompt)]  # greedy with the project's model, same bos
    new = []
    with torch.no_grad():
        for _ in range(8):
            nxt = int(model(torch.tensor([ids + new]))[0, -1, :sp.vocab_size].argmax())
            if nxt == sp.eod:
                break
            new.append(nxt)
    assert new and got == sp.detokenize(new)


def test_hf_tokenizer_export_padded_vocab_logprobs(tmp_path):
    src = tmp_path / "tok.json"
    train_tokenizer(TrainTokenizerConfig(input=[os.path.join(DEMO, "train", "medical.jsonl.xz")], output=str(src),
                                         type="hf", vocab_size=700))
    hf_tok = HFTokenizer(str(src))
    cfg = _cfg(hf_tok.vocab_size, untie_embeddings_and_output_weights=False)  # 700 -> 768 padded, tied
    model = build_gpt_stage(cfg, seed=4).eval()
    out_padded = export_llama(model.state_dict(), cfg, str(tmp_path / "padded"), tokenizer=hf_tok,
                              keep_padded_vocab=True)
    assert json.loads(open(os.path.join(out_padded, "config.json")).read())["vocab_size"] == 768
    _check_logprobs(model, hf_tok, out_padded, keep_padded=True)
    out = export_llama(model.state_dict(), cfg, str(tmp_path / "true"), tokenizer=hf_tok)
    assert json.loads(open(os.path.join(out, "config.json")).read())["vocab_size"] == 700
    _check_logprobs(model, hf_tok, out, keep_padded=False)


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path):
    cfg = _cfg(100, make_vocab_size_divisible_by=64)
    sd = build_gpt_stage(cfg, seed=1).state_dict()
    bad = dict(sd)
    bad["decoder.layers.1.mlp.linear_fc2.weight"] = sd["decoder.layers.1.mlp.linear_fc2.weight"].clone()
    bad["decoder.layers.1.mlp.linear_fc2.weight"][0, :2] = torch.tensor([float("nan"), float("inf")])
    with pytest.raises(ValueError, match="'decoder.layers.1.mlp.linear_fc2.weight' holds 1 NaN and 1 infinite"):
        export_llama(bad, cfg, str(tmp_path / "x"))
    big = dict(sd)
    big["decoder.final_layernorm.weight"] = torch.full_like(sd["decoder.final_layernorm.weight"], 1e6)
    with pytest.raises(ValueError, match=r"'model.norm.weight' \(after the cast to float16\) holds 0 NaN and 32 inf"):
        export_llama(big, cfg, str(tmp_path / "x"), dtype=torch.float16)
    assert os.listdir(tmp_path) == []  # nothing written


def test_overwrite_semantics(tmp_path):
    cfg = _cfg(100, make_vocab_size_divisible_by=64)
    sd = build_gpt_stage(cfg, seed=1).state_dict()
    (tmp_path / "empty").mkdir()
    export_llama(sd, cfg, str(tmp_path / "empty"))  # an empty directory is fine
    with pytest.raises(FileExistsError, match="exists and is not empty .* pass --overwrite"):
        export_llama(sd, cfg, str(tmp_path / "empty"))
    export_llama(build_gpt_stage(cfg, seed=2).state_dict(), cfg, str(tmp_path / "empty"), overwrite=True)
    w = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "empty").model.norm.weight
    assert torch.equal(w, build_gpt_stage(cfg, seed=2).state_dict()["decoder.final_layernorm.weight"])
    (tmp_path / "other" / "sub").mkdir(parents=True)
    (tmp_path / "other" / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not an earlier Hugging Face export"):
        export_llama(sd, cfg, str(tmp_path / "other"), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["empty", "other"]  # no temporary directories left
    assert sorted(os.listdir(tmp_path / "other")) == ["config.json", "sub"]
    sp = SentencePieceTokenizer(os.path.join(DEMO, "tokenizer", "demo_sp.model"))
    with pytest.raises(ValueError, match="tokenizer .* has 8192 tokens but the model config's vocab_size is 100"):
        export_llama(sd, cfg, str(tmp_path / "x"), tokenizer=sp)
