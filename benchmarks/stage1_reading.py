"""Does stage 1 teach the generator to read its memory tokens, and how fast? A stage-1-only run that reports
`memory_gain` (benchmarks/checkpoint_probe.py) on the project's own documents every few steps.

    .venv/bin/python benchmarks/stage1_reading.py --steps 100                  # the SCP data of artifacts/
    .venv/bin/python benchmarks/stage1_reading.py --steps 100 --fresh 2350     # a fresh fictional corpus

Training rows are the official stage-1 rows of artifacts/scp_data, or with ``--reconstruction`` only rows
asking for the document word for word. ``--fresh N`` trains instead on N reconstruction rows of a fictional
encyclopedia drawn with another seed, so no training document repeats and none is one the gain is measured
on: a generator cannot lower its loss by learning the corpus by heart, only by reading. Settings come from
params.yaml (train.stage1, model); the model is not saved. One JSON line per probe, then a summary line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from checkpoint_probe import memory_gain  # noqa: E402

from clara_pipeline import train as training  # noqa: E402
from clara_pipeline.config import load_params  # noqa: E402
from clara_pipeline.corpus import pretraining_documents  # noqa: E402
from clara_pipeline.jsonl import read_jsonl  # noqa: E402
from clara_pipeline.model import ClaraModel  # noqa: E402


def fresh_documents(n: int, seed: int) -> dict[str, str]:
    """About n documents of a fictional encyclopedia drawn with `seed` (corpus.pretraining_documents)."""
    return {d["id"]: d["text"] for d in pretraining_documents(n, seed)}


def fresh_records(documents: dict[str, str]) -> list[dict]:
    """Stage-1 records that only name their documents (all `target_form: reconstruction` reads)."""
    return [{"doc_id": d} for d in documents]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--every", type=int, default=50, help="probe every N steps")
    ap.add_argument("--probe-docs", type=int, default=32)
    ap.add_argument("--reconstruction", action="store_true", help="train on reconstruction rows only")
    ap.add_argument("--fresh", type=int, default=0, help="train on ~N fresh fictional documents instead")
    args = ap.parse_args(argv)
    corpus = args.root / "artifacts" / "raw_corpus" / "documents.jsonl"
    scp = args.root / "artifacts" / "scp_data" / "stage1.jsonl"
    for needed in (corpus, scp):
        if not needed.is_file():
            print(f"{needed} is missing: run the lineage first (make run)", file=sys.stderr)
            return 2
    params = load_params(args.root / "params.yaml")
    own = {d["id"]: d["text"] for d in read_jsonl(corpus)}
    probe_texts = [own[i] for i in sorted(own)[: args.probe_docs]]
    cfg = {**params["train"]["stage1"], "steps": args.steps, "log_every": 1}
    if args.fresh:
        documents = fresh_documents(args.fresh, params["seed"] + 1)
        records = fresh_records(documents)
    else:
        documents, records = own, read_jsonl(scp)
    if args.fresh or args.reconstruction:
        cfg["target_form"] = "reconstruction"
    model = ClaraModel.from_params(params["model"], seed=params["seed"])
    started = time.perf_counter()

    def on_step(step: int, metrics: dict) -> None:
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            model.eval()
            row = {"step": step + 1, "train_loss": round(metrics["loss"], 3), **memory_gain(model, probe_texts),
                   "seconds": round(time.perf_counter() - started)}
            model.train()
            print(json.dumps(row), flush=True)

    summary = training.train_stage(model, "stage1", records, documents, cfg,
                                   {**params["train"], "backend": "torch", "checkpoint_every": 0},
                                   seed=params["seed"], log_fn=on_step, log=lambda m: None)
    print(json.dumps({"rows": summary["records"], "training_documents": len(documents), "steps": args.steps,
                      "seconds_per_step": round(summary["seconds_per_step"], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
