"""`python -m assets`: run the whole lineage as a Dagster job on the persistent instance in dagster_home/,
so the run and its materialisations show up afterwards in the Dagster UI."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> int:
    repo = Path(__file__).resolve().parent.parent
    os.environ.setdefault("DAGSTER_HOME", str(repo / "dagster_home"))
    root = Path(os.environ.setdefault("CLARA_ROOT", str(repo)))  # another project root: its params.yaml
    import dagster as dg
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per model load is noise in the run's log

    from assets.definitions import defs

    job = defs.resolve_job_def("clara_lineage")
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance,
            run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
            raise_on_error=False,
        )
    if not result.success:
        print("clara_lineage failed; see the error above or the run in the Dagster UI", file=sys.stderr)
        return 1
    out = root / "artifacts" / "benchmark_report"
    print(f"\nclara_lineage finished (run {result.run_id}). Full report: {out / 'report.md'}")
    if (out / "metrics.json").exists():
        from clara_pipeline.benchmark import terminal_summary

        promotion = out / "promotion.json"
        print(terminal_summary(json.loads((out / "metrics.json").read_text()),
                       json.loads(promotion.read_text()) if promotion.exists() else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
