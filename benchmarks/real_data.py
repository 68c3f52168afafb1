"""The whole lineage and its benchmark on real data, in a project root of its own.

    .venv/bin/python benchmarks/real_data.py --set wiki_scp_qa|musique_mini|all [--quick]
        [--full-steps] [--data DIR] [--out DIR] [--from STAGE] [--until STAGE]
        [--eval-fraction F]

For each set this builds ``artifacts-real/<set>/`` (under the repository; gitignored) holding a
``params.yaml`` derived from the repository's ``params.yaml`` with the set's ``corpus:`` importer spec,
then runs the lineage stages in order with ``clara_pipeline.stages.run_stage``:

    raw_corpus -> scp_data -> compressor_checkpoint -> compressed_index -> clara_model -> benchmark_report

MLflow logs to ``artifacts-real/<set>/mlflow/mlflow.db`` (``MLFLOW_TRACKING_URI`` is set to it before any
MLflow call), so the project's own runs and model registry are never touched. The report is in
``artifacts-real/<set>/artifacts/benchmark_report/report.md``; the script prints its main tables.

Settings on top of params.yaml (also written into the derived params.yaml, and printed):

* wiki_scp_qa: ``corpus: {source: clara_stage1, eval_fraction: 0.1, seed: 0}``: the importer holds out a
  seeded 10 % of the QA pairs for evaluation and keeps them out of the stage-1 records;
* musique_mini: ``corpus: {source: musique, corpus_path: ..., eval_fraction: 0.1}`` (100 questions, so
  10 held-out questions: a smoke test, not a measurement; ``--eval-fraction`` changes it), and
  ``scp.candidates: 16`` since after chunking one training question has 11 gold chunks, more than the
  default 10 candidates can hold in the oracle setting;
* both: the passages are ~95 words (median 143 / 90th percentile 207 MiniLM tokens for wiki_scp_qa,
  90 / 180 for MuSiQue), far beyond the embedded default's ``model.doc_max_length: 64``. So
  ``model.doc_max_length: 128`` (16 memory tokens at compression rate 8) and documents longer than 128
  MiniLM tokens are chunked by the importer (``doc_max_tokens: 128, overlap: 16, tokenizer:
  embedded-minilm``): nothing is truncated away; every chunk of a gold passage is gold, and the benchmark
  counts retrieval over passages (chunks mapped back to their passage);
* training steps stage 1/2/3: 150/75/75 by default (more than make run's, since these sets hold thousands of
  training records; about 35 minutes of training on wiki_scp_qa on 2 CPU cores with the SmolLM2 default:
  6.5 / 11.7 / 4.2 s a step); ``--full-steps`` keeps params.yaml's (60/30/30 today); ``--quick``:
  40/20/20 and the first 150 evaluation questions, a smoke run of the whole path, not a trained model.

A set whose folder ``<data>/<set>`` is absent is skipped with a message (exit status 0).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGE_ORDER = ("raw_corpus", "scp_data", "compressor_checkpoint", "compressed_index", "clara_model", "benchmark_report")
CHUNKING = {"doc_max_tokens": 128, "overlap": 16, "tokenizer": "embedded-minilm"}
DOC_MAX_LENGTH = 128
DEFAULT_STEPS = {"stage1": 150, "stage2": 75, "stage3": 75}
QUICK_STEPS = {"stage1": 40, "stage2": 20, "stage3": 20}
QUICK_MAX_EVAL = 150
MUSIQUE_CANDIDATES = 16


def corpus_spec(name: str, folder: Path, eval_fraction: float) -> dict:
    if name == "wiki_scp_qa":
        return {"source": "clara_stage1", "path": str(folder / "wiki_scp_qa.jsonl"), "eval_fraction": eval_fraction,
                "seed": 0, **CHUNKING}
    if name == "musique_mini":
        return {"source": "musique", "path": str(folder / "musique_train.json"),
                "corpus_path": str(folder / "musique_train_corpus.json"), "eval_fraction": eval_fraction,
                "seed": 0, **CHUNKING}
    raise ValueError(f"unknown set {name!r}")


SETS = ("wiki_scp_qa", "musique_mini")


def derive_params(base: dict, name: str, folder: Path, quick: bool, eval_fraction: float,
                  full_steps: bool = False) -> dict:
    params = copy.deepcopy(base)
    params["corpus"] = corpus_spec(name, folder, eval_fraction)
    params["model"]["doc_max_length"] = DOC_MAX_LENGTH
    # the stage code reads the DeepSpeed config relative to the working directory: make it absolute
    ds = params["train"].get("deepspeed_config")
    if ds and not Path(ds).is_absolute():
        params["train"]["deepspeed_config"] = str(ROOT / ds)
    if not full_steps:
        for stage, steps in (QUICK_STEPS if quick else DEFAULT_STEPS).items():
            params["train"][stage]["steps"] = steps
    if quick:
        params["benchmark"]["max_eval_questions"] = QUICK_MAX_EVAL
    params["registry"]["model_name"] = f"clara-{name.replace('_', '-')}"
    if name == "musique_mini":
        # 2-4 supporting paragraphs, each up to 3 chunks: one training question has 11 gold chunks, and the
        # oracle candidate lists of stages 2/3 must hold them all
        params["scp"]["candidates"] = MUSIQUE_CANDIDATES
    t = params["train"]
    params["benchmark"]["report_notes"] = {
        "data": f"{name} from {folder} through the importer (corpus: {json.dumps(params['corpus'])})",
        "documents": "passages longer than 128 MiniLM tokens chunked (128 tokens, overlap 16); "
                     f"model.doc_max_length {DOC_MAX_LENGTH} (the embedded default's 64 would cut most passages)",
        "training": f"steps stage1/2/3 = {t['stage1']['steps']}/{t['stage2']['steps']}/{t['stage3']['steps']}, batch "
                    f"{t['stage1']['batch_size']}/{t['stage2']['batch_size']}/{t['stage3']['batch_size']}"
                    + (" (--quick)" if quick else "") + "; generator: " + (
                        "small Llama trained from scratch" if not params["model"].get("generator_path") else
                        params["model"]["generator_path"]),
        "candidates": f"scp.candidates {params['scp']['candidates']} (BM25 top-N for stages 2/3 and clara_rerank)",
        "command": f"benchmarks/real_data.py --set {name}" + (" --quick" if quick else ""),
    }
    if quick:
        params["benchmark"]["report_notes"]["evaluation"] = f"first {QUICK_MAX_EVAL} held-out questions (--quick)"
    return params


def print_report(report_dir: Path) -> None:
    metrics = json.loads((report_dir / "metrics.json").read_text())
    print(f"\n== {report_dir}: {metrics['num_questions']} evaluation questions ==")
    ret = metrics["retrieval"]
    ks = sorted({int(k.split("@")[1]) for v in ret.values() for k in v if k.startswith("recall@")})
    print("retrieval   " + "".join(f"{'R@' + str(k):>8}" for k in ks) + f"{'MRR':>8}")
    for system, v in ret.items():
        print(f"{system:<12}" + "".join(f"{v[f'recall@{k}']:>8.3f}" for k in ks) + f"{v['mrr']:>8.3f}")
    print(f"\n{'QA system':<22}{'EM':>7}{'F1':>7}{'subEM':>7}{'coverEM':>8}{'ctx pos':>9}{'TTFT ms':>9}{'ans ms':>8}")
    eff = metrics.get("efficiency_by_system", {})
    for system, v in metrics["qa"].items():
        e = eff.get(system, {})
        print(f"{system:<22}{v['em']:>7.3f}{v['f1']:>7.3f}{v.get('sub_em', float('nan')):>7.3f}"
              f"{v.get('cover_em', float('nan')):>8.3f}{e.get('context_positions_mean', float('nan')):>9.1f}"
              f"{e.get('ttft_ms', float('nan')):>9.1f}{e.get('latency_ms', float('nan')):>8.1f}")
    print(f"\nfull report: {report_dir / 'report.md'}")


def run_set(name: str, args, base: dict) -> int:
    folder = args.data / name
    if not folder.is_dir():
        print(f"{name}: {folder} is absent; skipped (the real-data sets live in ../shared/data, see its README)")
        return 0
    root = (args.out / name).resolve()
    root.mkdir(parents=True, exist_ok=True)
    params = derive_params(base, name, folder.resolve(), args.quick, args.eval_fraction, args.full_steps)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # this root's own tracking store: never the project's registry
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    (root / "mlflow").mkdir(exist_ok=True)
    from clara_pipeline.config import Paths
    from clara_pipeline.stages import run_stage

    print(f"{name}: project root {root}\n{name}: corpus {json.dumps(params['corpus'])}\n"
          f"{name}: model.doc_max_length={params['model']['doc_max_length']}, compression_rate="
          f"{params['model']['compression_rate']}, steps stage1/2/3="
          f"{'/'.join(str(params['train'][s]['steps']) for s in ('stage1', 'stage2', 'stage3'))}"
          f"{', quick' if args.quick else ''}", flush=True)
    paths = Paths(root)
    start = STAGE_ORDER.index(args.from_stage) if args.from_stage else 0
    stop = STAGE_ORDER.index(args.until_stage) + 1 if args.until_stage else len(STAGE_ORDER)
    started = time.perf_counter()
    for stage in STAGE_ORDER[start:stop]:
        summary = run_stage(stage, params, paths, log=lambda m: print(f"  {m}", flush=True))
        print(f"{name}: {stage} done in {summary['seconds']:.1f} s", flush=True)
    print(f"{name}: lineage done in {time.perf_counter() - started:.0f} s")
    if stop < len(STAGE_ORDER):
        return 0
    print_report(paths.benchmark_report)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", default="all", choices=SETS + ("all",))
    ap.add_argument("--quick", action="store_true", help="40/20/20 training steps and the first 150 eval questions")
    ap.add_argument("--full-steps", action="store_true", help="params.yaml's training steps")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "artifacts-real")
    ap.add_argument("--from", dest="from_stage", choices=STAGE_ORDER, default=None,
                    help="start at this stage (the earlier stages' folders must exist)")
    ap.add_argument("--until", dest="until_stage", choices=STAGE_ORDER, default=None,
                    help="stop after this stage")
    ap.add_argument("--eval-fraction", type=float, default=0.1)
    args = ap.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per model load
    for var, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                       ("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "1")):
        os.environ.setdefault(var, value)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    status = 0
    for name in (SETS if args.set == "all" else (args.set,)):
        status |= run_set(name, args, base)
    return status


import yaml  # noqa: E402  (after the sys.path insert above, with the project's other imports)

if __name__ == "__main__":
    sys.exit(main())
