"""Generate ``dvc.yaml`` from the stage registry, so DVC and Dagster share one declaration."""

from __future__ import annotations

from pathlib import Path

import yaml

from clara_pipeline.config import Paths
from clara_pipeline.stages import STAGES

HEADER = "# Generated from clara_pipeline/stages.py by `clara dvc-yaml`; do not edit by hand.\n"
# how `dvc plots show` draws each plots file a stage declares
PLOT_SPECS = {
    "recall_at_k.json": {"x": "k", "y": ["bm25", "dense", "clara", "clara_rerank"],
                         "title": "Recall@k of gold documents"},
    "quality_vs_compression.json": {"x": "effective_rate", "y": ["f1", "em"], "template": "scatter",
                                    "title": "Answer quality vs compression rate (1 = full text)"},
}


def dvc_stages(root: Path) -> dict:
    paths = Paths(Path(root))
    rel = lambda p: str(Path(p).relative_to(root))  # noqa: E731
    stages, plots = {}, []
    for stage in STAGES:
        folder = paths.stage_dir(stage.name)
        entry = {
            "cmd": f"clara stage {stage.name}",
            "deps": ["clara_pipeline/stages.py", *stage.code, *[rel(paths.stage_dir(u)) for u in stage.reads]],
            "params": list(stage.params),
        }
        if stage.outputs:
            entry["outs"] = [rel(folder / f) for f in stage.outputs]
        elif stage.persist:  # DVC must not delete it before the command runs: the stage updates it in place
            entry["outs"] = [{rel(folder): {"persist": True}}]
        else:
            entry["outs"] = [rel(folder)]
        if stage.metrics:
            entry["metrics"] = [{rel(folder / f): {"cache": False}} for f in stage.metrics]
        for f in stage.plots:  # plotted files are small, kept in git-visible form rather than the cache
            entry["outs"].append({rel(folder / f): {"cache": False}})
            plots.append({rel(folder / f): PLOT_SPECS[f]})
        stages[stage.name] = entry
    return {"stages": stages, "plots": plots}


def render(root: Path) -> str:
    return HEADER + yaml.safe_dump(dvc_stages(root), sort_keys=False, width=120)
