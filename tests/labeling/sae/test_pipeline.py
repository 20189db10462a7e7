"""Windows, BOS exclusion, statistics and contrastive selection (labeling/sae/pipeline.py, stats.py, select.py,
latents.py), on a tiny random Llama and on hand-made activations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from megatron_tf.labeling.sae.latents import parse_latents, read_latents, write_latents
from megatron_tf.labeling.sae.pipeline import LatentPipeline
from megatron_tf.labeling.sae.reference_lm import HFReferenceLM
from megatron_tf.labeling.sae.select import auroc, average_ranks, fill_thresholds, select_latents
from megatron_tf.labeling.sae.stats import LatentStats
from tests.labeling.sae.tiny_models import LinearReluEncoder, SetEncoder, onehot_lm

TEXTS = ["The patient was admitted with pneumonia and treated with amoxicillin for seven days.",
         "Photosynthesis in the chloroplast converts light into chemical energy.",
         "x"]


def _manual_rows(lm, enc, ids, window):
    """Residual after block L via output_hidden_states (hidden_states[L + 1]), per BOS-prefixed window, BOS row
    dropped; independent of the hook code."""
    rows, bos_rows = [], []
    for a in range(0, len(ids), window):
        seq = [lm.bos_id] + list(ids[a : a + window])
        with torch.no_grad():
            hs = lm.model(torch.tensor([seq]), output_hidden_states=True).hidden_states[lm.layer + 1][0]
        rows.append(enc.encode(hs[1:]))
        bos_rows.append(enc.encode(hs[:1]))
    return torch.cat(rows).numpy(), torch.cat(bos_rows).numpy()


def test_windows_bos_excluded_and_stats(llama_dir):
    lm = HFReferenceLM(llama_dir, 1, context_size=6)
    enc = LinearReluEncoder(32, 16, seed=1, bias=0.1)
    pipe = LatentPipeline(lm, enc, batch_size=3)
    docs = pipe.tokenize(TEXTS)
    assert docs[0].ids.size > 10  # several windows of 5 tokens
    acts = pipe.document_activations(docs, np.arange(16))
    manual = [_manual_rows(lm, enc, d.ids.tolist(), 5) for d in docs]
    for a, (m, _) in zip(acts, manual):
        np.testing.assert_allclose(a, m, rtol=0, atol=1e-5)
    # a subset of latents, in a given order
    sub = pipe.document_activations(docs, np.array([7, 2]))
    np.testing.assert_array_equal(sub[0], acts[0][:, [7, 2]])

    st = LatentStats(16, ["domain", "other"], top_n=3)
    st.scan(pipe, 0, docs[:1], 0)
    st.scan(pipe, 1, docs[1:], 1)
    x = np.concatenate([m for m, _ in manual]).astype(np.float64)
    mean, std, n = st.mean_std()
    assert n == x.shape[0] == sum(d.ids.size for d in docs)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, x.std(0), rtol=1e-5, atol=1e-7)
    with_bos = np.concatenate([x] + [b for _, b in manual])
    assert np.abs(with_bos.mean(0) - mean).max() > 1e-3  # BOS rows would have changed the statistics
    np.testing.assert_array_equal(st.n_active[0], (manual[0][0] > 0).sum(0))
    np.testing.assert_allclose(st.max[1], np.concatenate([m for m, _ in manual[1:]]).max(0), rtol=1e-6)
    dm, dg = st.doc_mean_matrix()
    np.testing.assert_allclose(dm, np.stack([m.mean(0) for m, _ in manual]), rtol=1e-5)
    assert dg.tolist() == [0, 1, 1]
    for j in range(16):
        occ = st.top_occurrences(j)
        want = np.sort(x[:, j][x[:, j] > 0])[::-1][:3]
        np.testing.assert_allclose([v for v, _, _ in occ], want, rtol=1e-6)
        for v, d, p in occ:
            assert abs(manual[d][0][p, j] - v) < 1e-5
    st2 = LatentStats.load(_save(st))
    np.testing.assert_array_equal(st2.sum, st.sum)
    assert st2.top_occurrences(5) == st.top_occurrences(5)


def _save(st):
    import tempfile

    path = tempfile.mktemp(suffix=".npz")
    st.save(path)
    return path


def test_dimension_mismatch_is_an_error(llama_dir):
    lm = HFReferenceLM(llama_dir, 0, context_size=8)
    with pytest.raises(ValueError, match="d_model = 32"):
        LatentPipeline(lm, LinearReluEncoder(64, 8))


def test_auroc_against_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 4, (37, 6)).astype(float)  # many ties
    pos = rng.random(37) < 0.4
    want = [np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a in s[pos, j] for b in s[~pos, j]])
            for j in range(6)]
    np.testing.assert_allclose(auroc(s, pos), want, rtol=1e-12)
    r = average_ranks(np.array([[3.0], [1.0], [3.0], [2.0]]))
    assert r[:, 0].tolist() == [3.5, 1.0, 3.5, 2.0]


def test_contrastive_selection_picks_the_domain_latent(hf_tok):
    med = ["The patient has pneumonia.", "Insulin for the patient.", "The patient: pneumonia and insulin."]
    bio = ["The chloroplast and the mitochondria.", "Photosynthesis in the chloroplast.", "The enzymes."]
    ids = lambda words: {i for w in words for i in hf_tok.tokenize(w)}  # noqa: E731
    common = ids([" the", "The", "."])
    medical = ids([" pneumonia", " patient", "Insulin", " insulin"]) - common
    biology = ids([" chloroplast", " mitochondria", "Photosynthesis", " enzymes"]) - common - medical
    enc = SetEncoder(hf_tok.vocab_size, [common, medical, biology], [1.0, 2.0, 3.0], bos_id=hf_tok.eod)
    pipe = LatentPipeline(onehot_lm(hf_tok, 4), enc, batch_size=2)
    st = LatentStats(3, ["domain", "other"])
    st.scan(pipe, 0, pipe.tokenize(med), 0)
    st.scan(pipe, 1, pipe.tokenize(bio), 3)
    assert st.max.max() < 100  # the BOS (activation 100 on every latent) never entered
    ll, t = select_latents(st, top_k=5, min_freq=0.01, min_ratio=2.0, threshold_k=1.0)
    assert [x.id for x in ll.latents] == [1]
    assert t.auroc.tolist() == [t.auroc[0], 1.0, 0.0]
    n_med = sum(len(hf_tok.tokenize(m)) for m in med)
    n_med_active = sum(sum(i in medical for i in hf_tok.tokenize(m)) for m in med)
    n_bio = sum(len(hf_tok.tokenize(b)) for b in bio)
    n_bio_active = sum(sum(i in medical for i in hf_tok.tokenize(b)) for b in bio)
    assert t.freq_domain[1] == n_med_active / n_med and t.freq_other[1] == n_bio_active / n_bio
    assert t.ratio[1] == ((n_med_active + 1) / (n_med + 2)) / ((n_bio_active + 1) / (n_bio + 2))
    mean, std, _ = st.mean_std()
    assert ll.latents[0].threshold == pytest.approx(mean[1] + std[1])
    # the latent list file round-trips, keeps the selection statistics
    ll2 = fill_thresholds(parse_latents([{"id": 2, "description": "bio"}, 0]), st, 4.0)
    assert ll2.thresholds().tolist() == pytest.approx([mean[2] + 4 * std[2], mean[0] + 4 * std[0]])


def test_latent_file_format_and_errors(tmp_path):
    p = tmp_path / "l.json"
    p.write_text(json.dumps({"latents": [{"index": 5, "description": "fever", "threshold": 1.5, "score": 0.9,
                                          "neuronpedia": "x"}, {"id": 7, "threshold": 2}]}))
    ll = read_latents(str(p))
    assert ll.ids.tolist() == [5, 7] and ll.thresholds().tolist() == [1.5, 2.0]
    write_latents(str(tmp_path / "o.json"), ll)
    again = read_latents(str(tmp_path / "o.json"))
    assert again.to_json() == ll.to_json() and again.latents[0].extra == {"neuronpedia": "x"}
    assert again.sha256() == ll.sha256()
    ll.check_range(8)
    with pytest.raises(ValueError, match=r"outside the SAE's 6 latents"):
        ll.check_range(6)
    with pytest.raises(ValueError, match="sae_label.py thresholds"):
        parse_latents([{"id": 1}]).thresholds()
    with pytest.raises(ValueError, match="listed twice"):
        parse_latents([1, 1])
    with pytest.raises(ValueError, match="integer 'id'"):
        parse_latents([{"description": "x"}])
    with pytest.raises(ValueError, match="finite number"):
        parse_latents([{"id": 1, "threshold": "high"}])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        read_latents(str(tmp_path / "bad.json"))
