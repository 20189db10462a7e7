"""Tiny tokenizers trained inside the tests (about a second): SentencePiece BPE with byte fallback, and a Hugging Face
byte-level BPE, both with the three reserved tokens."""

from __future__ import annotations

import os

from megatron_tf.tokenizer.tokenizer import RESERVED_TOKENS, HFTokenizer, SentencePieceTokenizer

CORPUS = [
    "The patient was admitted with pneumonia and treated with amoxicillin for seven days.",
    "Every year the ear, nose and throat clinic sees many cases of otitis media in children.",
    "Photosynthesis in the chloroplast converts light into chemical energy stored as glucose.",
    "Heart attack symptoms include chest pain, shortness of breath and nausea.",
    "The nurse measured blood pressure; hypertension was diagnosed by the physician.",
    "Mitochondria produce ATP; enzymes catalyse reactions in the cytoplasm of the organism.",
    "Diabetes mellitus is managed with insulin, diet and exercise. Ménière's disease affects the inner ear.",
    "A café in Zürich served crème brûlée while the chemotherapy ward was busy with oncology patients.",
    "Children learn to read and write at school; the teacher gives homework every week.",
    "Die Grippe ist eine Krankheit. La fièvre et la toux sont des symptômes fréquents.",
] * 20


def train_sp(directory: str, vocab_size: int = 400) -> SentencePieceTokenizer:
    import sentencepiece as spm

    prefix = os.path.join(directory, "sp")
    if not os.path.exists(prefix + ".model"):
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(CORPUS), model_prefix=prefix, vocab_size=vocab_size, model_type="bpe",
            byte_fallback=True, control_symbols=list(RESERVED_TOKENS), character_coverage=0.98,
            minloglevel=2, num_threads=1)
    return SentencePieceTokenizer(prefix + ".model", num_threads=1)


def train_hf_bytelevel(directory: str, vocab_size: int = 400) -> HFTokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path = os.path.join(directory, "hf_tokenizer.json")
    if not os.path.exists(path):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(RESERVED_TOKENS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(CORPUS, trainer)
        tok.save(path)
    return HFTokenizer(path)
