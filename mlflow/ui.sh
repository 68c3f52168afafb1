#!/usr/bin/env bash
# Start the MLflow UI on 127.0.0.1 over the project's tracking store (mlflow/mlflow.db, mlflow/artifacts) of $CLARA_ROOT, else of this checkout.
# No __init__.py in this folder: it would shadow the mlflow package.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
root=${CLARA_ROOT:-$repo}   # a profile's root (make mlflow-ui PROFILE=quality) has its own store
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
# MLflow's server-side job runner (huey consumers, for GenAI jobs this project has none of) is off: fewer
# processes, and no KeyboardInterrupt tracebacks from them on Ctrl-C; MLflow's own deprecated Starlette
# imports warn in every worker, which is MLflow's to fix, not the user's to read
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore:starlette.middleware.wsgi is deprecated}"
mkdir -p "$root/mlflow/artifacts"
exec "$repo/.venv/bin/mlflow" ui \
  --backend-store-uri "sqlite:///$root/mlflow/mlflow.db" \
  --registry-store-uri "sqlite:///$root/mlflow/mlflow.db" \
  --default-artifact-root "$root/mlflow/artifacts" \
  --host 127.0.0.1 --port "${PORT:-5000}" --workers "${WORKERS:-1}"   # one local user: one worker
