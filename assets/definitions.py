"""Definitions of the clara-pipeline code location (`dagster dev` finds it through pyproject.toml)."""

from __future__ import annotations

import os

import dagster as dg

from assets.automation import AUTOMATION
from assets.checks import benchmark_is_complete, promotion_gate
from assets.lineage import LINEAGE_ASSETS, LINEAGE_KEYS
from assets.resources import default_project

for _var, _value in (("DAGSTER_DISABLE_TELEMETRY", "1"), ("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "1"),
                     ("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_var, _value)

# Selections are built from objects, never strings: string selections need antlr4 4.13, and DVC's hydra pins
# 4.9 (DVC therefore lives in its own environment, see scripts/setup.sh). tests/test_graph.py guards both.
clara_lineage_job = dg.define_asset_job(
    "clara_lineage",
    selection=dg.AssetSelection.assets(*LINEAGE_KEYS),
    description="raw corpus -> SCP data -> compressor -> compressed index -> joint model -> benchmark report",
    executor_def=dg.in_process_executor,
)

# Serving automation (assets/automation.py): the live index re-indexed on a schedule or when the corpus changes,
# and the same work split into shard partitions (docs/reindexing.md).
defs = dg.Definitions(
    assets=LINEAGE_ASSETS + AUTOMATION.assets,
    asset_checks=[benchmark_is_complete, promotion_gate],
    jobs=[clara_lineage_job, *AUTOMATION.jobs],
    schedules=AUTOMATION.schedules,
    sensors=AUTOMATION.sensors,
    resources={"clara": default_project()},
)
