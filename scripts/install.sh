#!/usr/bin/env bash
# Set up megatron_tf on a fresh machine: `bash scripts/install.sh [extras]` (default extras: test).
#
# torch: an already-installed torch is kept (GPU machines keep their CUDA build). With no torch and no GPU, the CPU
# wheel torch==2.13.0 is installed in the same pip call; a bare `torch` requirement would resolve to the ~5.5 GB CUDA
# build. With a GPU present, pip picks the default (CUDA) torch.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-test}"
PY="${PYTHON:-python3}"
TORCH_REQ=()
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    TORCH_REQ=("torch>=2.4")
  else
    TORCH_REQ=("torch==2.13.0")
  fi
fi
# MEGATRON_TF_NO_CUDA_EXT=1 keeps `pip install -e .` pure Python on CPU (the extension is built on GPU machines with
# `pip install --no-build-isolation -e .`).
MEGATRON_TF_NO_CUDA_EXT="${MEGATRON_TF_NO_CUDA_EXT:-1}" "$PY" -m pip install -q "${TORCH_REQ[@]}" -e ".[${EXTRAS}]"
"$PY" -c "import torch, megatron_tf; print(f'megatron_tf {megatron_tf.__version__} with torch {torch.__version__}')"
