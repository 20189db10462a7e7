"""lm-evaluation-harness (`lm_eval --model hf`, offline, a subprocess) on a tiny exported model with the local task
tests/evaluation/lm_eval_tasks/mtf_test_cloze.yaml: its per-choice log-likelihoods are the project's cloze
evaluation's (megatron_tf/evaluation/mcq.py) to 1e-4, so lm-eval's `acc` equals the project's `acc` and lm-eval's
`acc_norm` the project's `acc_norm`; write_mcq_tasks makes the project's MCQ files into such tasks."""

import glob
import json
import os

import pytest

from megatron_tf.evaluation.eval_sets import MCQSet, MCQuestion, build_mcq_sets
from megatron_tf.evaluation.lm_eval_bridge import run_lm_eval, write_mcq_tasks
from megatron_tf.evaluation.mcq import evaluate_mcq
from megatron_tf.model import ModelConfig, build_gpt_stage
from megatron_tf.model.hf_export import export_llama
from megatron_tf.tokenizer.tokenizer import SentencePieceTokenizer

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

HERE = os.path.dirname(os.path.abspath(__file__))
TASKS = os.path.join(HERE, "lm_eval_tasks")
REPO = os.path.dirname(os.path.dirname(HERE))
SEQ = 64


@pytest.fixture(scope="module")
def setup():
    sp = SentencePieceTokenizer(os.path.join(REPO, "data", "demo", "tokenizer", "demo_sp.model"))
    cfg = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=48,
                      vocab_size=sp.vocab_size, make_vocab_size_divisible_by=192, max_position_embeddings=SEQ,
                      init_method_std=0.2)
    assert cfg.padded_vocab_size() == 8256  # 64 padding rows in the softmax: the export keeps them
    return sp, cfg, build_gpt_stage(cfg, seed=12).eval()


def _project(model, sp, path, source="test"):
    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    qs = [MCQuestion(r["question"], tuple(r["choices"]), int(r["answer"]), source) for r in rows]
    return evaluate_mcq(model, sp, MCQSet("t", "general", qs), seq_length=SEQ, bf16=False)


def test_lm_eval_equals_project_cloze(tmp_path, setup):
    sp, cfg, model = setup
    export = export_llama(model.state_dict(), cfg, str(tmp_path / "hf"), tokenizer=sp, keep_padded_vocab=True)
    res = run_lm_eval(export, ["mtf_test_cloze"], include_path=TASKS, output_dir=str(tmp_path / "out"),
                      log_samples=True, batch_size=4, max_length=SEQ)
    metrics, scored = _project(model, sp, os.path.join(TASKS, "mtf_test_cloze.jsonl"))
    lm = res["tasks"]["mtf_test_cloze"]
    assert res["n_samples"]["mtf_test_cloze"] == metrics["n"] == 12
    samples = glob.glob(str(tmp_path / "out" / "**" / "samples_mtf_test_cloze_*.jsonl"), recursive=True)
    assert len(samples) == 1
    with open(samples[0], encoding="utf-8") as fh:
        docs = sorted((json.loads(line) for line in fh), key=lambda d: d["doc_id"])
    assert len(docs) == len(scored) == 12
    for d, s in zip(docs, scored):
        lls = [r[0] for r in d["filtered_resps"]] if isinstance(d["filtered_resps"][0], list) else \
            [r[0] for r in d["resps"]]
        assert max(abs(float(a) - b) for a, b in zip(lls, s["loglikelihoods"])) < 1e-4
    print("lm-eval", {k: lm[k] for k in ("acc", "acc_norm")}, "project", {k: metrics[k] for k in ("acc", "acc_norm")})
    assert lm["acc"] == metrics["acc"]  # lm-eval's acc is the project's acc
    assert lm["acc_norm"] == metrics["acc_norm"]  # and acc_norm (length in characters of the stripped choice)
    assert metrics["acc"] != metrics["acc_norm"]  # 7/12 vs 4/12 here: the pairing acc<->acc, norm<->norm is seen


def test_evaluate_tool_folds_lm_eval_results(tmp_path, setup):
    """tools/evaluate.py --lm-eval-tasks on a checkpoint (made by tools/import_hf.py from an export): the demo MedQA
    file written as a local task (write_mcq_tasks) scores, in the evaluation JSON's "lm_eval" entry, exactly the
    acc / acc_norm of the JSON's own cloze evaluation of the same questions."""
    from tools import evaluate, import_hf

    sp, cfg, model = setup
    export = export_llama(model.state_dict(), cfg, str(tmp_path / "hf"), tokenizer=sp)
    assert import_hf.main(["--hf", export, "--output", str(tmp_path / "ckpt")]) == 0
    medqa = os.path.join(REPO, "data", "demo", "eval", "medqa.jsonl.xz")
    sets = build_mcq_sets(medqa=medqa, limit=6)
    assert write_mcq_tasks(sets, str(tmp_path / "tasks")) == ["mtf_medqa"]
    assert evaluate.main(["--load", str(tmp_path / "ckpt"), "--output-dir", str(tmp_path / "evals"), "--run-name",
                          "r", "--medqa", medqa, "--limit", "6", "--seq-length", str(SEQ), "--no-progress",
                          "--lm-eval-tasks", "mtf_medqa", "--lm-eval-include-path", str(tmp_path / "tasks")]) == 0
    result = json.loads((tmp_path / "evals" / "r.json").read_text())
    ours = result["mcq"]["medqa"]
    lm = result["lm_eval"]["tasks"]["mtf_medqa"]
    assert result["lm_eval"]["n_samples"]["mtf_medqa"] == ours["n"] == 6
    assert (lm["acc"], lm["acc_norm"]) == (ours["acc"], ours["acc_norm"])
    assert not [p for p in os.listdir(tmp_path / "evals" / "lm_eval" / "r") if p.startswith("hf_export_")]
