# Every target sets up what it needs first (scripts/setup.sh is idempotent).
.PHONY: setup run test dagster mlflow-ui serve repro dvc-yaml clean lock

# Telemetry off for every tool we run.
export DAGSTER_DISABLE_TELEMETRY=1
export MLFLOW_DISABLE_TELEMETRY=true
export DO_NOT_TRACK=1

setup:
	@bash scripts/setup.sh

# A profile (configs/profiles/NAME.yaml, e.g. PROFILE=quality) runs in a root of its own, runs/NAME/, with
# its own params.yaml, artifacts, MLflow store and Dagster instance; run, dagster, mlflow-ui and serve take it.
PROFILE ?=
ROOT := $(if $(PROFILE),$(CURDIR)/runs/$(PROFILE),$(CURDIR))

# The main job: the whole lineage on the embedded default, as a Dagster job recorded in dagster_home/.
run: setup
	$(if $(PROFILE),.venv/bin/clara profile $(PROFILE))
	CLARA_ROOT=$(ROOT) DAGSTER_HOME=$(ROOT)/dagster_home .venv/bin/python -m assets

test: setup
	.venv/bin/python -m pytest -q

# The Dagster UI on http://127.0.0.1:3000 (Ctrl-C or SIGTERM stops it and every process it started).
# `dagster dev` warns that `dg dev` supersedes it; dg needs the dagster-dg-cli package and a dg project
# layout this project does not use, so the warning is filtered rather than followed.
dagster: setup
	$(if $(PROFILE),.venv/bin/clara profile $(PROFILE))
	DAGSTER_HOME=$(ROOT)/dagster_home CLARA_ROOT=$(ROOT) PYTHONWARNINGS='ignore:Function `dev_command` is superseded' \
	  exec .venv/bin/python scripts/run_group.py .venv/bin/dagster dev -h 127.0.0.1 -p 3000

# The MLflow UI on http://127.0.0.1:5000.
mlflow-ui: setup
	CLARA_ROOT=$(ROOT) exec .venv/bin/python scripts/run_group.py --int-as-term bash mlflow/ui.sh

# Serve the registry's champion over HTTP on http://127.0.0.1:5001 (POST /invocations);
# ALIAS=challenger serves the newest model the gate did not promote.
ALIAS ?= champion
serve: setup
	PATH=$(CURDIR)/.venv/bin:$$PATH MLFLOW_TRACKING_URI=sqlite:///$(ROOT)/mlflow/mlflow.db \
	  mlflow models serve -m models:/clara@$(ALIAS) --env-manager local -h 127.0.0.1 -p 5001

# Reproduce the lineage with DVC (from its own environment; stage commands run in .venv).
repro: setup
	PATH=$(CURDIR)/.venv/bin:$$PATH .venv-dvc/bin/dvc repro

dvc-yaml: setup
	.venv/bin/clara dvc-yaml

clean:
	rm -rf artifacts mlflow/mlflow.db mlflow/artifacts

# Pin every package of both environments as they are now (requirements/lock*.txt, used by setup.sh).
lock: setup
	bash scripts/lock.sh
