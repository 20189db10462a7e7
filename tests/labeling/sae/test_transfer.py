"""Character-span transfer (labeling/sae/transfer.py): the exact byte map of document text (invalid UTF-8 included)
and reference-token -> training-token labels between two different real tokenizers, against brute force."""

from __future__ import annotations

import numpy as np

from megatron_tf.labeling.sae.transfer import document_text, transfer_labels
from megatron_tf.labeling.token_text import TokenBytes
from tests.labeling.test_blocklist import _random_texts


def _check_byte_map(data: bytes, text: str, c2b) -> None:
    c2b = np.arange(len(text) + 1) if c2b is None else c2b
    assert len(c2b) == len(text) + 1 and c2b[0] == 0 and c2b[-1] == len(data)
    for c, ch in enumerate(text):
        piece = data[c2b[c] : c2b[c + 1]]
        try:
            assert piece.decode("utf-8") == ch
        except UnicodeDecodeError:
            assert ch == "\ufffd" and len(piece) == 1  # one replacement character per invalid byte


def test_document_text_exact_byte_map_with_invalid_utf8():
    cases = [b"plain ascii", "Ménière 中文 😀".encode(), b"ab\xc3\xa9\xff\xe2\x82x", b"\xe4", b"\xf0\x9f\x98", b"",
             "\ufffd real replacement char".encode() + b"\x80"]
    for data in cases:
        text, c2b = document_text(data)
        text.encode("utf-8")  # valid for any tokenizer: no lone surrogates
        _check_byte_map(data, text, c2b)


def _brute_force(ref_offs, ref_forget, c2b, n_chars, train_offs) -> list[bool]:
    c2b = list(range(n_chars + 1)) if c2b is None else list(c2b)
    forget_bytes = set()
    for (s, e), f in zip(ref_offs, ref_forget):
        if f:
            for c in range(s, e):
                forget_bytes.update(range(c2b[c], c2b[c + 1]))
    return [any(b in forget_bytes for b in range(train_offs[i], train_offs[i + 1]))
            for i in range(len(train_offs) - 1)]


def _pipeline_inputs(train_tok, ref_tok, ids):
    data, offs = TokenBytes.from_tokenizer(train_tok).decode(np.asarray(ids))
    text, c2b = document_text(data)
    rids, roffs = ref_tok.tokenize_with_offsets(text)
    return data, offs, text, c2b, np.asarray(roffs, dtype=np.int64).reshape(-1, 2)


def test_known_sentence_between_two_tokenizers(sp_tok, hf_tok):
    # training tokens: SentencePiece (with byte fallback); reference tokens: HF byte-level BPE
    ids = sp_tok.tokenize("The patient had pneumonia, crème brûlée and 中文.") + [sp_tok.eod]
    data, offs, text, c2b, roffs = _pipeline_inputs(sp_tok, hf_tok, ids)
    w0 = text.index("pneumonia")
    w1 = w0 + len("pneumonia")
    ref_forget = (roffs[:, 0] < w1) & (roffs[:, 1] > w0)  # reference tokens overlapping the word
    flags = transfer_labels(roffs, ref_forget, c2b, offs)
    assert flags.tolist() == _brute_force(roffs, ref_forget, c2b, len(text), offs)
    marked = b"".join(data[offs[i] : offs[i + 1]] for i in np.flatnonzero(flags))
    assert b"pneumonia" in marked.replace(b" ", b"") and b"patient" not in marked
    assert not flags[-1]  # the end-of-document token has no text


def test_random_texts_byte_fallback_and_invalid_utf8(sp_tok, hf_tok):
    rng = np.random.default_rng(3)
    byte_id = {sp_tok._sp.id_to_piece(i): i for i in range(sp_tok.vocab_size) if sp_tok._sp.is_byte(i)}
    total = 0
    for k, t in enumerate(_random_texts(120, seed=11)):
        for train_tok, ref_tok in ((sp_tok, hf_tok), (hf_tok, sp_tok)):
            ids = train_tok.tokenize(t)
            if train_tok is sp_tok and k % 4 == 0:  # a cut multi-byte character: invalid UTF-8 in the document
                ids = [byte_id["<0xE4>"], byte_id["<0xB8>"]] + ids + [byte_id["<0xF0>"]]
            data, offs, text, c2b, roffs = _pipeline_inputs(train_tok, ref_tok, ids)
            ref_forget = rng.random(roffs.shape[0]) < 0.3
            got = transfer_labels(roffs, ref_forget, c2b, offs)
            assert got.tolist() == _brute_force(roffs, ref_forget, c2b, len(text), offs), t
            total += int(got.sum())
    assert total > 200


def test_ascii_identity_map_and_empty_spans():
    offs = np.array([0, 3, 3, 7, 9])  # tokens "abc", "" (empty), "defg", "hi"
    ref = np.array([[0, 2], [2, 2], [5, 8]])
    np.testing.assert_array_equal(transfer_labels(ref, np.array([False, True, False]), None, offs), [0, 0, 0, 0])
    np.testing.assert_array_equal(transfer_labels(ref, np.array([True, False, True]), None, offs), [1, 0, 1, 1])


def test_docs_worked_example():
    """docs/sae_labels.md and the transfer module docstring: "Take aspirin." """
    ref = np.array([[0, 4], [4, 8], [8, 12], [12, 13]])  # "Take", " asp", "irin", "."
    train = np.array([0, 6, 10, 13])  # "Take a", "spir", "in."
    assert transfer_labels(ref, np.array([0, 1, 1, 0], bool), None, train).tolist() == [True, True, True]
    assert transfer_labels(ref, np.array([0, 0, 0, 1], bool), None, train).tolist() == [False, False, True]
