"""MLflow bookkeeping: a stage killed without a chance to end its run does not leave it RUNNING forever."""

from __future__ import annotations

import os
import socket
import subprocess

from clara_pipeline import tracking


def test_runs_left_running_by_a_dead_process_are_ended_as_killed(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    mlflow = tracking.configure(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name(tracking.EXPERIMENT).experiment_id

    def running(stage, pid, host=socket.gethostname()):
        run = client.create_run(experiment, tags={"stage": stage, "pid": str(pid), "host": host})
        return run.info.run_id

    killed = running("compressor_checkpoint", dead.pid)
    alive = running("compressor_checkpoint", os.getpid())         # e.g. a concurrent partition of the stage
    elsewhere = running("compressor_checkpoint", dead.pid, "another-host")  # cannot be checked from here
    other_stage = running("clara_model", dead.pid)
    with tracking.stage_run(tmp_path, "compressor_checkpoint", {"seed": 0}) as run:
        new = run.run_id
    status = {r: client.get_run(r).info.status for r in (killed, alive, elsewhere, other_stage, new)}
    assert status == {killed: "KILLED", alive: "RUNNING", elsewhere: "RUNNING", other_stage: "RUNNING",
                      new: "FINISHED"}
    assert client.get_run(new).data.tags["pid"] == str(os.getpid())
