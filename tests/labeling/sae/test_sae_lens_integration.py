"""With sae-lens: train a tiny SAE on a tiny random Llama (tools/train_sae.py path), load it back, select latents
(sae_label.py select), annotate a dataset with `tools/annotate.py --labeler sae` and compare the sidecar with an
independent computation (hidden_states[L + 1] of unpadded windows, sae-lens encode, brute-force rule and transfer).
sae-lens is in the `test` extra: this module imports it and fails (never skips) without it. Offline
(HF_HUB_OFFLINE=1, WANDB_MODE=disabled: tests/conftest.py); ~15 s on 2 cores, most of it importing sae-lens."""

from __future__ import annotations

import json
import lzma

import numpy as np
import pytest
import sae_lens  # noqa: F401  (in the test extra: a missing install is an error, not a skip)
import torch

from megatron_tf.data.indexed_dataset import write_dataset
from megatron_tf.data.sidecar import KIND_TOKEN_SCORES, TokenScores, sidecar_path
from megatron_tf.labeling import annotate as annotate_mod
from megatron_tf.labeling.sae import cli
from megatron_tf.labeling.sae.sae_io import load_sae
from megatron_tf.labeling.sae.train import TrainSAEConfig, train_sae
from megatron_tf.labeling.sae.transfer import document_text
from megatron_tf.labeling.token_text import TokenBytes
from tests.labeling.sae.test_rule import brute_force
from tests.labeling.sae.test_transfer import _brute_force
from tests.labeling.tiny_tokenizers import CORPUS

MED = [CORPUS[i] for i in (0, 1, 3, 4, 6, 7)]
OTHER = [CORPUS[i] for i in (2, 5, 8, 9)]
LAYER, CTX = 1, 16


def _jsonl(path, texts):
    with lzma.open(path, "wt", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, llama_dir):
    tmp = tmp_path_factory.mktemp("sae")
    data = _jsonl(tmp / "all.jsonl.xz", MED * 3 + OTHER * 3)
    out = str(tmp / "sae")
    cfg = TrainSAEConfig(sae_reference_lm=llama_dir, sae_hook_layer=LAYER, sae_context_size=CTX, data=[data],
                         d_sae=48, total_tokens=4096, train_batch_tokens=128, buffer_tokens=512, lr=1e-3,
                         l1_coefficient=1.0, output=out)
    sae = train_sae(cfg)
    return out, sae, tmp


