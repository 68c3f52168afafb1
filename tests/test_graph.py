"""Dagster and DVC must describe the same lineage, and selections must keep working."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from assets.definitions import defs
from clara_pipeline.config import Paths
from clara_pipeline.dvcgen import render
from clara_pipeline.stages import STAGES

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = ["raw_corpus", "scp_data", "compressor_checkpoint", "compressed_index", "clara_model", "benchmark_report"]


def dagster_graph() -> dict[str, set[str]]:
    """The lineage group's assets (the serving group, assets/automation.py, has no DVC counterpart)."""
    graph = defs.resolve_asset_graph()
    return {key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
            for key in graph.get_all_asset_keys() if graph.get(key).group_name == "clara_lineage"}


def dvc_graph() -> dict[str, set[str]]:
    """Edges as DVC sees them: a stage depends on another when it lists one of that stage's outputs."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    produced_by = {}
    for name, stage in stages.items():
        for out in stage["outs"]:
            path = next(iter(out)) if isinstance(out, dict) else out
            produced_by[path] = name
    graph = {}
    for name, stage in stages.items():
        parents = set()
        for dep in stage["deps"]:
            for out, producer in produced_by.items():
                if out == dep or out.startswith(dep.rstrip("/") + "/") or dep.startswith(out.rstrip("/") + "/"):
                    parents.add(producer)
        graph[name] = parents
    return graph


def test_six_assets_in_lineage_order():
    assert [s.name for s in STAGES] == EXPECTED
    assert set(dagster_graph()) == set(EXPECTED)


def test_dagster_and_dvc_graphs_are_identical():
    assert dagster_graph() == dvc_graph()


def test_lineage_is_a_chain_from_corpus_to_report():
    graph = dagster_graph()
    for upstream, downstream in zip(EXPECTED, EXPECTED[1:]):
        assert upstream in graph[downstream], f"{downstream} must depend on {upstream}"
    assert graph["raw_corpus"] == set()


def test_committed_dvc_yaml_is_generated_from_the_registry():
    assert (ROOT / "dvc.yaml").read_text() == render(ROOT), "dvc.yaml is stale: run `clara dvc-yaml`"


def test_dvc_stage_commands_and_params_exist():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in stages.items():
        assert stage["cmd"] == f"clara stage {name}"
        for key in stage["params"]:
            node = params
            for part in key.split("."):
                assert part in node, f"dvc.yaml stage {name} tracks params key {key!r} missing from params.yaml"
                node = node[part]
        for dep in stage["deps"]:
            if not dep.startswith("artifacts/"):
                assert (ROOT / dep).exists(), f"dvc.yaml stage {name} depends on missing {dep}"
    assert Paths(ROOT).artifacts.name == "artifacts"


def test_string_asset_selection_parses():
    """Fails with `ord() expected string` when antlr4-python3-runtime 4.9 (DVC's pin) sits in this environment."""
    selection = dg.AssetSelection.from_string('+key:"benchmark_report"')
    keys = {k.to_user_string() for k in selection.resolve(defs.resolve_asset_graph())}
    assert keys >= {"benchmark_report", "clara_model", "compressed_index", "raw_corpus"}
    only = dg.AssetSelection.from_string('key:"benchmark_report"').resolve(defs.resolve_asset_graph())
    assert {k.to_user_string() for k in only} == {"benchmark_report"}


def test_job_and_checks_load():
    job = defs.resolve_job_def("clara_lineage")
    assert {n.name for n in job.graph.node_defs} >= set(EXPECTED)
    check_keys = {k.name for k in defs.resolve_asset_graph().asset_check_keys}
    assert check_keys == {"benchmark_is_complete", "promotion_gate"}


DVC = ROOT / ".venv-dvc" / "bin" / "dvc"


@pytest.mark.skipif(not DVC.exists(), reason="DVC environment not set up (scripts/setup.sh makes .venv-dvc)")
def test_dvc_reads_the_pipeline():
    out = subprocess.run([str(DVC), "dag", "--md"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in EXPECTED:
        assert name in out.stdout


def test_benchmark_stage_declares_every_file_the_report_writes():
    from clara_pipeline import benchmark
    from clara_pipeline.stages import BY_NAME

    stage = BY_NAME["benchmark_report"]
    assert set(benchmark.REPORT_FILES) <= set(stage.outputs)
    assert stage.metrics == (benchmark.METRICS_FILE,) and stage.plots == benchmark.PLOT_FILES


def test_the_venvs_pytest_collects_the_suite():
    """`.venv/bin/pytest` (not only `python -m pytest`) must import `tests.conftest` (issue 13)."""
    pytest_bin = Path(sys.executable).parent / "pytest"
    if not pytest_bin.exists():
        pytest.skip(f"no pytest entry point beside {sys.executable}")
    out = subprocess.run([str(pytest_bin), "--collect-only", "-q", "tests/test_benchmark.py"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "No module named 'tests'" not in out.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_servers_stop_with_every_process_they_started(tmp_path, sig):
    """scripts/run_group.py (make dagster, make mlflow-ui): one signal ends the whole tree, including a
    process that ignores it (SIGKILL after the grace period), even when the runner itself was started with
    the signal ignored (a background job; pytest's own process after Dagster has run in it)."""
    pids = tmp_path / "pids"
    code = ("import os, signal, subprocess, sys, time\n"
            "stubborn = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "[signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)]; time.sleep(300)'])\n"
            "plain = subprocess.Popen(['sleep', '300'])\n"
            f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{stubborn.pid}} {{plain.pid}}')\n"
            "time.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "run_group.py"), sys.executable, "-c", code],
                            env={**os.environ, "GRACE_S": "2"},
                            preexec_fn=lambda: [signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)])
    deadline = time.time() + 30
    while not (pids.exists() and len(pids.read_text().split()) == 3) and time.time() < deadline:
        time.sleep(0.1)
    started = [int(p) for p in pids.read_text().split()]
    proc.send_signal(sig)
    proc.wait(timeout=30)

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # a zombie not yet reaped by init still answers kill(0)
        return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"

    time.sleep(0.5)
    assert not [p for p in started if alive(p)]


def test_mlflow_ui_starts_and_stops_quietly(tmp_path):
    """mlflow/ui.sh (make mlflow-ui) on a fresh store: no library warnings, and Ctrl-C ends it without
    tracebacks (MLflow's job-runner consumers used to print KeyboardInterrupt tracebacks)."""
    import socket
    import urllib.request

    venv = ROOT / ".venv"
    if not (venv / "bin" / "mlflow").exists():
        pytest.skip("no .venv (scripts/setup.sh makes it)")
    (tmp_path / "mlflow").mkdir()
    shutil.copy(ROOT / "mlflow" / "ui.sh", tmp_path / "mlflow" / "ui.sh")
    (tmp_path / ".venv").symlink_to(venv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "ui.log"
    with open(log, "wb") as out:
        # as `make mlflow-ui` runs it, and stopped as Ctrl-C stops it: SIGINT to the runner
        proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "run_group.py"), "--int-as-term", "bash",
                                 str(tmp_path / "mlflow" / "ui.sh")], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PORT": str(port)}, start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    printed = log.read_text()
    assert "Warning" not in printed and "Traceback" not in printed, printed[-3000:]
