"""SAELabeler end to end through the annotation runner: sidecar scores equal an independent computation (brute-force
rule on predictable activations, brute-force character-span transfer) between two different tokenizers; reports."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest

from megatron_tf.data.indexed_dataset import write_dataset
from megatron_tf.data.sidecar import KIND_TOKEN_SCORES, TokenScores, sidecar_path
from megatron_tf.labeling.annotate import annotate
from megatron_tf.labeling.sae.config import SAELabelerOptions
from megatron_tf.labeling.sae.labeler import SAELabeler, resolve_hook_layer
from megatron_tf.labeling.sae.latents import parse_latents
from megatron_tf.labeling.sae.transfer import document_text
from megatron_tf.labeling.sae.workflow import ReportConfig, run_report
from megatron_tf.labeling.token_text import TokenBytes
from tests.labeling.sae.test_rule import brute_force
from tests.labeling.sae.test_transfer import _brute_force
from tests.labeling.sae.tiny_models import SetEncoder, onehot_lm
from tests.labeling.test_blocklist import _random_texts
from tests.labeling.tiny_tokenizers import CORPUS

MEDICAL = [" pneumonia", " amoxicillin", " patient", " insulin", " diabetes", " chemotherapy", " hypertension",
           " nausea", " physician"]


def _setup(hf_tok):
    """Latents: 0 and 1 fire (2.0, 3.0) on medical-word tokens, 2 fires weakly (0.5) on ' the'/' and'/' with'
    tokens, 3 (not in the list) fires on everything else."""
    ids = lambda words: {i for w in words for i in hf_tok.tokenize(w)}  # noqa: E731
    # medical-word pieces that never occur in the non-medical sentences (the tiny BPE shares short pieces)
    med = ids(MEDICAL) - ids([CORPUS[i] for i in (2, 5, 8, 9)])
    half = {i for i in med if i % 2 == 0}
    glue = ids([" the", " and", " with", " was"]) - med
    rest = set(range(hf_tok.vocab_size)) - med - glue
    enc = SetEncoder(hf_tok.vocab_size, [med, half | {i for i in med if i % 3 == 0}, glue, rest],
                     [2.0, 3.0, 0.5, 1.0], bos_id=hf_tok.eod)
    ll = parse_latents([{"id": 0, "threshold": 1.0}, {"id": 1, "threshold": 1.0}, {"id": 2, "threshold": 1.0}])
    return enc, ll


def _expected(sp_tok, hf_tok, enc, thr, m, ids):
    data, offs = TokenBytes.from_tokenizer(sp_tok).decode(np.asarray(ids))
    text, c2b = document_text(data)
    rids, roffs = hf_tok.tokenize_with_offsets(text)
    acts = enc.W.numpy()[np.asarray(rids, dtype=np.int64)][:, :3].astype(np.float64)
    ref_forget = brute_force(acts.reshape(-1, 3), thr, m)
    return np.asarray(_brute_force(roffs, ref_forget, c2b, len(text), offs), dtype=np.uint8) * 255


@pytest.mark.parametrize("m", [1, 2])
def test_sidecar_equals_independent_computation(tmp_path, sp_tok, hf_tok, m):
    enc, ll = _setup(hf_tok)
    texts = CORPUS[:10] + _random_texts(30, seed=5) + ["", "中文 pneumonia 😀 the patient"]
    docs = [sp_tok.tokenize(t) + [sp_tok.eod] for t in texts]
    ds = write_dataset(str(tmp_path / "d"), docs, dtype=np.uint16)
    lab = SAELabeler(sp_tok.token_bytes_table(), ll, min_seed_latents=m, ref_lm=onehot_lm(hf_tok, 4), encoder=enc,
                     batch_size=3)
    annotate(ds.path_prefix, lab, sp_tok, chunk_docs=7, progress=False)
    q = TokenScores(sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES), ds).q
    offs = ds.document_token_offsets()
    n_forget = 0
    for d, ids in enumerate(docs):
        want = _expected(sp_tok, hf_tok, enc, ll.thresholds(), m, ids)
        got = np.asarray(q[offs[d] : offs[d + 1]])
        np.testing.assert_array_equal(got, want, err_msg=texts[d])
        n_forget += int((want > 0).sum())
    assert 0 < n_forget < 0.5 * ds.num_tokens
    # medical sentences are labeled, the non-medical ones of the corpus are not
    frac = [float(np.asarray(q[offs[d] : offs[d + 1]]).mean()) for d in range(10)]
    assert frac[0] > 0 and frac[2] == 0  # "The patient ... pneumonia ..." vs "Photosynthesis ..."


def test_labeler_options_describe_and_pickle(tmp_path, sp_tok, hf_tok):
    enc, ll = _setup(hf_tok)
    lab = SAELabeler(sp_tok.token_bytes_table(), ll, ref_lm=onehot_lm(hf_tok), encoder=enc)
    d = lab.describe()
    json.dumps(d)
    assert d["labeler"] == "sae" and d["min_seed_latents"] == 2 and d["latents_sha256"] == ll.sha256()
    p = tmp_path / "latents.json"
    p.write_text(json.dumps({"latents": [{"id": 0, "threshold": 1.0}]}))
    lm_dir = tmp_path / "lm"
    lm_dir.mkdir()
    (lm_dir / "config.json").write_text("{}")
    opts = SAELabelerOptions(sae_reference_lm=str(lm_dir), sae="some/sae", sae_latents=str(p))
    lab2 = SAELabeler.from_options(opts, sp_tok)
    clone = pickle.loads(pickle.dumps(lab2))  # workers get the paths, not loaded models
    assert clone.describe() == lab2.describe() and clone._ref_lm is None
    assert lab2.describe()["reference_lm_config_sha256"] is not None
    with pytest.raises(ValueError, match="--sae-latents"):
        SAELabeler.from_options(SAELabelerOptions(sae_reference_lm=str(lm_dir), sae="x"), sp_tok)
    with pytest.raises(ValueError, match=">= 1"):
        SAELabelerOptions(sae_min_seed_latents=0)


def test_annotate_cli_needs_the_sae_options(tmp_path, capsys):
    from megatron_tf.labeling.annotate import main

    ds = write_dataset(str(tmp_path / "d"), [[1, 2, 3]], dtype=np.uint16)
    rc = main(["--data-prefix", ds.path_prefix, "--labeler", "sae", "--tokenizer-type", "NullTokenizer",
               "--vocab-size", "50", "--sae", "x"])
    assert rc == 2 and "--labeler sae needs --sae-reference-lm, --sae-latents" in capsys.readouterr().err


def test_hook_layer_resolution():
    class E:
        hook_layer, hook_name = 31, "blocks.31.hook_resid_post"

    assert resolve_hook_layer(None, E()) == 31 and resolve_hook_layer(31, E()) == 31
    with pytest.raises(ValueError, match="contradicts"):
        resolve_hook_layer(30, E())
    E.hook_layer, E.hook_name = None, "blocks.3.hook_mlp_out"
    with pytest.raises(ValueError, match="--sae-hook-layer"):
        resolve_hook_layer(None, E())


def test_report_fractions_and_highlighted_html(tmp_path, sp_tok, hf_tok):
    enc, ll = _setup(hf_tok)
    lab = SAELabeler(sp_tok.token_bytes_table(), ll, ref_lm=onehot_lm(hf_tok), encoder=enc)
    med = [sp_tok.tokenize(t) + [sp_tok.eod] for t in ("The patient with pneumonia took amoxicillin.",
                                                        "Insulin for diabetes; the physician saw nausea.")]
    gen = [sp_tok.tokenize(t) + [sp_tok.eod] for t in ("Children learn to read and write at school.",
                                                        "The teacher gives homework every week.")]
    prefixes = []
    for name, docs in (("medical", med), ("general", gen)):
        ds = write_dataset(str(tmp_path / name), docs, dtype=np.uint16)
        annotate(ds.path_prefix, lab, sp_tok, progress=False)
        prefixes.append(ds.path_prefix)
    out = run_report(ReportConfig(data_prefix=prefixes, output_dir=str(tmp_path / "rep"), sample_docs=2), sp_tok)
    s = {x["name"]: x for x in out["summaries"]}
    q = TokenScores(sidecar_path(prefixes[0], KIND_TOKEN_SCORES), _ds(prefixes[0])).q
    assert s["medical"]["token_fraction"] == pytest.approx(float((np.asarray(q) >= 128).mean()))
    assert s["medical"]["token_fraction"] > 0.2 and s["general"]["token_fraction"] == 0.0
    assert s["medical"]["doc_fraction_any"] == 1.0
    html = open(out["html"], encoding="utf-8").read()
    # the highlighted characters are exactly the text of the forget tokens (ASCII documents: bytes = characters)
    table = sp_tok.token_bytes_table()
    offs = _ds(prefixes[0]).document_token_offsets()
    for d in range(2):
        div = html.split(f"medical document {d}:", 1)[1].split("<div class='ctx'>", 1)[1].split("</div>", 1)[0]
        flagged = [table[t] for t, f in zip(med[d], np.asarray(q[offs[d] : offs[d + 1]])) if f]
        assert "".join(re.findall("<mark>(.*?)</mark>", div)) == b"".join(flagged).decode()
        assert re.sub("</?mark>", "", div) == b"".join(table[t] for t in med[d]).decode()
    assert "<mark>" not in html.split("general document", 1)[1]
    assert json.load(open(out["summary"]))[1]["name"] == "general"


def _ds(prefix):
    from megatron_tf.data.indexed_dataset import IndexedDataset

    return IndexedDataset(prefix)
