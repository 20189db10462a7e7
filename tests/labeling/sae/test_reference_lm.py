"""Reference LMs (labeling/sae/reference_lm.py): the hook reads the residual stream after block L, which is
hidden_states[L + 1] (not hidden_states[L]); padding does not change it; blocks after L are not run."""

from __future__ import annotations

import pytest
import torch

from megatron_tf.labeling.sae.reference_lm import HFReferenceLM, find_blocks, load_reference_lm


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_hook_is_block_output_equal_to_hidden_states_l_plus_1(arch, llama_dir, gpt2_dir):
    path = llama_dir if arch == "llama" else gpt2_dir
    seqs = [[1, 40, 41, 42, 43, 44, 45], [1, 50, 51, 52]]
    for layer in range(3):
        lm = HFReferenceLM(path, layer, context_size=64)
        got = lm.residual_batch(seqs)
        for s, h in zip(seqs, got):
            with torch.no_grad():
                out = lm.model(torch.tensor([s]), output_hidden_states=True)
            hs = out.hidden_states
            assert len(hs) == 4 and h.shape == (len(s), lm.d_model)
            if layer < 2:
                torch.testing.assert_close(h, hs[layer + 1][0], rtol=0, atol=1e-5)
            # hidden_states[L] is the input of block L, not its output
            assert (h - hs[layer][0]).abs().max() > 1e-2
        if layer == 2:
            # the last block: hidden_states[3] has the final norm applied; the hook gives the raw block output
            seen: dict = {}

            def keep(_m, _i, o, seen=seen):
                seen["h"] = o[0] if isinstance(o, tuple) else o

            handle = find_blocks(lm.model, 3)[2].register_forward_hook(keep)
            with torch.no_grad():
                hs = lm.model(torch.tensor([seqs[0]]), output_hidden_states=True).hidden_states
            handle.remove()
            torch.testing.assert_close(got[0], seen["h"][0], rtol=0, atol=1e-5)
            assert (got[0] - hs[3][0]).abs().max() > 1e-2


def test_padding_invariance_and_early_stop(llama_dir):
    lm = HFReferenceLM(llama_dir, 0, context_size=64)
    calls = []
    h = lm.blocks[1].register_forward_hook(lambda *a: calls.append(1))
    seqs = [[1, 5, 6], [1, 7, 8, 9, 10, 11, 12, 13], [1]]
    batched = lm.residual_batch(seqs)
    alone = [lm.residual_batch([s])[0] for s in seqs]
    h.remove()
    assert calls == []  # block 1 never ran
    for a, b in zip(batched, alone):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_tokenizer_offsets_bos_and_errors(llama_dir, tmp_path):
    lm = load_reference_lm(llama_dir, 1, context_size=64)
    assert lm.bos_id == lm.tokenizer.bos_token_id and lm.num_layers == 3 and lm.d_model == 32
    text = "Ménière's <bos> disease"
    ids, offs = lm.tokenize_with_offsets(text)
    assert lm.bos_id not in ids  # "<bos>" in a document is text
    assert {c for a, b in offs for c in range(a, b)} == set(range(len(text)))  # character spans cover the text
    assert all(0 <= a < b <= len(text) for a, b in offs) and offs == sorted(offs)
    assert lm.tokenizer.decode(ids) == text
    with pytest.raises(ValueError, match="outside the 3 blocks"):
        HFReferenceLM(llama_dir, 3, context_size=64)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        HFReferenceLM(llama_dir, 0, context_size=4096)
    with pytest.raises(FileNotFoundError, match="Hugging Face"):
        load_reference_lm(str(tmp_path), 0)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "latest").write_text("iter_0000010")
    with pytest.raises(Exception, match="iter_0000010"):  # a broken trainer checkpoint: named, not "not HF"
        load_reference_lm(str(tmp_path / "ckpt"), 0)


def test_megatron_tf_checkpoint_as_reference_lm(tmp_path):
    """A trainer checkpoint opens as a reference LM: the run's tokenizer, BOS = <|endoftext|>, and the residual
    after block L equals the output of decoder.layers[L] of the same weights run in full (float64, one sequence,
    unpadded), for a padded batch of two lengths."""
    from megatron_tf.checkpoint import load_model
    from megatron_tf.training import pretrain
    from tests.training.synth import make_data, tiny_args

    prefix = make_data(tmp_path, n_docs=40)
    save = str(tmp_path / "ckpt")
    pretrain(tiny_args(prefix, iters=2, extra=["--save", save, "--eval-iters", "0"]))
    lm = load_reference_lm(save, 0, context_size=16)
    model, _, _, tok, _ = load_model(save, dtype=torch.float64)
    assert lm.num_layers == 2 and lm.d_model == 32 and lm.layer == 0 and lm.bos_id == tok.eod
    assert lm.describe()["tokenizer_fingerprint"] == tok.fingerprint
    ids, offs = lm.tokenize_with_offsets("5 17 99")
    assert ids == [5, 17, 99] and offs == [(0, 1), (2, 4), (5, 7)]
    seqs = [[tok.eod, 5, 17, 99, 3, 8], [tok.eod, 42, 7]]
    got = lm.residual_batch(seqs)
    out = []
    handle = model.decoder.layers["0"].register_forward_hook(lambda m, i, o: out.append(o[:, 0]))
    for s, h in zip(seqs, got):  # reference: the whole float64 model on one unpadded sequence, block 0 hooked
        with torch.no_grad():
            model(input_ids=torch.tensor([s]))
        assert h.shape == (len(s), 32)
        torch.testing.assert_close(h.double(), out[-1], rtol=1e-5, atol=1e-5)
    handle.remove()
    with pytest.raises(ValueError, match="outside the 2 blocks"):
        load_reference_lm(save, 2, context_size=16)
    with pytest.raises(ValueError, match="--seq-length 16"):
        load_reference_lm(save, 0, context_size=64)
