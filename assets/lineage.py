"""One Dagster asset per stage of clara_pipeline.stages.STAGES, with the same edges DVC uses.

Each asset runs the library's stage function in the Dagster process and returns its summary (paths,
counts, metrics) as metadata; models stay on disk under artifacts/ and never pass through Dagster.
"""


import json

import dagster as dg

from assets.resources import ClaraProject
from clara_pipeline.stages import STAGES, Stage, run_stage

GROUP = "clara_lineage"


def _metadata(summary: dict) -> dict:
    meta = {}
    for key, value in summary.items():
        if key == "path" or key == "report":
            meta[key] = dg.MetadataValue.path(str(value))
        elif isinstance(value, bool) or value is None:
            meta[key] = dg.MetadataValue.text(str(value))
        elif isinstance(value, (int, float)):
            meta[key] = value
        elif isinstance(value, dict):
            meta[key] = dg.MetadataValue.json(json.loads(json.dumps(value, default=str)))
        else:
            meta[key] = dg.MetadataValue.text(str(value))
    return meta


def stage_asset(stage: Stage) -> dg.AssetsDefinition:
    @dg.asset(
        name=stage.name,
        description=stage.description,
        deps=[dg.AssetKey(upstream) for upstream in stage.reads],
        group_name=GROUP,
        kinds={"python"},
        tags={"dvc_stage": stage.name},
    )
    def _asset(context: dg.AssetExecutionContext, clara: ClaraProject) -> dg.MaterializeResult:
        import os

        os.environ.setdefault("CLARA_ORCHESTRATOR", "dagster")
        summary = run_stage(stage.name, clara.params(), clara.paths(), log=context.log.info)
        metadata = _metadata(summary)
        if stage.name == "benchmark_report":
            report = clara.paths().benchmark_report / "report.md"
            metadata["report_markdown"] = dg.MetadataValue.md(report.read_text())
        return dg.MaterializeResult(metadata=metadata)

    return _asset


LINEAGE_ASSETS = [stage_asset(stage) for stage in STAGES]
LINEAGE_KEYS = [dg.AssetKey(stage.name) for stage in STAGES]
