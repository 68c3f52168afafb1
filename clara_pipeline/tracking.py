"""MLflow tracking: one run per stage, with an explicit sqlite store under ``mlflow/``.

MLflow 3 otherwise creates ``mlflow.db`` in whatever the current directory is, so the URI is always set
here, before any MLflow call. Set ``MLFLOW_TRACKING_URI`` yourself to log to a shared server instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
from pathlib import Path

EXPERIMENT = "clara-pipeline"
log = logging.getLogger(__name__)

for _var, _value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "1")):
    os.environ.setdefault(_var, _value)


# Project stores this process has configured. mlflow.set_tracking_uri copies its argument into the
# MLFLOW_TRACKING_URI environment variable (for subprocesses), so without this set a second project in the
# same process (tests, benchmarks/real_data.py) would silently log to, and register into, the first one's.
_PROJECT_URIS: set[str] = set()


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI when the user set it; otherwise the project's sqlite store under mlflow/."""
    user = os.environ.get("MLFLOW_TRACKING_URI")
    if user and user not in _PROJECT_URIS:
        return user
    return f"sqlite:///{(Path(root) / 'mlflow' / 'mlflow.db').resolve()}"


def configure(root: Path):
    """Point MLflow at the project's store and make sure the experiment exists; returns the mlflow module."""
    import mlflow

    # "Creating initial MLflow database tables..." and its alembic lines on every fresh store: noise here
    for noisy in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # a "Downloading artifacts" bar per model logged or loaded, though every artifact is a local file;
    # MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=true in the environment brings them back
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri(root)
    if uri == f"sqlite:///{(Path(root) / 'mlflow' / 'mlflow.db').resolve()}":
        _PROJECT_URIS.add(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        artifacts = (Path(root) / "mlflow" / "artifacts").resolve()
        artifacts.mkdir(parents=True, exist_ok=True)
        mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri())
    mlflow.set_experiment(EXPERIMENT)
    return mlflow


def mlflow_key(name: str) -> str:
    """MLflow names allow alphanumerics, _ - . space : / only; `recall@5` becomes `recall_at_5`."""
    return name.replace("@", "_at_")


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except Exception:
        return ""


class StageRun:
    """What a stage sees of MLflow: per-step metrics, summary metrics, artifacts, tags."""

    def __init__(self, mlflow, run):
        self.mlflow = mlflow
        self.run = run
        self.run_id = run.info.run_id

    def log_step(self, step: int, metrics: dict, prefix: str = "") -> None:
        clean = {mlflow_key(f"{prefix}{k}"): float(v) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if clean:
            self.mlflow.log_metrics(clean, step=step)

    def log_metrics(self, metrics: dict, prefix: str = "") -> None:
        self.log_step(0, flatten(metrics), prefix)

    def log_artifacts(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        elif path.is_file():
            self.mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: dict) -> None:
        self.mlflow.set_tags({k: str(v) for k, v in tags.items()})


class NoRun:
    """What processes other than rank 0 get under a multi-process launcher: logging is rank 0's job."""

    run_id = None

    def log_step(self, *args, **kwargs) -> None: ...

    def log_metrics(self, *args, **kwargs) -> None: ...

    def log_artifacts(self, *args, **kwargs) -> None: ...

    def set_tags(self, *args, **kwargs) -> None: ...


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def end_runs_of_dead_processes(mlflow, stage: str) -> list[str]:
    """Mark KILLED the RUNNING runs of `stage` whose process on this host no longer exists (a stage killed by
    SIGKILL, OOM or a reboot cannot end its own run, which would otherwise show RUNNING forever). Runs of
    other hosts and of live processes (a concurrent partition) are left alone. Returns the ended run ids."""
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    ended = []
    for run in client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.stage = '{stage}' and attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if tags.get("host") == host and tags.get("pid", "").isdigit() and not _process_alive(int(tags["pid"])):
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    if ended:
        log.info("MLflow: ended %d run(s) of %s left RUNNING by a killed process: %s", len(ended), stage,
                 ", ".join(ended))
    return ended


@contextlib.contextmanager
def stage_run(root: Path, stage: str, params: dict, tags: dict | None = None):
    """One MLflow run for one stage; params.yaml is logged flattened (values truncated to MLflow's limit).

    Only rank 0 logs: under ``deepspeed``/``torchrun`` (RANK set by the launcher) other ranks get a NoRun."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield NoRun()
        return
    mlflow = configure(root)
    end_runs_of_dead_processes(mlflow, stage)
    with mlflow.start_run(run_name=stage) as run:
        # pid and host let the next start of this stage tell a run whose process was killed from a live one
        mlflow.set_tags({"stage": stage, "git_commit": _git_commit(root), "pid": str(os.getpid()),
                         "host": socket.gethostname(),
                         "orchestrator": os.environ.get("CLARA_ORCHESTRATOR", "cli"), **(tags or {})})
        flat = {k: str(v)[:6000] for k, v in flatten(params).items()}
        items = list(flat.items())
        for i in range(0, len(items), 100):  # MLflow caps a log_params batch at 100
            mlflow.log_params(dict(items[i:i + 100]))
        yield StageRun(mlflow, run)
