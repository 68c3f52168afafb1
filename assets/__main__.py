"""`python -m assets`: run the whole lineage as a Dagster job on the persistent instance in dagster_home/,
so the run and its materialisations show up afterwards in the Dagster UI."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    os.environ.setdefault("DAGSTER_HOME", str(root / "dagster_home"))
    os.environ.setdefault("CLARA_ROOT", str(root))
    import dagster as dg

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
    report = root / "artifacts" / "benchmark_report" / "report.md"
    print(f"\nclara_lineage finished (run {result.run_id}). Report: {report}")
    if report.exists():
        print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
