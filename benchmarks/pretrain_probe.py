"""Does reading learnt on other documents survive stage 2? Reconstruction pretraining on a fresh fictional
encyclopedia, then stage 2 on the run's own questions, then the checkpoint probe on its held-out questions.

    .venv/bin/python benchmarks/pretrain_probe.py --root RUN [--pretrain-steps 100] [--stage2-steps 30]
        [--pretrain-targets scp] [--save-pretrained DIR | --from-pretrained DIR [--pretrain-steps N --pretrain-lr L]]
        [--stage2-frozen-compressor] [--stage2-lr 5e-4] [--stage2-reconstruction-weight 0]
        [--stage2-fresh-questions 0] [--corpus-stage1-steps 0] [--mode shared] [--save-stage2 DIR]

Pretraining here trains only on rows asking for a document word for word, over ~2,350 documents of a
fictional encyclopedia drawn with another seed than the run's corpus (``stage1_reading.py --fresh``): none
repeats and none is evaluated, so the loss can only fall by reading the memory tokens. ``--pretrain-targets
scp`` trains on SCP rows of those documents instead, as the paper pretrains (the offline synthesizer's QA
pairs and paraphrases in the official form, plus one reconstruction row each). ``--corpus-stage1-steps N``
adds N steps of the run's own official stage-1 rows after it. Stage 2 then trains on the run's stage-2
records (``train.stage2`` of RUN/params.yaml, with the overrides given; ``--stage2-fresh-questions N`` adds N
questions about fresh documents, which it cannot learn by heart), and ``checkpoint_probe.probe``
measures full-index R@5, QA from the gold documents' memory tokens against closed book, and the memory gain
on the run's documents. ``--mode shared`` builds the one-backbone layout on ``embedded-smollm2`` whatever
RUN's params say. ``--save-pretrained DIR`` keeps the pretrained model; ``--from-pretrained DIR`` starts
from it (and continues its pretraining with ``--pretrain-steps N``); ``--save-stage2 DIR`` keeps the model
after stage 2. Nothing else is saved. One JSON line per phase, the probe last. About 20 minutes with the
defaults on 2 CPU cores (shared layout: ~6.8 s a pretraining step, ~13 s a stage-2 step that trains the
compressor, ~3 s one that does not).
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

from checkpoint_probe import memory_gain, probe  # noqa: E402
from stage1_reading import fresh_records  # noqa: E402

from clara_pipeline import train as training  # noqa: E402
from clara_pipeline.config import load_params  # noqa: E402
from clara_pipeline.corpus import pretraining_documents  # noqa: E402
from clara_pipeline.jsonl import read_jsonl  # noqa: E402
from clara_pipeline.model import ClaraModel  # noqa: E402
from clara_pipeline.synthesis import OfflineSynthesizer, build_stage1_records  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="a project root whose lineage has run")
    ap.add_argument("--pretrain-steps", type=int, default=None,
                    help="default 100; with --from-pretrained, 0 (give N to continue its pretraining N more steps)")
    ap.add_argument("--pretrain-lr", type=float, default=None, help="default: train.stage1.lr")
    ap.add_argument("--pretrain-targets", choices=("reconstruction", "scp"), default="reconstruction",
                    help="scp: SCP on the fresh documents, as the paper pretrains: the offline synthesizer's QA "
                         "pairs and paraphrases in the official form, plus one reconstruction row per document")
    ap.add_argument("--pretrain-documents", type=int, default=2350)
    ap.add_argument("--corpus-stage1-steps", type=int, default=0)
    ap.add_argument("--stage2-steps", type=int, default=30)
    ap.add_argument("--stage2-lr", type=float, default=None, help="default: train.stage2.lr")
    ap.add_argument("--stage2-fresh-questions", type=int, default=0,
                    help="N > 0: stage 2 also trains on N questions about the fresh documents (one of the "
                         "offline synthesizer's QA pairs of each of N of them, BM25 negatives from the fresh "
                         "documents), which it cannot answer by heart")
    ap.add_argument("--stage2-frozen-compressor", action="store_true")
    ap.add_argument("--stage2-reconstruction-weight", type=float, default=0.0,
                    help="> 0: stage 2 rehearses reconstruction of the pretraining documents with this weight")
    ap.add_argument("--mode", choices=("params", "shared"), default="params")
    ap.add_argument("--questions", type=int, default=150)
    ap.add_argument("--save-pretrained", type=Path, default=None,
                    help="save the model after the pretraining phase here (ClaraModel.save)")
    ap.add_argument("--save-stage2", type=Path, default=None,
                    help="keep the model after stage 2 (for checkpoint_probe.py --model DIR --list-sizes ...)")
    ap.add_argument("--from-pretrained", type=Path, default=None,
                    help="skip the pretraining: load a model --save-pretrained wrote (to try stage-2 recipes)")
    ap.add_argument("--verbose", action="store_true", help="print the training log to stderr")
    args = ap.parse_args(argv)

    corpus, scp = args.root / "artifacts" / "raw_corpus", args.root / "artifacts" / "scp_data"
    for needed in (corpus / "documents.jsonl", scp / "stage1.jsonl", scp / "stage2.jsonl"):
        if not needed.is_file():
            print(f"{needed} is missing: run the lineage first (make run)", file=sys.stderr)
            return 2
    params = load_params(args.root / "params.yaml")
    model_cfg = dict(params["model"])
    if args.mode == "shared":
        model_cfg.update(mode="shared", backbone_path="embedded-smollm2")
    doc_rows = read_jsonl(corpus / "documents.jsonl")
    own = {d["id"]: d["text"] for d in doc_rows}
    train_cfg = {**params["train"], "backend": "torch", "checkpoint_every": 0}
    # the training log goes to stderr (progress of a run that takes an hour); stdout keeps one JSON line per phase
    def progress(message: str) -> None:
        if args.verbose:
            print(message, file=sys.stderr, flush=True)

    def steps(step: int, metrics: dict) -> None:
        if step % 25 == 0:
            progress(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                                                   if isinstance(v, (int, float))))
    started = time.perf_counter()

    def report(phase: str, **extra) -> None:
        print(json.dumps({"phase": phase, **extra, "seconds": round(time.perf_counter() - started)}), flush=True)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    probe_texts = [own[i] for i in sorted(own)[:32]]

    # 1. pretraining on fresh documents (reconstruction: the stage-1 rows of stage1_reading.py --fresh)
    fresh_docs = pretraining_documents(args.pretrain_documents, params["seed"] + 1)
    fresh = {d["id"]: d["text"] for d in fresh_docs}
    pretrain_steps = args.pretrain_steps if args.pretrain_steps is not None else (
        0 if args.from_pretrained is not None else 100)
    if args.from_pretrained is not None:
        model = ClaraModel.load(args.from_pretrained)
        # the prompt's form is RUN's (params.yaml), not the saved model's
        model.number_prompt_documents(model_cfg.get("number_documents", False))
        report("loaded", model=str(args.from_pretrained), **memory_gain(model, probe_texts))
    else:
        model = ClaraModel.from_params(model_cfg, seed=params["seed"])
    if pretrain_steps:
        # a loaded model continues with a fresh schedule (warm-up, then decay) over the same documents
        pretrain_cfg = {**params["train"]["stage1"], "steps": pretrain_steps, "target_form": "reconstruction"}
        records = fresh_records(fresh)
        if args.pretrain_targets == "scp":
            # the documents never repeat, so answering about them can only be learnt by reading; the
            # reconstruction row keeps the word-for-word reading the QA rows alone would not ask for
            records, _ = build_stage1_records(fresh_docs, OfflineSynthesizer(seed=params["seed"]),
                                              params["scp"]["max_qa_per_doc"], params["scp"]["paraphrases_per_doc"])
            pretrain_cfg.update(target_form="official", reconstruction_per_doc=1)
        if args.pretrain_lr is not None:
            pretrain_cfg["lr"] = args.pretrain_lr
        model.train()
        training.train_stage(model, "stage1", records, fresh, pretrain_cfg, train_cfg,
                             seed=params["seed"], log=progress, log_fn=steps)
        model.eval()
        report("pretrained", training_documents=len(fresh), steps=pretrain_steps, lr=pretrain_cfg["lr"],
               targets=args.pretrain_targets,
               continued_from=None if args.from_pretrained is None else str(args.from_pretrained),
               **memory_gain(model, probe_texts))
        if args.save_pretrained is not None:
            model.save(args.save_pretrained)
    model.train()

    # 2. optionally, the run's own stage-1 rows
    if args.corpus_stage1_steps:
        training.train_stage(model, "stage1", read_jsonl(scp / "stage1.jsonl"), own,
                             {**params["train"]["stage1"], "steps": args.corpus_stage1_steps}, train_cfg,
                             seed=params["seed"], log=progress, log_fn=steps)
        model.eval()
        report("corpus_stage1", steps=args.corpus_stage1_steps, **memory_gain(model, probe_texts))
        model.train()

    # 3. stage 2 on the run's questions
    stage2 = {**params["train"]["stage2"], "steps": args.stage2_steps,
              "train_compressor": not args.stage2_frozen_compressor,
              "reconstruction_weight": args.stage2_reconstruction_weight}
    if args.stage2_lr is not None:
        stage2["lr"] = args.stage2_lr
    stage2_records, stage2_docs = read_jsonl(scp / "stage2.jsonl"), own
    if args.stage2_fresh_questions:
        stage2_records = stage2_records + fresh_questions(fresh_docs, args.stage2_fresh_questions, params)
        stage2_docs = {**own, **fresh}
    training.train_stage(model, "stage2", stage2_records, stage2_docs, stage2, train_cfg,
                         seed=params["seed"], log=progress, log_fn=steps,
                         reconstruction_documents=fresh)
    model.eval()
    if args.save_stage2 is not None:
        model.save(args.save_stage2)
    out = probe(model, doc_rows, read_jsonl(corpus / "questions_eval.jsonl")[: args.questions])
    report("stage2", steps=args.stage2_steps, train_compressor=stage2["train_compressor"], lr=stage2["lr"],
           fresh_questions=args.stage2_fresh_questions,
           reconstruction_weight=args.stage2_reconstruction_weight, **out)
    return 0


def fresh_questions(fresh_docs: list[dict], n: int, params: dict) -> list[dict]:
    """Stage-2 records about n of the fresh documents: one of the offline synthesizer's QA pairs of each (a
    seeded choice, never the first, "What is known as a writer?", which many documents answer), the document
    as gold, BM25's hits among the fresh documents as negatives."""
    import random

    from clara_pipeline.retrieval import build_candidates, make_retriever

    rng = random.Random(params["seed"] + 2)
    docs = rng.sample(fresh_docs, min(n, len(fresh_docs)))
    pairs, _ = build_stage1_records(docs, OfflineSynthesizer(seed=params["seed"]), params["scp"]["max_qa_per_doc"], 0)
    by_doc: dict[str, list[dict]] = {}
    for r in pairs:
        by_doc.setdefault(r["doc_id"], []).append(r)
    rows = [rng.choice(qa[1:] or qa) for qa in by_doc.values()]
    questions = [{"id": f"fresh-q{i}", "question": r["question"], "answers": [r["answer"]],
                  "gold_doc_ids": [r["doc_id"]], "type": "fresh"} for i, r in enumerate(rows)]
    records, _ = build_candidates(questions, make_retriever("bm25", fresh_docs), params["scp"]["candidates"])
    return records


if __name__ == "__main__":
    sys.exit(main())
