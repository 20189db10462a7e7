#!/usr/bin/env bash
# Install and run the whole test suite on CPU (README's test command; .ci/run calls it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
python3 -m ruff check .
python3 -m pytest -q -n "${PYTEST_WORKERS:-2}" --durations=15 tests "$@"
