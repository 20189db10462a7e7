"""nvcc compile check of the torch-free kernels (csrc/*.cu) for sm_90; skipped when nvcc is absent. Also reads
ptxas's resource report: no kernel may spill registers to local memory (a spill would put the row loops on a slower
path). The binding (csrc/binding.cpp, includes torch) is compiled only by setup.py on a CUDA machine."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NVCC = shutil.which("nvcc")


@pytest.mark.nvcc
@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("cu", sorted(p.name for p in (ROOT / "csrc").glob("*.cu")))
def test_nvcc_compiles_without_spills(cu, tmp_path):
    proc = subprocess.run([NVCC, "-std=c++17", "-O3", "-arch=sm_90", "-Xptxas", "-v", "-Werror", "all-warnings",
                           f"-I{ROOT / 'csrc'}", "-c", str(ROOT / "csrc" / cu), "-o", str(tmp_path / "k.o")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = proc.stderr + proc.stdout
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert spills, "ptxas printed no resource report"
    assert all(s == ("0", "0") for s in spills), f"register spills in {cu}: {spills}"
    includes = re.findall(r'#include\s*[<"]([^>"]+)', (ROOT / "csrc" / cu).read_text())
    assert not [i for i in includes if i.split("/")[0] in ("torch", "ATen", "c10")], f"{cu} must stay torch-free"
