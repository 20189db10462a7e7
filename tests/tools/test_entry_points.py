"""setup.py installs every tools/<name>.py as the console command mtf-<name> (and pretrain_gpt.py as mtf-pretrain):
the installed metadata lists exactly those, each loads to the script's own entry function, and a command runs."""

import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "tools")) if f.endswith(".py") and f != "__init__.py")

_PROBE = """
import json
from importlib.metadata import distribution
eps = [e for e in distribution("megatron_tf").entry_points if e.group == "console_scripts"]
print(json.dumps({e.name: [e.value, e.load().__name__] for e in eps}))
"""


def test_every_tool_is_an_installed_command(tmp_path):
    # run outside the repository, so the installed metadata (not a stale local egg-info) is what is read
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import json

    eps = json.loads(out.stdout)
    assert set(eps) == {"mtf-pretrain"} | {"mtf-" + t.replace("_", "-") for t in TOOLS}
    assert eps["mtf-pretrain"] == ["megatron_tf.training.api:main", "main"]
    for t in TOOLS:
        value, func = eps["mtf-" + t.replace("_", "-")]
        assert value.startswith(f"megatron_tf_tools.{t}:") and func in ("main", "train_main"), (t, value)
    exe = shutil.which("mtf-verify")
    assert exe, "mtf-verify is not on PATH: reinstall with pip install -e ."
    run = subprocess.run([exe, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("usage: mtf-verify"), run.stderr