def test_train_sae_cli_learns_to_reconstruct_the_residual(tmp_path, llama_dir):
    """tools/train_sae.py's entry point: the SAE it writes reconstructs the LM's layer-L residual (computed here with
    transformers' hidden_states) far better than its initialisation, with sparse codes; bad flags exit 2."""
    from sae_lens import SAE
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = _jsonl(tmp_path / "all.jsonl.xz", MED * 3 + OTHER * 3)
    common = ["--sae-reference-lm", llama_dir, "--sae-hook-layer", str(LAYER), "--sae-context-size", str(CTX),
              "--data", data, "--d-sae", "48", "--train-batch-tokens", "128", "--buffer-tokens", "512", "--lr",
              "1e-2", "--l1-coefficient", "1.0"]
    runs = {}
    for steps in (1, 32):  # 1 step of 128 tokens ~ the initialisation; 32 steps = 4096 tokens
        out = str(tmp_path / f"sae{steps}")
        assert cli.train_main([*common, "--total-tokens", str(128 * steps), "--output", out]) == 0
        runs[steps] = SAE.load_from_disk(out)
    lm = AutoModelForCausalLM.from_pretrained(llama_dir, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(llama_dir, local_files_only=True)
    with torch.no_grad():
        h = torch.cat([lm(torch.tensor([[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"][:CTX - 1]]),
                          output_hidden_states=True).hidden_states[LAYER + 1][0, 1:] for t in MED + OTHER])
        fvu = {k: float(((sae(h) - h) ** 2).sum() / ((h - h.mean(0)) ** 2).sum()) for k, sae in runs.items()}
        l0 = float((runs[32].encode(h) > 0).float().sum(-1).mean())
    # fraction of variance unexplained, measured 1.00 after 1 step and 0.26 after 32; L0 measured 16.9 of 48
    assert fvu[32] < 0.5 * fvu[1] and fvu[32] < 0.5, fvu
    assert 0 < l0 < 48 / 2, l0
    assert cli.train_main([*common, "--total-tokens", "128", "--output", ""]) == 2  # no output: a clear error


def test_trained_sae_round_trip_and_metadata(trained):
    out, sae, _ = trained
    enc = load_sae(out)
    assert (enc.d_in, enc.d_sae, enc.hook_layer) == (32, 48, LAYER)
    x = torch.randn(20, 32)
    torch.testing.assert_close(enc.encode(x), sae.encode(x), rtol=0, atol=1e-6)
    assert enc.describe()["sha256"] and (enc.encode(x) > 0).any()


def test_pretrained_release_missing_offline_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE=1"):
        load_sae("gemma-scope-9b-pt-res-canonical:layer_31/width_16k/canonical")


def _independent_acts(lm, tok, sae, text, latents):
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offs = enc["input_ids"], enc["offset_mapping"]
    rows = []
    for a in range(0, len(ids), CTX - 1):
        seq = [tok.bos_token_id] + ids[a : a + CTX - 1]
        with torch.no_grad():
            h = lm(torch.tensor([seq]), output_hidden_states=True).hidden_states[LAYER + 1][0, 1:]
            rows.append(sae.encode(h)[:, latents])
    acts = torch.cat(rows).numpy().astype(np.float64) if rows else np.zeros((0, len(latents)))
    return acts, offs


def test_select_then_annotate_cli_matches_independent_computation(trained, llama_dir, sp_tok):
    from sae_lens import SAE
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sae_dir, _, tmp = trained
    dom, oth = _jsonl(tmp / "med.jsonl.xz", MED), _jsonl(tmp / "other.jsonl.xz", OTHER)
    sel = tmp / "sel"
    common = ["--sae-reference-lm", llama_dir, "--sae", sae_dir, "--sae-context-size", str(CTX)]
    assert cli.main(["select", *common, "--domain", dom, "--other", oth, "--top-k", "6", "--min-freq", "0",
                     "--min-ratio", "1", "--output-dir", str(sel)]) == 0
    chosen = json.load(open(sel / "latents.json"))
    ids = [x["id"] for x in chosen["latents"]]
    assert 1 <= len(ids) <= 6 and chosen["hook_layer"] == LAYER
    assert all(x["threshold"] == pytest.approx(x["mean"] + 4 * x["std"]) for x in chosen["latents"])
    assert all(f"latent {i}" in (sel / "latents.html").read_text() for i in ids)
    aurocs = [x["auroc"] for x in chosen["latents"]]
    assert aurocs == sorted(aurocs, reverse=True)

    # thresholds at the 80th percentile of each latent over the domain text, so that the rule has work to do
    lm = AutoModelForCausalLM.from_pretrained(llama_dir, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(llama_dir, local_files_only=True)
    sae = SAE.load_from_disk(sae_dir)
    sample = np.concatenate([_independent_acts(lm, tok, sae, t, ids)[0] for t in MED])
    thr = np.quantile(sample, 0.8, axis=0)
    thr[thr <= 0] = 1e-3
    lat = tmp / "latents_q80.json"
    lat.write_text(json.dumps([{"id": i, "threshold": float(t)} for i, t in zip(ids, thr)]))

    texts = MED + OTHER + ["中文 pneumonia 😀"]
    docs = [sp_tok.tokenize(t) + [sp_tok.eod] for t in texts]
    ds = write_dataset(str(tmp / "d"), docs, dtype=np.uint16)
    rc = annotate_mod.main(["--data-prefix", ds.path_prefix, "--labeler", "sae", *common, "--sae-latents", str(lat),
                            "--sae-batch-size", "3", "--tokenizer-type", "SentencePieceTokenizer",
                            "--tokenizer-model", sp_tok.path, "--chunk-docs", "4", "--no-progress"])
    assert rc == 0
    q = TokenScores(sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES), ds).q
    offs = ds.document_token_offsets()
    table = TokenBytes.from_tokenizer(sp_tok)
    total = 0
    for d, toks in enumerate(docs):
        data, toffs = table.decode(np.asarray(toks))
        text, c2b = document_text(data)
        acts, roffs = _independent_acts(lm, tok, sae, text, ids)
        ref_forget = brute_force(acts, thr, 2)
        want = np.asarray(_brute_force(roffs, ref_forget, c2b, len(text), toffs), dtype=np.uint8) * 255
        np.testing.assert_array_equal(np.asarray(q[offs[d] : offs[d + 1]]), want, err_msg=texts[d])
        total += int(want.astype(bool).sum())
    assert 0 < total < ds.num_tokens

    rep = tmp / "rep"
    assert cli.main(["report", "--data-prefix", ds.path_prefix, "--tokenizer-type", "SentencePieceTokenizer",
                     "--tokenizer-model", sp_tok.path, "--output-dir", str(rep)]) == 0
    summary = json.load(open(rep / "summary.json"))
    assert summary[0]["token_fraction"] == pytest.approx(total / ds.num_tokens)
    assert summary[0]["labeler"]["labeler"] == "sae"


def test_saved_sae_files_honour_the_umask(trained):
    """sae-lens writes sae_weights.safetensors through safetensors (0600); the output gets the umask's modes (issue 14,
    item 12), e.g. 0644 under umask 022."""
    import os

    from megatron_tf.utils.io import dir_mode, file_mode

    out = trained[0]
    assert os.stat(out).st_mode & 0o777 == dir_mode()
    for name in os.listdir(out):
        assert os.stat(os.path.join(out, name)).st_mode & 0o777 == file_mode(), name
