"""Evaluation: held-out loss per domain (with the token-level variant), cloze multiple choice, scaling-law fits and
compute slowdown, plots and the Markdown report (docs/evaluation.md).

In-process API:
    evaluate_model(model, tokenizer, EvaluationConfig(...), seq_length=...) -> result dict; write_results(...)
    evaluate_documents / plan_windows (domain_loss), evaluate_mcq / loglikelihoods (mcq), build_mcq_sets (eval_sets)
    analyze(load_eval_files(paths) or load_manifest(path), ScalingOptions()) -> dict; write_report(analysis, dir)
"""

from .domain_loss import evaluate_documents, plan_windows
from .eval_sets import MCQSet, MCQuestion, build_mcq_sets, load_medmcqa, load_medqa, load_mmlu
from .mcq import evaluate_mcq, loglikelihoods
from .report import write_report
from .runner import EvaluationConfig, evaluate_model, summary_line, write_results
from .scaling import RunRecord, ScalingOptions, analyze, fit_power_law, load_eval_files, load_manifest, slowdown
from .text_sets import Document, TextSetSpec

__all__ = ["Document", "EvaluationConfig", "MCQSet", "MCQuestion", "RunRecord", "ScalingOptions", "TextSetSpec",
           "analyze", "build_mcq_sets", "evaluate_documents", "evaluate_mcq", "evaluate_model", "fit_power_law",
           "load_eval_files", "load_manifest", "load_medmcqa", "load_medqa", "load_mmlu", "loglikelihoods",
           "plan_windows", "slowdown", "summary_line", "write_report", "write_results"]
