"""lm-evaluation-harness on a Hugging Face export, offline, and the project's MCQ sets as local lm-eval tasks.

    write_mcq_tasks(build_mcq_sets(mmlu=..., medqa=...), "lm_eval_tasks/")   # mtf_<set>.yaml + .jsonl + loader
    res = run_lm_eval("hf/none", ["mtf_medqa"], include_path="lm_eval_tasks/", output_dir="evals/lm_eval/none")
    res["tasks"]["mtf_medqa"]["acc"]

or from the shell (what run_lm_eval runs; HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 keep it off the network):

    python -m megatron_tf.evaluation.lm_eval_bridge --mmlu eval/mmlu.jsonl --medqa eval/medqa.jsonl --output tasks/
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 lm_eval --model hf --model_args pretrained=hf/none,dtype=float32 \\
        --tasks mtf_medqa,mtf_mmlu_medical --include_path tasks/ --device cpu --batch_size 8 --output_path out/

The tasks read their JSON lines files through a small loader module written beside them (lm-eval's
`custom_dataset: !function`), so the directory is relocatable and nothing touches the datasets cache or the network.
A task written here is the project's cloze evaluation (megatron_tf/evaluation/mcq.py) in lm-eval's terms:
doc_to_text "Question: {{question}}\\nAnswer:" (question stripped), choices stripped, target_delimiter " ",
output_type multiple_choice. With the export's tokenizer adding <|endoftext|> as bos (megatron_tf/tokenizer/
hf_files.py) the scored token sequences are the project's, so lm-eval's `acc` equals the project's `acc` and its
`acc_norm` (log-likelihood / characters of the choice) the project's `acc_norm` (tests/evaluation/test_lm_eval.py:
same per-choice log-likelihoods to 1e-4 in fp32). For the log-probabilities to be the project's exactly the export
must keep the padded vocabulary rows (export_llama(keep_padded_vocab=True), what `lm_eval_on_model` does): the
project's softmax runs over the padded vocabulary.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args, opt

from .eval_sets import MCQSet, build_mcq_sets

TASK_PREFIX = "mtf_"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_EVALUATE_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


class LMEvalError(RuntimeError):
    pass


LOADER_MODULE = "mtf_tasks_loader"
LOADER_SOURCE = '''"""Written by megatron_tf.evaluation.lm_eval_bridge: the lm-eval tasks of this directory read their
JSON lines files from beside this module (no network, no datasets cache, the directory can move)."""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def load(data_file=None, **kwargs):
    import datasets

    with open(os.path.join(HERE, data_file), encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return {"test": datasets.Dataset.from_list(rows)}
'''


def mcq_task_yaml(name: str, data_file: str) -> str:
    """lm-eval task YAML over `data_file` (a name in the same directory) of {"question", "choices", "answer": index}
    records, loaded by the directory's mtf_tasks_loader.py."""
    return f"""# {name}: the project's cloze MCQ (megatron_tf/evaluation/mcq.py) as an lm-evaluation-harness task;
# written by megatron_tf.evaluation.lm_eval_bridge
task: {name}
custom_dataset: !function {LOADER_MODULE}.load
dataset_kwargs:
  data_file: {json.dumps(data_file)}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: choices
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_mcq_tasks(sets: Sequence[MCQSet], out_dir: str, prefix: str = TASK_PREFIX) -> list[str]:
    """Write <prefix><set>.jsonl and .yaml per set, and the loader module, into out_dir (the --include_path);
    returns the task names."""
    from megatron_tf.utils.io import atomic_write

    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    with atomic_write(os.path.join(out_dir, LOADER_MODULE + ".py"), "w") as fh:
        fh.write(LOADER_SOURCE)
    names = []
    for s in sets:
        name = prefix + s.name
        with atomic_write(os.path.join(out_dir, name + ".jsonl"), "w") as fh:
            for q in s.questions:
                fh.write(json.dumps({"qid": q.qid, "subject": q.subject, "question": q.question.strip(),
                                     "choices": [c.strip() for c in q.choices], "answer": q.answer},
                                    ensure_ascii=False) + "\n")
        with atomic_write(os.path.join(out_dir, name + ".yaml"), "w") as fh:
            fh.write(mcq_task_yaml(name, name + ".jsonl"))
        names.append(name)
    return names


def _flatten(metrics: dict) -> dict:
    """lm-eval's {"acc,none": x, "alias": ...} -> {"acc": x} (filter "none"; other filters keep their suffix)."""
    out = {}
    for k, v in metrics.items():
        if k == "alias" or not isinstance(v, (int, float)):
            continue
        metric, _, filt = k.partition(",")
        out[metric if filt in ("", "none") else f"{metric},{filt}"] = v
    return out


