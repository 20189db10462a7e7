"""The tokenizer files of a Hugging Face export: `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`
(and, for SentencePiece, the original `tokenizer.model`), so that `AutoTokenizer.from_pretrained(export)` encodes text
to exactly the ids of the project's tokenizer.

SentencePiece (the project's BPE models, megatron_tf/tokenizer/train.py) -> a `tokenizers` BPE, built from the model
proto (no transformers converter involved):
    vocab     piece -> id for every piece (control, unknown and byte pieces included, same ids)
    merges    every split (a, b) of a normal piece p with a and b in the vocabulary, ranked by p's id (SentencePiece
              BPE scores are -rank, so a lower id is merged first), ties by (id a, id b)
    pre-tok.  Metaspace("▁", prepend_scheme="never", split=True): " " -> "▁" and a word starts at each "▁"
              (SentencePiece's escape_whitespaces with identity normalization, add_dummy_prefix=False; its pieces never
              span a "▁" inside, so splitting there changes no merge)
    model     byte_fallback=True (characters outside the vocabulary -> <0xNN> pieces), unk "<unk>"
    decoder   "▁" -> " ", byte fallback, fuse (no strip: there is no dummy prefix)
Models trained with a normalization rule other than identity, a dummy prefix, or a model type other than BPE are
refused (the conversion would not be exact). Tested: every held-out document of data/demo encodes to the same ids.

An HF tokenizer.json run: the file is copied with one change, the post-processor (below).

Special tokens (both kinds): eos = `<|endoftext|>` (the end-of-document id), pad = `<|pad|>`, bos = `<|endoftext|>`:
the project's models start every document after an `<|endoftext|>` (documents are packed with the eod between them,
and evaluation prepends it, megatron_tf/evaluation/mcq.py), so the tokenizer adds it in front of a text when
`add_special_tokens=True` (the transformers default, used by lm-evaluation-harness and pipelines), the way Llama's
tokenizer adds `<s>`. `tokenizer(text, add_special_tokens=False).input_ids` is the project's `tokenize(text)`.
`<|hidden|>` (and SentencePiece's `<unk>`) are special added tokens too. Unlike the project's tokenizers, a
transformers tokenizer turns the literal string "<|endoftext|>" inside a text into the special id (the transformers
convention); the project's never does.
"""

from __future__ import annotations

import json
import os
import shutil

from .tokenizer import EOD_TOKEN, HIDDEN_TOKEN, PAD_TOKEN, HFTokenizer, SentencePieceTokenizer, Tokenizer

SP_NORMAL, SP_UNKNOWN, SP_CONTROL, SP_USER_DEFINED, SP_UNUSED, SP_BYTE = 1, 2, 3, 4, 5, 6


