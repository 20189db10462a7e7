"""megatron_tf: Megatron-style GPT pretraining with token-level data filtering.

The CUDA extension (`megatron_tf._C`, fused masked vocab-parallel cross-entropy) is built only when the installed
torch is a CUDA build *and* nvcc is found; otherwise the package installs as pure Python and the exact PyTorch
reference path is used (see megatron_tf/ops/). Build on a GPU machine with
`pip install --no-build-isolation -e .` so the extension compiles against the torch already installed there.
"""

import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _cuda_extension():
    """Return (ext_modules, cmdclass) for the CUDA extension, or ([], {}) when it cannot be built here."""
    if os.environ.get("MEGATRON_TF_NO_CUDA_EXT", "0") == "1":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:  # torch not installed yet (fresh build env): pure-Python install
        return [], {}
    if not (torch.version.cuda and cpp_extension.CUDA_HOME):
        print("megatron_tf: CPU torch or no nvcc; skipping the CUDA extension (PyTorch fallback is used)",
              file=sys.stderr)
        return [], {}
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    # No -std flag: torch's BuildExtension picks the C++ standard its headers need (c++17 or c++20 by version).
    # The kernels use explicit ex2/lg2.approx instructions, so they do not depend on --use_fast_math.
    nvcc_flags = ["-O3", "-lineinfo"]
    if not archs:
        nvcc_flags += ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
    ext = cpp_extension.CUDAExtension(
        name="megatron_tf._C",
        sources=[os.path.join("csrc", "binding.cpp"), os.path.join("csrc", "masked_cross_entropy.cu")],
        include_dirs=[os.path.join(HERE, "csrc")],
        depends=[os.path.join("csrc", "masked_cross_entropy.h"), os.path.join("csrc", "cross_entropy_math.h")],
        extra_compile_args={"cxx": ["-O3"], "nvcc": nvcc_flags},
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = _cuda_extension()

# Every tools/<name>.py is also the console command mtf-<name> (installed as the package megatron_tf_tools, a
# mapping of tools/; `python tools/<name>.py` keeps working). pretrain_gpt.py is mtf-pretrain.
_TOOLS = sorted(f[:-3] for f in os.listdir(os.path.join(HERE, "tools")) if f.endswith(".py") and f != "__init__.py")
_TOOL_MAIN = {"train_sae": "train_main"}  # scripts whose entry function is not main()
CONSOLE_SCRIPTS = ["mtf-pretrain = megatron_tf.training.api:main"] + [
    f"mtf-{name.replace('_', '-')} = megatron_tf_tools.{name}:{_TOOL_MAIN.get(name, 'main')}" for name in _TOOLS]

setup(
    name="megatron_tf",
    version="0.1.0",
    description="Megatron-style GPT pretraining with token-level data filtering (Rathi & Radford, 2026)",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_tf", "megatron_tf.*"]) + ["megatron_tf_tools"],
    package_dir={"megatron_tf_tools": "tools"},
    package_data={"megatron_tf": ["py.typed"]},
    # torch is deliberately unpinned from above only: GPU machines keep their CUDA build. On a CPU machine install
    # torch==2.13.0 first (scripts/install.sh does), or pip resolves a 5.5 GB CUDA wheel.
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "sentencepiece>=0.2",
        "protobuf>=4",  # sentencepiece character offsets (return_type="proto")
        "tokenizers>=0.15",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "zstandard>=0.21",
        "matplotlib>=3.7",
        "xxhash>=3",  # payload checksums of sidecars and checkpoints (utils/checksum.py)
        "orjson>=3",  # preprocessing's JSON fast path (data/preprocess_workers.py; json.loads decides on rejects)
    ],
    extras_require={
        # megatron-core: the byte-format and GPTDataset equality tests run against it; deepspeed: the ZeRO test.
        # sae-lens: the SAE labeler's integration tests (offline); lm-eval: the export is evaluated by
        # lm-evaluation-harness on a local task; pytest-timeout: no test can hang CI.
        "test": ["pytest>=7", "pytest-xdist>=3", "pytest-timeout>=2.2", "ruff>=0.5", "transformers>=4.40",
                 "megatron-core>=0.9", "deepspeed>=0.14", "sae-lens>=6", "scipy>=1.10", "lm-eval>=0.4"],
        "hf": ["transformers>=4.40", "lm-eval>=0.4"],
        "megatron": ["megatron-core>=0.9"],  # side-by-side format checks and benchmarks
        "deepspeed": ["deepspeed>=0.14"],
        "sae": ["sae-lens>=6", "transformers>=4.40"],
        "gpu": ["ninja"],  # flash-attn / NVIDIA apex are optional imports; install them yourself (not PyPI 'apex')
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
)
