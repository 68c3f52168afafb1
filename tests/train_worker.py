"""Run stage 1 of the tiny test model in its own process, so a test can kill it with SIGKILL mid-run.

    python tests/train_worker.py COMPRESSOR_PATH BACKEND CHECKPOINT_DIR OUT_JSON SLEEP_SECONDS_PER_STEP
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_train import DOCUMENTS, RESUME_STAGE_CFG, make_model, stage1_records, train_cfg  # noqa: E402

from clara_pipeline.train import train_stage  # noqa: E402


def main() -> None:
    compressor, backend, checkpoint_dir, out_json, sleep = sys.argv[1:6]
    progress = Path(out_json).with_suffix(".steps")

    def log_fn(step, metrics):  # one line per step, so the test can watch progress; the sleep gives it time
        with progress.open("a") as f:
            f.write(f"{step}\n")
        time.sleep(float(sleep))

    summary = train_stage(make_model(compressor), "stage1", stage1_records(), DOCUMENTS, dict(RESUME_STAGE_CFG),
                          train_cfg(backend), seed=0, log_fn=log_fn, checkpoint_dir=checkpoint_dir)
    Path(out_json).write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
