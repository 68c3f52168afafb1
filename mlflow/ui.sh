#!/usr/bin/env bash
# Start the MLflow UI on 127.0.0.1 over the project's tracking store (mlflow/mlflow.db, mlflow/artifacts).
# No __init__.py in this folder: it would shadow the mlflow package.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
mkdir -p "$root/mlflow/artifacts"
exec "$root/.venv/bin/mlflow" ui \
  --backend-store-uri "sqlite:///$root/mlflow/mlflow.db" \
  --default-artifact-root "$root/mlflow/artifacts" \
  --host 127.0.0.1 --port "${PORT:-5000}"
