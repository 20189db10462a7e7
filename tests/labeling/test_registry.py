"""The labeler registry (labeling/registry.py): every registered name builds its labeler from the annotate config and
its options; the blocklist labeler built through it flags hand-computed tokens; unknown names and wrong options give
clear errors; the parser carries every labeler's flags."""

from __future__ import annotations

import os

import numpy as np
import pytest

from megatron_tf.labeling.annotate import AnnotateConfig, build_parser
from megatron_tf.labeling.classifier.config import ClassifierOptions
from megatron_tf.labeling.classifier.labeler import ClassifierLabeler
from megatron_tf.labeling.registry import LABELERS, REGISTRY, build_labeler, labeler_spec, options_from_args
from megatron_tf.labeling.sae.config import SAELabelerOptions
from megatron_tf.labeling.sae.labeler import SAELabeler
from megatron_tf.labeling.sae.latents import parse_latents, write_latents
from megatron_tf.tokenizer.tokenizer import build_tokenizer
from tests.labeling.classifier.helpers import tiny_artifact
from tests.labeling.classifier.helpers import tokenizer as null_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_SP = os.path.join(REPO, "data", "demo", "tokenizer", "demo_sp.model")

TEXT = "The patient had pneumonia, two tumors and an earache; the Asthma nurse saw the year end."
# the demo SentencePiece model's pieces of TEXT (checked below, so a changed model fails loudly, not silently)
PIECES = ["The", " patient", " had", " pneumonia", ",", " two", " tumors", " and", " an", " ear", "ache", ";", " the",
          " A", "st", "hma", " nurse", " saw", " the", " year", " end", "."]
TERMS = ["pneumonia", "tumor", "ear", "asthma"]
# by hand (blocklist rule: whole words, case-insensitive, plural 's'/'es', a token overlapping a match is flagged):
# " pneumonia"; " tumors" (plural of tumor); " A" "st" "hma" (Asthma). Not " ear" "ache" ("ear" inside "earache") nor
# " year" ("ear" inside "year").
FLAGGED = [3, 6, 13, 14, 15]
FLAGGED_NO_PLURALS = [3, 13, 14, 15]


def _cfg(labeler: str, **kw) -> AnnotateConfig:
    return AnnotateConfig(data_prefix="unused", labeler=labeler, **kw)


@pytest.fixture(scope="module")
def demo_tok():
    return build_tokenizer("SentencePieceTokenizer", DEMO_SP)


def test_registered_names_and_choices():
    assert LABELERS == ("blocklist", "sae", "classifier") == tuple(REGISTRY)
    assert [REGISTRY[n].options_class() for n in LABELERS] == [None, SAELabelerOptions, ClassifierOptions]


@pytest.mark.parametrize("plurals,flagged", [(True, FLAGGED), (False, FLAGGED_NO_PLURALS)])
def test_blocklist_flags_the_hand_computed_tokens(tmp_path, demo_tok, plurals, flagged):
    terms = tmp_path / "terms.txt"
    terms.write_text("# tiny list\n" + "\n".join(TERMS) + "\n", encoding="utf-8")
    ids = demo_tok.tokenize(TEXT)
    assert [demo_tok.detokenize([i]) for i in ids] == PIECES
    lab = build_labeler(_cfg("blocklist", terms=str(terms), plurals=plurals), demo_tok)
    (scores,) = lab.score_documents([np.array(ids + [demo_tok.eod])])
    want = np.zeros(len(ids) + 1)
    want[flagged] = 1.0
    np.testing.assert_array_equal(scores, want)
    assert lab.describe()["terms_file"] == "terms.txt"


def test_blocklist_needs_terms(demo_tok):
    with pytest.raises(ValueError, match="--labeler blocklist needs --terms FILE"):
        build_labeler(_cfg("blocklist"), demo_tok)


