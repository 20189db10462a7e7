"""python -m megatron_tf.evaluation.lm_eval_bridge (MCQTasksConfig): the command line writes a hand-made MedQA file
as an lm-eval task (records checked against the input), and refuses a call without any set."""

import json

import pytest

from megatron_tf.evaluation import lm_eval_bridge

QUESTIONS = [{"question": " Which organ pumps blood? ", "options": {"A": "heart ", "B": "lung", "C": "liver"},
              "answer_idx": "A"},
             {"question": "Which organ filters urine?", "options": {"A": "skin", "B": "kidney"}, "answer_idx": "B"}]


def test_main_writes_the_tasks(tmp_path, capsys):
    src = tmp_path / "medqa.jsonl"
    src.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS), encoding="utf-8")
    out = tmp_path / "tasks"
    assert lm_eval_bridge.main(["--medqa", str(src), "--output", str(out)]) == 0
    assert "wrote 1 tasks" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "mtf_medqa.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["question"], r["choices"], r["answer"]) for r in rows] == [
        ("Which organ pumps blood?", ["heart", "lung", "liver"], 0),
        ("Which organ filters urine?", ["skin", "kidney"], 1)]
    assert "task: mtf_medqa" in (out / "mtf_medqa.yaml").read_text(encoding="utf-8")
    assert (out / "mtf_tasks_loader.py").is_file()


def test_main_needs_a_set_and_an_output(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        lm_eval_bridge.main(["--output", str(tmp_path)])
    assert e.value.code == 2 and "give at least one of --mmlu, --medqa, --medmcqa" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        lm_eval_bridge.main(["--medqa", "x.jsonl"])
    assert e.value.code == 2 and "--output" in capsys.readouterr().err
