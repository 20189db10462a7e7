"""examples/scaling_sweep.sh under DRY_RUN=1: sizes x arms, the matched token count, the document arm by fixed
threshold or by filtered share, and the report's compute convention."""

import os
import shlex
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "examples", "scaling_sweep.sh")


def _cmds(tmp_path, **env):
    p = subprocess.run(["bash", SCRIPT], env={**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path / "o"), **env},
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return [shlex.split(line) for line in p.stdout.splitlines() if line.strip()]


def _flag(argv, name):
    return argv[argv.index(name) + 1]


def test_dry_run(tmp_path):
    cmds = _cmds(tmp_path, TRAIN_TOKENS_COUNT="seen", DOCUMENT_FILTER_FRACTION="0.0154", COMPUTE="seen")
    train = [c for c in cmds if "pretrain_gpt.py" in c]
    assert len(train) == 12 and not (tmp_path / "o").exists()
    assert all(_flag(c, "--train-tokens-count") == "seen" for c in train)
    doc = [c for c in train if _flag(c, "--token-filter") == "document"]
    assert len(doc) == 3 and all(_flag(c, "--document-filter-fraction") == "0.0154" for c in doc)
    assert not any("--document-threshold" in c for c in doc)
    assert _flag(cmds[-1], "--compute") == "seen"
    doc = [c for c in _cmds(tmp_path) if "pretrain_gpt.py" in c and _flag(c, "--token-filter") == "document"]
    assert all(_flag(c, "--document-threshold") == "0.02" and "--document-filter-fraction" not in c for c in doc)


def test_dry_run_held_out_terms(tmp_path):
    """FILTER_TERMS_SPLIT labels the training data with one blocklist part, EVAL_TERMS_SPLIT the evaluation with
    another; MATCH_DOCUMENT=1 matches the document arm to the token filters' share (resolved at run time)."""
    cmds = _cmds(tmp_path, FILTER_TERMS_SPLIT="1/2", EVAL_TERMS_SPLIT="2/2", MATCH_DOCUMENT="1")
    annotate = [c for c in cmds if "tools/annotate.py" in c]
    assert len(annotate) == 1 and _flag(annotate[0], "--terms-split") == "1/2"
    evals = [c for c in cmds if "tools/evaluate.py" in c]
    assert len(evals) == 12 and all(_flag(c, "--blocklist-terms-split") == "2/2" for c in evals)
    doc = [c for c in cmds if "pretrain_gpt.py" in c and _flag(c, "--token-filter") == "document"]
    assert len(doc) == 3 and all(_flag(c, "--document-filter-fraction") == "<token-share>" for c in doc)
    plain = _cmds(tmp_path)
    assert not any("--terms-split" in c or "--blocklist-terms-split" in c for c in plain)