def run_lm_eval(model_dir: str, tasks: Sequence[str], *, output_dir: str, include_path: str | None = None,
                batch_size: int = 8, device: str = "cpu", max_length: int | None = None, limit: int | None = None,
                log_samples: bool = False, timeout_s: float | None = None) -> dict:
    """Run the lm_eval CLI (`--model hf`) on an exported model directory in a subprocess with the offline
    environment; returns {"tasks": {task: {metric: value}}, "n_samples", "lm_eval_version", "command",
    "results_file"}. A failure raises LMEvalError with the end of lm-eval's output."""
    if not tasks:
        raise ValueError("run_lm_eval: no tasks")
    if include_path is not None and not os.path.isdir(include_path):
        raise FileNotFoundError(f"--lm-eval-include-path {include_path}: not a directory")
    model_args = f"pretrained={os.path.abspath(model_dir)},dtype=float32"
    if max_length:
        model_args += f",max_length={int(max_length)}"
    os.makedirs(output_dir, exist_ok=True)
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", model_args, "--tasks", ",".join(tasks),
           "--device", device, "--batch_size", str(batch_size), "--output_path", os.path.abspath(output_dir)]
    if include_path:
        cmd += ["--include_path", os.path.abspath(include_path)]
    if limit:
        cmd += ["--limit", str(limit)]
    if log_samples:
        cmd += ["--log_samples"]
    before = set(glob.glob(os.path.join(output_dir, "**", "results_*.json"), recursive=True))
    proc = subprocess.run(cmd, env={**os.environ, **OFFLINE_ENV}, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise LMEvalError(f"lm_eval exited with {proc.returncode}: {' '.join(cmd)}\n{tail}")
    new = sorted(set(glob.glob(os.path.join(output_dir, "**", "results_*.json"), recursive=True)) - before,
                 key=os.path.getmtime)
    if not new:
        raise LMEvalError(f"lm_eval wrote no results_*.json under {output_dir}: {' '.join(cmd)}")
    with open(new[-1], encoding="utf-8") as fh:
        raw = json.load(fh)
    n = raw.get("n-samples", {})
    return {"tasks": {t: _flatten(m) for t, m in raw.get("results", {}).items()},
            "n_samples": {t: v.get("effective", v) if isinstance(v, dict) else v for t, v in n.items()},
            "lm_eval_version": raw.get("lm_eval_version") or _lm_eval_version(), "command": cmd,
            "results_file": os.path.abspath(new[-1])}


def _lm_eval_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("lm_eval")
    except Exception:  # noqa: BLE001 - metadata lookups raise several types
        return None


def lm_eval_on_model(model, tokenizer, tasks: Sequence[str], *, output_dir: str, include_path: str | None = None,
                     seq_length: int | None = None, batch_size: int = 8, limit: int | None = None) -> dict:
    """Export a whole (TP/PP-merged) GPTModel with its tokenizer to a temporary HF directory (padded vocabulary
    kept, float32) and run lm-eval on it (tools/evaluate.py --lm-eval-tasks). Returns run_lm_eval's dict."""
    from megatron_tf.model.hf_export import export_llama

    device = next(model.parameters()).device
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    os.makedirs(output_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hf_export_", dir=output_dir) as tmp:
        export = export_llama(sd, model.config, os.path.join(tmp, "hf"), keep_padded_vocab=True, tokenizer=tokenizer,
                              max_position_embeddings=seq_length)
        return run_lm_eval(export, tasks, output_dir=output_dir, include_path=include_path, batch_size=batch_size,
                           device="cuda" if device.type == "cuda" else "cpu", max_length=seq_length, limit=limit)


@dataclass
class LMEvalConfig:
    """lm-evaluation-harness on an export of each checkpoint (tools/evaluate.py)."""

    lm_eval_tasks: list[str] | None = field(default=None, metadata=opt(
        "Run lm-eval (--model hf, offline) on an export of each checkpoint; results go under 'lm_eval' in the "
        "evaluation JSON.", metavar="TASK"))
    lm_eval_include_path: str | None = field(default=None, metadata=opt(
        "Directory of local lm-eval task YAMLs (python -m megatron_tf.evaluation.lm_eval_bridge writes the "
        "project's MCQ sets there)."))
    lm_eval_batch_size: int = field(default=8, metadata=opt("lm-eval --batch_size."))
    lm_eval_limit: int | None = field(default=None, metadata=opt("lm-eval --limit (documents per task)."))


def fold_lm_eval(result: dict, model, tokenizer, cfg: LMEvalConfig, seq_length: int, output_dir: str,
                 name: str) -> dict:
    """With --lm-eval-tasks: run lm-eval on the model's export and put its results under result["lm_eval"]:
    {"tasks": {task: {"acc": .., "acc_stderr": .., "acc_norm": .., ...}}, "n_samples": {task: n},
    "lm_eval_version", "command", "results_file", "include_path", "seq_length"}. Returns result."""
    tasks = cfg.lm_eval_tasks
    if not tasks:
        return result
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise LMEvalError("--lm-eval-tasks needs lm-evaluation-harness: pip install -e '.[test]' (or lm-eval)")
    res = lm_eval_on_model(model, tokenizer, tasks, output_dir=os.path.join(output_dir, "lm_eval", name),
                           include_path=cfg.lm_eval_include_path, seq_length=seq_length,
                           batch_size=cfg.lm_eval_batch_size, limit=cfg.lm_eval_limit)
    result["lm_eval"] = {**res, "include_path": os.path.abspath(cfg.lm_eval_include_path)
                         if cfg.lm_eval_include_path else None, "seq_length": seq_length}
    return result


@dataclass
class MCQTasksConfig:
    """The MCQ sets to write as lm-eval tasks (python -m megatron_tf.evaluation.lm_eval_bridge) and where."""

    output: str = field(metadata=opt("Directory for lm_eval --include_path."))
    mmlu: str | None = field(default=None, metadata=opt("MMLU JSONL (subject, question, choices, answer)."))
    medqa: str | None = field(default=None, metadata=opt("MedQA JSONL (question, options, answer_idx)."))
    medmcqa: str | None = field(default=None, metadata=opt("MedMCQA JSONL (subject, question, options, answer_idx)."))
    limit: int | None = field(default=None, metadata=opt("Questions per set (the project's stable sample)."))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write the project's MCQ sets as local lm-evaluation-harness tasks")
    add_dataclass_args(p, MCQTasksConfig, "MCQ tasks")
    args = dataclass_from_args(MCQTasksConfig, p.parse_args(argv))
    if not (args.mmlu or args.medqa or args.medmcqa):
        p.error("give at least one of --mmlu, --medqa, --medmcqa")
    names = write_mcq_tasks(build_mcq_sets(args.mmlu, args.medqa, args.medmcqa, limit=args.limit), args.output)
    print(f"wrote {len(names)} tasks to {os.path.abspath(args.output)}: {','.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
