"""One rank of a multi-process stage-1 run (launched by torchrun in tests/test_train.py).

Writes, per rank, the losses it saw and a hash of the trained weights, so the test can check that the
ranks trained on different slices of the batch and still ended with the same weights (gradients are
all-reduced by DeepSpeed), and that only rank 0 logged.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_train import DOCUMENTS, RESUME_STAGE_CFG, make_model, stage1_records, train_cfg  # noqa: E402

from clara_pipeline.train import train_stage  # noqa: E402


def main() -> None:
    compressor, out_dir = sys.argv[1:3]
    rank = int(os.environ["RANK"])
    logged = []
    model = make_model(compressor)
    summary = train_stage(model, "stage1", stage1_records(), DOCUMENTS, dict(RESUME_STAGE_CFG, steps=3, batch_size=2),
                          train_cfg("deepspeed"), seed=0, log_fn=lambda step, m: logged.append(step),
                          checkpoint_dir=Path(out_dir) / "ckpt")
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode() + p.detach().cpu().numpy().tobytes())
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(
        {"losses": summary["losses"], "world_size": summary["world_size"], "weights": h.hexdigest(), "logged": logged}))


if __name__ == "__main__":
    main()