def sentencepiece_to_tokenizers_json(model_path: str) -> str:
    """tokenizer.json text equivalent to a SentencePiece BPE model (module doc); ValueError naming the field if the
    model cannot be converted exactly."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTok

    m = pb.ModelProto()
    with open(model_path, "rb") as fh:
        m.ParseFromString(fh.read())
    ts, ns = m.trainer_spec, m.normalizer_spec
    problems = []
    if ts.model_type != pb.TrainerSpec.BPE:
        problems.append(f"trainer_spec.model_type {pb.TrainerSpec.ModelType.Name(ts.model_type)} (need BPE)")
    if ns.name not in ("identity", "") or ns.precompiled_charsmap:
        problems.append(f"normalizer_spec.name {ns.name!r} (need 'identity')")
    if ns.add_dummy_prefix:
        problems.append("normalizer_spec.add_dummy_prefix true (need false)")
    if ns.remove_extra_whitespaces:
        problems.append("normalizer_spec.remove_extra_whitespaces true (need false)")
    if ts.treat_whitespace_as_suffix:
        problems.append("trainer_spec.treat_whitespace_as_suffix true (need false)")
    if problems:
        raise ValueError(f"{model_path}: cannot convert this SentencePiece model to an exact tokenizer.json: "
                         + "; ".join(problems) + " (tools/train_tokenizer.py makes convertible models)")
    vocab = {p.piece: i for i, p in enumerate(m.pieces)}
    ranked = []
    for i, p in enumerate(m.pieces):
        if p.type != SP_NORMAL or len(p.piece) < 2:
            continue
        splits = [(vocab[p.piece[:k]], vocab[p.piece[k:]], p.piece[:k], p.piece[k:]) for k in range(1, len(p.piece))
                  if p.piece[:k] in vocab and p.piece[k:] in vocab]
        ranked.extend((i, ia, ib, a, b) for ia, ib, a, b in splits)
    merges = [(a, b) for _, _, _, a, b in sorted(ranked)]
    unk = m.pieces[ts.unk_id].piece if 0 <= ts.unk_id < len(m.pieces) else None
    tok = HFTok(models.BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=ts.byte_fallback, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    special = [p.piece for p in m.pieces if p.type in (SP_UNKNOWN, SP_CONTROL)]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    user = [p.piece for p in m.pieces if p.type == SP_USER_DEFINED]
    if user:
        tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in user])
    return tok.to_str()


def _with_bos_post_processor(tokenizer_json: str, bos: str, bos_id: int) -> str:
    """tokenizer.json text whose post-processor puts `bos` in front of a text (a ByteLevel one is kept before it)."""
    cfg = json.loads(tokenizer_json)
    template = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}
    old = cfg.get("post_processor")
    if isinstance(old, dict) and old.get("type") == "ByteLevel":
        cfg["post_processor"] = {"type": "Sequence", "processors": [old, template]}
    else:
        cfg["post_processor"] = template
    return json.dumps(cfg, ensure_ascii=False, indent=2) + "\n"


def _ensure_special(tokenizer_json: str, tokens: dict[str, int]) -> str:
    """Mark the reserved tokens special in an HF tokenizer.json's added_tokens (adding entries for vocabulary tokens
    that are not added tokens yet), so transformers never splits them and skip_special_tokens drops them."""
    cfg = json.loads(tokenizer_json)
    added = cfg.setdefault("added_tokens", [])
    by_content = {a["content"]: a for a in added}
    for content, i in tokens.items():
        if content in by_content:
            by_content[content]["special"] = True
        else:
            added.append({"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True})
    added.sort(key=lambda a: a["id"])
    return json.dumps(cfg, ensure_ascii=False)


def special_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """bos / eos / pad ids of the export (module doc)."""
    return {"bos_token_id": tokenizer.eod, "eos_token_id": tokenizer.eod, "pad_token_id": tokenizer.pad}


def write_hf_tokenizer_files(tokenizer: Tokenizer, out_dir: str, model_max_length: int | None = None) -> list[str]:
    """Write the tokenizer files into `out_dir` (an existing, normally temporary, directory). Returns their names.
    A NullTokenizer (synthetic ids, no text) writes nothing."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        text = sentencepiece_to_tokenizers_json(tokenizer.path)
        shutil.copyfile(tokenizer.path, os.path.join(out_dir, "tokenizer.model"))
        names = ["tokenizer.model"]
    elif isinstance(tokenizer, HFTokenizer):
        text = _ensure_special(tokenizer._raw.decode("utf-8"), {EOD_TOKEN: tokenizer.eod,
                                                                  HIDDEN_TOKEN: tokenizer.hidden,
                                                                  PAD_TOKEN: tokenizer.pad})
        names = []
    else:
        return []
    text = _with_bos_post_processor(text, EOD_TOKEN, tokenizer.eod)
    unk = tokenizer.token_to_id("<unk>") is not None and isinstance(tokenizer, SentencePieceTokenizer)
    special = {"bos_token": EOD_TOKEN, "eos_token": EOD_TOKEN, "pad_token": PAD_TOKEN,
               **({"unk_token": "<unk>"} if unk else {}), "additional_special_tokens": [HIDDEN_TOKEN]}
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", **special, "add_bos_token": True,
                  "add_eos_token": False, "clean_up_tokenization_spaces": False, "padding_side": "right",
                  "model_max_length": int(model_max_length) if model_max_length else int(1e30),
                  "megatron_tf_tokenizer": {"type": tokenizer.type_name, "fingerprint": tokenizer.fingerprint}}
    files = {"tokenizer.json": text, "tokenizer_config.json": json.dumps(tok_config, indent=2) + "\n",
             "special_tokens_map.json": json.dumps(special, indent=2) + "\n"}
    for name, content in files.items():
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as fh:
            fh.write(content)
    return [*names, *files]


def add_reserved_tokens(kind: str, src: str, dst: str) -> list[str]:
    """Copy a tokenizer file `src` to `dst` with the reserved tokens it lacks appended after its last id (an outside
    model's tokenizer, e.g. Llama's, has none of them). kind: "sp" (a SentencePiece model: control pieces, never
    produced from text) or "hf" (a tokenizer.json: special added tokens). Encoding of text is unchanged. Returns the
    tokens added, in id order (<|endoftext|>, <|hidden|>, <|pad|> among those missing)."""
    from .tokenizer import RESERVED_TOKENS

    if kind == "sp":
        from sentencepiece import sentencepiece_model_pb2 as pb

        m = pb.ModelProto()
        with open(src, "rb") as fh:
            m.ParseFromString(fh.read())
        have = {p.piece for p in m.pieces}
        added = [t for t in RESERVED_TOKENS if t not in have]
        for t in added:
            piece = m.pieces.add()
            piece.piece, piece.score, piece.type = t, 0.0, SP_CONTROL
        data = m.SerializeToString()
        with open(dst, "wb") as fh:
            fh.write(data)
        return added
    if kind != "hf":
        raise ValueError(f"add_reserved_tokens: kind must be 'sp' or 'hf', got {kind!r}")
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTok

    with open(src, encoding="utf-8") as fh:
        tok = HFTok.from_str(fh.read())
    added = [t for t in RESERVED_TOKENS if tok.token_to_id(t) is None]
    for t in added:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)])
    with open(dst, "w", encoding="utf-8") as fh:
        fh.write(tok.to_str())
    return added
