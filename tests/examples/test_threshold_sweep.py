"""examples/threshold_sweep.sh under DRY_RUN=1: the commands it would run (no training, no files), checked flag by
flag; bad FRACTIONS / FILTERS / SIZE are refused before anything runs."""

import os
import shlex
import subprocess

import pytest

from megatron_tf.evaluation.scaling_runs import SHARE_IN_NAME

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "examples", "threshold_sweep.sh")


def _dry(tmp_path, **env):
    e = {**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path / "out"), **env}
    return subprocess.run(["bash", SCRIPT], env=e, capture_output=True, text=True, timeout=60)


def _flag(argv, name):
    return argv[argv.index(name) + 1]


def test_dry_run_commands(tmp_path):
    """A graded labeler: every filter at every share."""
    p = _dry(tmp_path, FRACTIONS="0.05 0.2", TRAIN_TOKENS_COUNT="seen", TOKENS_SCALE="0.5", EVAL_LABELS="heldout",
             LABELER="classifier", CLASSIFIER="runs/clf")
    assert p.returncode == 0, p.stderr
    cmds = [shlex.split(line) for line in p.stdout.splitlines() if line.strip()]
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    prep = [c for c in cmds if "tools/preprocess_data.py" in c or "tools/annotate.py" in c]
    train = [c for c in cmds if "pretrain_gpt.py" in c]
    evals = [c for c in cmds if "tools/evaluate.py" in c]
    report = [c for c in cmds if "tools/scaling_report.py" in c]
    assert len(prep) == 2 and len(train) == len(evals) == 1 + 3 * 2 and len(report) == 1
    assert _flag(prep[1], "--labeler") == "classifier" and _flag(prep[1], "--classifier") == "runs/clf"
    assert len(cmds) == 2 + 2 * 7 + 1
    names = [_flag(c, "--run-name") for c in evals]
    assert names == ["t1-none", "t1-mask-f0.05", "t1-mask-f0.2", "t1-remove-f0.05", "t1-remove-f0.2",
                     "t1-document-f0.05", "t1-document-f0.2"]
    for t, e, name in zip(train, evals, names):
        assert _flag(t, "--save") == _flag(t, "--load") == _flag(e, "--load") == str(tmp_path / "out" / "ckpt" / name)
        assert _flag(t, "--train-tokens") == "125000" and _flag(t, "--train-tokens-count") == "seen"
        assert _flag(e, "--size") == "t1" and _flag(e, "--eval-labels") == "heldout"
        arm = _flag(e, "--arm")
        assert _flag(t, "--token-filter") == arm
        share = SHARE_IN_NAME.search(name)  # the report reads the nominal share back from the run name
        if arm == "none":
            assert share is None and "--token-filter-fraction" not in t and "--document-filter-fraction" not in t
        elif arm == "document":
            assert _flag(t, "--document-filter-fraction") == share.group(1) and "--token-filter-fraction" not in t
        else:
            assert _flag(t, "--token-filter-fraction") == share.group(1) and "--document-filter-fraction" not in t
    assert _flag(report[0], "--evals") == str(tmp_path / "out" / "evals" / "*.json")
    assert _flag(report[0], "--compute") == "paper"


def test_blocklist_token_filters_run_once(tmp_path):
    """0/1 blocklist scores have one token operating point: mask / remove run once at --forget-threshold, the
    document filter sweeps every share."""
    p = _dry(tmp_path, FRACTIONS="0.05 0.2")
    assert p.returncode == 0, p.stderr
    cmds = [shlex.split(line) for line in p.stdout.splitlines() if line.strip()]
    assert _flag(next(c for c in cmds if "tools/annotate.py" in c), "--labeler") == "blocklist"
    train = {_flag(c, "--save").rsplit("/", 1)[1]: c for c in cmds if "pretrain_gpt.py" in c}
    assert sorted(train) == ["t1-document-f0.05", "t1-document-f0.2", "t1-mask-labels", "t1-none", "t1-remove-labels"]
    for arm in ("mask", "remove"):
        c = train[f"t1-{arm}-labels"]
        assert _flag(c, "--forget-threshold") == "0.5" and "--token-filter-fraction" not in c
        assert SHARE_IN_NAME.search(f"t1-{arm}-labels") is None
    # TOKEN_FRACTIONS set explicitly overrides the blocklist default
    p = _dry(tmp_path, FRACTIONS="0.05", TOKEN_FRACTIONS="0.015", FILTERS="remove")
    train = [shlex.split(line) for line in p.stdout.splitlines() if "pretrain_gpt.py" in line]
    assert [_flag(c, "--token-filter-fraction") for c in train[1:]] == ["0.015"]


def test_dry_run_with_prefix_skips_preprocessing(tmp_path):
    p = _dry(tmp_path, DATA_PREFIX="data/x_text_document", FILTERS="document", FRACTIONS="0.1")
    assert p.returncode == 0, p.stderr
    cmds = [shlex.split(line) for line in p.stdout.splitlines() if line.strip()]
    assert [c[1] for c in cmds if c[0] == "python"] == ["tools/evaluate.py", "tools/evaluate.py",
                                                        "tools/scaling_report.py"]
    assert all(_flag(c, "--data-path") == "data/x_text_document" for c in cmds if "pretrain_gpt.py" in c)


@pytest.mark.parametrize("env,msg", [({"FRACTIONS": "0.1 1.5"}, "FRACTIONS must lie in (0, 1), found '1.5'"),
                                     ({"FRACTIONS": "0"}, "found '0'"),
                                     ({"FILTERS": "remove sae"}, "FILTERS takes mask, remove, document; found 'sae'"),
                                     ({"SIZE": "t1 2 64"}, "SIZE needs 9 fields"),
                                     ({"LABELER": "sae"}, "LABELER takes blocklist or classifier; found 'sae'"),
                                     ({"LABELER": "classifier"}, "LABELER=classifier needs CLASSIFIER"),
                                     ({"TOKEN_FRACTIONS": "2"}, "found '2'")])
def test_bad_settings_refused(tmp_path, env, msg):
    p = _dry(tmp_path, **env)
    assert p.returncode == 2 and msg in p.stderr and p.stdout == ""
