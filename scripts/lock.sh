#!/usr/bin/env bash
# Write requirements/lock.txt and requirements/lock-dvc.txt: the exact version of every package in .venv and
# .venv-dvc as they are now (after `make test` passed), so that scripts/setup.sh installs the same set next
# year. Run `make lock` after changing dependencies in pyproject.toml or setup.sh, and commit the result.
#
# torch is left out on purpose: scripts/setup.sh installs it from TORCH_SPEC (the CPU build by default, a CUDA
# build on GPU machines), and a pin to the CPU build's local version would replace a GPU user's torch.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(.venv/bin/python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
write() {  # venv, output file
  { echo "# python $py -- written by scripts/lock.sh from $1 on $(date -u +%F); used by scripts/setup.sh as pip constraints"
    "$1/bin/python" -m pip freeze --all --exclude-editable --disable-pip-version-check \
      | grep -v -i -E '^(torch|clara-pipeline)(==| @)' | LC_ALL=C sort -f
  } > "$2"
  echo "lock: $2 ($(grep -c '==' "$2") packages)"
}
write .venv requirements/lock.txt
write .venv-dvc requirements/lock-dvc.txt
