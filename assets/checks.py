"""Asset checks: the benchmark must be complete before anyone trusts it, and the promotion gate's verdict."""

from __future__ import annotations

import json
import math

import dagster as dg

from assets.resources import ClaraProject

REQUIRED_SYSTEMS = {"qa": ("closed_book", "bm25_compressed", "clara"), "retrieval": ("bm25", "clara")}


@dg.asset_check(asset="benchmark_report", blocking=True,
                description="metrics.json holds finite EM/F1 and Recall@k for CLaRa and every baseline.")
def benchmark_is_complete(clara: ClaraProject) -> dg.AssetCheckResult:
    path = clara.paths().benchmark_report / "metrics.json"
    if not path.is_file():
        return dg.AssetCheckResult(passed=False, metadata={"missing": str(path)})
    metrics = json.loads(path.read_text())
    problems = []
    for section, systems in REQUIRED_SYSTEMS.items():
        for system in systems:
            values = metrics.get(section, {}).get(system)
            if not values:
                problems.append(f"{section}.{system} missing")
            elif any(not isinstance(v, (int, float)) or math.isnan(v) for v in values.values()):
                problems.append(f"{section}.{system} has a non-finite value")
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": ", ".join(problems) or "none",
                                                             "clara_f1": metrics.get("clara", {}).get("f1", float("nan"))})


@dg.asset_check(asset="benchmark_report",
                description="The joint model became champion only if it beat the champion and the baselines of its report.")
def promotion_gate(clara: ClaraProject) -> dg.AssetCheckResult:
    path = clara.paths().benchmark_report / "promotion.json"
    if not path.is_file():
        return dg.AssetCheckResult(passed=False, metadata={"missing": str(path)})
    decision = json.loads(path.read_text())
    # Staying challenger is a normal outcome, reported as a warning rather than an error.
    return dg.AssetCheckResult(
        passed=decision["alias"] == "champion",
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"alias": decision["alias"], "version": decision["version"], "reason": decision["reason"],
                  "score": decision["score"], "metric": decision["metric"]},
    )