def test_sae_builds_from_its_options_without_loading_models(tmp_path, demo_tok):
    latents = str(tmp_path / "latents.json")
    write_latents(latents, parse_latents([{"id": 7, "threshold": 1.5}, {"id": 3, "threshold": 0.25}]))
    opts = SAELabelerOptions(sae_reference_lm=str(tmp_path), sae="sae-dir", sae_latents=latents,
                             sae_min_seed_latents=1)
    lab = build_labeler(_cfg("sae"), demo_tok, opts)
    assert isinstance(lab, SAELabeler) and lab.options is opts
    assert sorted(lab.latent_ids.tolist()) == [3, 7] and lab.min_seed_latents == 1
    assert lab._ref_lm is None and lab._encoder is None  # nothing loaded at build time (sae-lens stays lazy)
    with pytest.raises(ValueError, match="--labeler sae needs the SAE labeler options"):
        build_labeler(_cfg("sae"), demo_tok)


def test_classifier_builds_from_its_options_and_checks_the_tokenizer(tmp_path, demo_tok):
    artifact = tiny_artifact(tmp_path / "cls")  # made with a NullTokenizer(64)
    opts = ClassifierOptions(classifier=artifact, classifier_device="cpu", classifier_batch_tokens=64,
                             classifier_group_tokens=60, classifier_threads=1)
    lab = build_labeler(_cfg("classifier"), null_tokenizer(), opts)
    assert isinstance(lab, ClassifierLabeler)
    assert (lab.path, lab.device_spec, lab.dtype) == (os.path.abspath(artifact), "cpu", "float32")
    with pytest.raises(ValueError, match="tokenizer fingerprint"):  # the demo tokenizer is not the artifact's
        build_labeler(_cfg("classifier"), demo_tok, opts)
    with pytest.raises(ValueError, match="--labeler classifier needs --classifier DIR"):
        build_labeler(_cfg("classifier"), null_tokenizer())


def test_unknown_name_lists_the_registered_names(demo_tok):
    for call in (lambda: labeler_spec("keywords"), lambda: build_labeler(_cfg("keywords"), demo_tok)):
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        assert "'keywords'" in msg and all(repr(n) in msg for n in ("blocklist", "sae", "classifier"))


def test_wrong_options_type_is_refused(tmp_path, demo_tok):
    with pytest.raises(ValueError, match="--labeler sae takes SAELabelerOptions, got ClassifierOptions"):
        build_labeler(_cfg("sae"), demo_tok, ClassifierOptions())
    with pytest.raises(ValueError, match="--labeler blocklist takes no options, got ClassifierOptions"):
        build_labeler(_cfg("blocklist", terms="x"), demo_tok, ClassifierOptions())


def test_gpu_rank_pinning():
    """Under torchrun a GPU rank (device cuda:K) rewrites 'cuda' (both) and 'auto' (classifier) to cuda:K."""
    sae, cls = REGISTRY["sae"].pin_device, REGISTRY["classifier"].pin_device
    assert REGISTRY["blocklist"].pin_device is None  # CPU labeler: --workers > 1 allowed on a GPU rank
    assert sae(SAELabelerOptions(sae_device="cuda"), "cuda:3").sae_device == "cuda:3"
    assert sae(SAELabelerOptions(sae_device="cpu"), "cuda:3").sae_device == "cpu"
    assert [cls(ClassifierOptions(classifier_device=d), "cuda:2").classifier_device
            for d in ("auto", "cuda", "cpu", "cuda:0")] == ["cuda:2", "cuda:2", "cpu", "cuda:0"]


def test_parser_options_round_trip():
    args = build_parser().parse_args(["--labeler", "classifier", "--classifier", "D", "--classifier-threads", "3",
                                      "--sae-device", "cuda"])
    assert options_from_args("blocklist", args) is None
    c = options_from_args("classifier", args)
    assert isinstance(c, ClassifierOptions) and (c.classifier, c.classifier_threads) == ("D", 3)
    assert options_from_args("sae", args).sae_device == "cuda"
