#!/usr/bin/env bash
# The test command: bootstraps .venv and system packages, then runs the suite offline.
#   ./run_tests.sh                 # everything
#   ./run_tests.sh -m "not slow"   # skip real-checkpoint and pipeline tests
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/bootstrap.sh
source scripts/bootstrap.sh
bootstrap
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# One thread per process: with the other core busy, a 2-thread step is ~8x slower here.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "$@"
