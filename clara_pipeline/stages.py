"""The one declaration of the lineage.

    raw_corpus -> scp_data -> compressor_checkpoint -> compressed_index -> clara_model -> benchmark_report

Each ``Stage`` names the upstream stages whose folders it reads, the params.yaml sections it reads and the code it runs. Dagster
builds its assets from ``STAGES`` (assets/definitions.py) and ``dvc.yaml`` is generated from ``STAGES``
(``clara dvc-yaml``), so the two graphs cannot drift; tests/test_graph.py fails if they do.

Every stage writes one folder under ``artifacts/`` and returns a small summary dict (counts, metrics,
paths), which Dagster shows as materialisation metadata. Models never travel between stages in memory:
a stage reads its inputs from disk, so any stage can run alone (``clara stage NAME``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from clara_pipeline import tracking
from clara_pipeline.config import Paths, resolve_model_path
from clara_pipeline.jsonl import read_jsonl, write_jsonl


@dataclass
class StageContext:
    params: dict
    paths: Paths
    log: Callable[[str], None] = print


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    reads: tuple[str, ...]               # upstream stages whose folders this stage reads (its graph edges)
    params: tuple[str, ...]              # params.yaml keys (DVC tracks them; the stage reads only these)
    code: tuple[str, ...]                # source files whose change must rerun the stage
    run: Callable[[StageContext], dict]
    # DVC cannot nest a metrics file inside a cached output folder, so a stage with metrics or plots lists
    # its output files one by one instead of its whole folder.
    outputs: tuple[str, ...] = ()        # files in the stage folder (empty = the whole folder is one output)
    metrics: tuple[str, ...] = ()        # files in the stage folder that DVC reads as metrics (not cached)
    plots: tuple[str, ...] = ()
    persist: bool = False                # the stage updates its folder in place (incremental re-indexing)


def _write_summary(out_dir: Path, summary: dict) -> dict:
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _progress(log, what: str, every: int = 25):
    def step_logger(step: int, metrics: dict) -> None:
        if step % every == 0:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
            log(f"{what} step {step}: {shown}")
    return step_logger


# ---------------------------------------------------------------- raw_corpus
def run_raw_corpus(ctx: StageContext) -> dict:
    """The embedded encyclopedia, or a user's corpus through an importer (corpus.source in params.yaml)."""
    cfg = ctx.params["corpus"]
    out = ctx.paths.raw_corpus
    out.mkdir(parents=True, exist_ok=True)
    source = cfg.get("source", "embedded")
    with tracking.stage_run(ctx.paths.root, "raw_corpus", {"seed": ctx.params["seed"], "corpus": cfg}) as run:
        if source == "embedded":
            from clara_pipeline.corpus import generate_corpus, write_corpus

            stats = write_corpus(out, generate_corpus(cfg, ctx.params["seed"]))
        else:
            from clara_pipeline.importers import import_corpus, write_import

            result = import_corpus(cfg, root=ctx.paths.root, seed=ctx.params["seed"])
            stats = write_import(out, result)
            report = result.report
            for kind, counts in report["counts"].items():
                ctx.log(f"raw_corpus: {kind}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
            for reason, n in sorted(report["rejected_by_reason"].items()):
                ctx.log(f"raw_corpus: rejected {n} ({reason}); each is listed in {out / 'rejected.jsonl'}")
            run.log_metrics({"counts": report["counts"], "rejected": report["rejected_by_reason"]})
            run.log_artifacts(out / "import_report.json")
            stats = {**stats, "counts": report["counts"], "rejected_by_reason": report["rejected_by_reason"]}
        run.log_metrics({k: v for k, v in stats.items() if k in ("documents", "questions", "document_words")})
    ctx.log(f"raw_corpus: {json.dumps(stats, default=str)[:2000]}")
    return _write_summary(out, {"path": str(out), "source": source, **stats})


# ---------------------------------------------------------------- scp_data
def run_scp_data(ctx: StageContext) -> dict:
    from clara_pipeline.retrieval import build_candidates, make_retriever
    from clara_pipeline.synthesis import build_stage1_records, make_synthesizer

    cfg = ctx.params["scp"]
    pretraining_targets = cfg.get("pretraining_targets", "reconstruction") or "reconstruction"
    if pretraining_targets not in ("reconstruction", "scp"):
        raise ValueError(f"params.yaml: scp.pretraining_targets must be 'reconstruction' or 'scp', "
                         f"got {pretraining_targets!r}")
    corpus = ctx.paths.raw_corpus
    documents = read_jsonl(corpus / "documents.jsonl")
    questions = read_jsonl(corpus / "questions_train.jsonl")
    shipped = read_jsonl(corpus / "stage1.jsonl") if (corpus / "stage1.jsonl").is_file() else []
    synth = None
    if shipped:
        # the corpus came with its own SCP data (CLaRa's stage-1 JSONL): train on it as it is
        stage1 = shipped
        stage1_stats = {"synthesizer": "corpus", "records": len(shipped),
                        "qa": sum(r["data_type"] == "qa" for r in shipped),
                        "paraphrase": sum(r["data_type"] == "paraphrase" for r in shipped)}
        synth_name, prompt_version = "corpus", "corpus"
    else:
        # LLM replies are cached by document hash + prompt version + model, so a rerun never pays twice
        synth = make_synthesizer(cfg, ctx.params["seed"], cache_dir=ctx.paths.artifacts / ".cache" / "scp")
        stage1, stage1_stats = build_stage1_records(documents, synth, cfg["max_qa_per_doc"],
                                                    cfg["paraphrases_per_doc"], log=ctx.log)
        synth_name, prompt_version = synth.name, synth.prompt_version
    # stages 2 and 3 learn to answer: a question without a gold answer (e.g. BEIR) can only be evaluated
    answerable = [q for q in questions if q.get("answers")]
    if len(answerable) < len(questions):
        ctx.log(f"scp_data: {len(questions) - len(answerable)} questions have no answer; left out of stages 2/3")
    synthetic = 0
    if not answerable:
        # a bare corpus: the synthesised QA pairs become the stage-2/3 questions, gold = their document
        answerable = [{"id": r["id"], "question": r["question"], "answers": [r["answer"]],
                       "gold_doc_ids": [r["doc_id"]], "type": "synthetic"} for r in stage1 if r["data_type"] == "qa"]
        synthetic = len(answerable)
        ctx.log(f"scp_data: the corpus has no questions; {synthetic} synthesised QA pairs serve stages 2/3")
    retriever = make_retriever(cfg.get("retriever", "bm25"), documents)
    stage2, cand_stats = build_candidates(answerable, retriever, cfg["candidates"], cfg.get("setting", "oracle"))
    cand_stats.update(retriever=cfg.get("retriever", "bm25"), synthetic_questions=synthetic,
                      questions_without_answer=sum(1 for q in questions if not q.get("answers")))
    pretraining = _pretraining_documents(cfg, documents, ctx.params["seed"])
    pretraining_scp: list[dict] = []
    if pretraining and pretraining_targets == "scp":
        # The paper's SCP pretraining: QA pairs and paraphrases of documents that are never evaluated. None of
        # them repeats, so answering from their memory tokens can only be learnt by reading them. The corpus's
        # synthesizer is reused (an LLM backend loads its model once).
        pre_synth = synth or make_synthesizer(cfg, ctx.params["seed"], cache_dir=ctx.paths.artifacts / ".cache" / "scp")
        ctx.log(f"scp_data: SCP rows for {len(pretraining)} pretraining documents ({pre_synth.name})")
        pretraining_scp, _ = build_stage1_records(pretraining, pre_synth, cfg["max_qa_per_doc"],
                                                  cfg["paraphrases_per_doc"], log=ctx.log)
    out = ctx.paths.scp_data
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "stage1.jsonl", stage1)
    write_jsonl(out / "stage2.jsonl", stage2)
    write_jsonl(out / "pretraining.jsonl", pretraining)
    # written empty under `reconstruction`, so a switch back never leaves the last run's rows behind
    write_jsonl(out / "pretraining_scp.jsonl", pretraining_scp)
    summary = {"path": str(out), "synthesizer": synth_name, "prompt_version": prompt_version,
               "stage1": stage1_stats, "candidates": cand_stats, "pretraining_documents": len(pretraining),
               "pretraining_targets": pretraining_targets, "pretraining_scp_records": len(pretraining_scp)}
    with tracking.stage_run(ctx.paths.root, "scp_data", {"seed": ctx.params["seed"], "scp": cfg}) as run:
        run.log_metrics(summary["stage1"], prefix="stage1.")
        run.log_metrics(summary["candidates"], prefix="candidates.")
        samples = out / "samples.json"
        samples.write_text(json.dumps({"stage1": stage1[:20], "stage2": stage2[:5]}, indent=2))
        run.log_artifacts(samples)
    ctx.log(f"scp_data: {len(stage1)} stage-1 records, {len(stage2)} stage-2/3 questions "
            f"({cand_stats['setting']} setting, gold recall@{cand_stats['n']} {cand_stats['gold_recall_at_n']:.3f})")
    return _write_summary(out, summary)


def _pretraining_documents(cfg: dict, documents: list[dict], seed: int) -> list[dict]:
    """Documents for reconstruction pretraining (train.pretrain), never the evaluated corpus's own.

    scp.pretraining_documents: N draws N from a second fictional encyclopedia (seed + 1);
    scp.pretraining_source: a JSONL of {"id", "text"} documents instead (e.g. Wikipedia paragraphs)."""
    from clara_pipeline.corpus import pretraining_documents

    n = int(cfg.get("pretraining_documents", 0) or 0)
    source = cfg.get("pretraining_source", "embedded") or "embedded"
    if source == "embedded":
        return pretraining_documents(n, seed + 1, exclude_titles={d.get("title") for d in documents})
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"scp.pretraining_source: {path} does not exist; give a JSONL of "
                                f'{{"id", "text"}} documents, or "embedded"')
    rows = read_jsonl(path)
    for i, row in enumerate(rows, 1):
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            raise ValueError(f'{path}: record {i} has no "text"; every pretraining document needs one')
    own = {d["text"] for d in documents}
    rows = [{"id": str(r.get("id", f"pre-{i}")), "text": r["text"]} for i, r in enumerate(rows) if r["text"] not in own]
    return rows[:n] if n > 0 else rows


def _documents_by_id(paths: Paths) -> dict[str, str]:
    return {d["id"]: d["text"] for d in read_jsonl(paths.raw_corpus / "documents.jsonl")}


# ---------------------------------------------------------------- compressor_checkpoint
def _train_state_dir(paths: Paths, asset: str) -> Path:
    """Where a training asset keeps its resumable checkpoints until it has finished (outside its output)."""
    return paths.artifacts / ".train_state" / asset


def run_compressor_checkpoint(ctx: StageContext) -> dict:
    """Optional reconstruction pretraining on documents that are never evaluated (train.pretrain), stage 1
    (SCP: QA + paraphrase from one compressed document, plus the MSE term), then stage 2 (answer from
    question + top-k compressed documents).

    Under ``deepspeed``/``torchrun`` every process runs this; rank 0 alone logs to MLflow and writes the
    checkpoint. A killed run picks up from its last checkpoint under artifacts/.train_state/."""
    from clara_pipeline.model import ClaraModel
    from clara_pipeline.train import barrier, is_rank0, train_stage

    p = ctx.params
    documents = _documents_by_id(ctx.paths)
    stage1 = read_jsonl(ctx.paths.scp_data / "stage1.jsonl")
    stage2 = read_jsonl(ctx.paths.scp_data / "stage2.jsonl")
    pretrain_steps = int(p["train"].get("pretrain", {}).get("steps", 0) or 0)
    pretraining: dict[str, str] = {}
    pretraining_scp: list[dict] = []
    if pretrain_steps:
        pre_path = ctx.paths.scp_data / "pretraining.jsonl"
        pretraining = {d["id"]: d["text"] for d in (read_jsonl(pre_path) if pre_path.is_file() else [])}
        if not pretraining:
            raise ValueError(f"train.pretrain.steps is {pretrain_steps} but {pre_path} holds no documents: set "
                             "scp.pretraining_documents (and rerun scp_data), or train.pretrain.steps: 0")
        scp_path = ctx.paths.scp_data / "pretraining_scp.jsonl"
        pretraining_scp = read_jsonl(scp_path) if scp_path.is_file() else []
    # The embedded generator's tokenizer is learnt from the text it will have to read and write.
    tokenizer_texts = (list(documents.values()) + list(pretraining.values()) + [r["question"] for r in stage2]
                       + [r["answer"] for r in stage1 + pretraining_scp])
    out = ctx.paths.compressor_checkpoint
    state_dir = _train_state_dir(ctx.paths, "compressor_checkpoint")
    with tracking.stage_run(ctx.paths.root, "compressor_checkpoint",
                            {"seed": p["seed"], "model": p["model"], "train": p["train"]}) as run:
        model = ClaraModel.from_params(p["model"], corpus_texts=tokenizer_texts, seed=p["seed"])
        summaries, upstream = {}, ""
        phases = [("stage1", stage1, documents, p["train"]["stage1"]), ("stage2", stage2, documents, p["train"]["stage2"])]
        if pretrain_steps and pretraining_scp:
            # reading first, on documents that are never evaluated: their SCP rows (scp.pretraining_targets: scp;
            # all QA pairs, a paraphrase) plus `reconstruction_per_doc` rows asking for each word for word
            phases.insert(0, ("pretrain", pretraining_scp, pretraining,
                              {"reconstruction_per_doc": 1, **p["train"]["pretrain"], "target_form": "official"}))
        elif pretrain_steps:
            # reading first: the memory tokens of documents that are never evaluated, reconstructed word for word
            phases.insert(0, ("pretrain", [{"doc_id": d} for d in pretraining], pretraining,
                              {**p["train"]["pretrain"], "target_form": "reconstruction"}))
        # steps: 0 leaves a phase out, e.g. stage 1 after a long pretraining (the quality profile: 60 steps of
        # the corpus's own SCP rows there halved QA from the gold memory tokens, docs/embedded-default.md)
        skipped = [ph[0] for ph in phases if int(ph[3].get("steps", 0) or 0) <= 0]
        for stage in skipped:
            ctx.log(f"compressor_checkpoint: {stage} skipped (train.{stage}.steps is 0)")
        phases = [ph for ph in phases if ph[0] not in skipped]
        for stage, records, docs, stage_cfg in phases:
            ctx.log(f"compressor_checkpoint: {stage} on {len(records)} records")
            step_log = _progress(ctx.log, stage)

            def log_fn(step, metrics, _stage=stage, _log=step_log):
                run.log_step(step, metrics, prefix=f"{_stage}.")
                _log(step, metrics)

            summary = train_stage(model, "stage1" if stage == "pretrain" else stage, records, docs, stage_cfg,
                                  p["train"], seed=p["seed"], log_fn=log_fn, checkpoint_dir=state_dir / stage,
                                  depends_on=upstream, log=ctx.log,
                                  # stage 2's reconstruction rehearsal reads the pretraining documents, or the corpus's
                                  reconstruction_documents=(pretraining or documents) if stage == "stage2" else None)
            upstream = summary["fingerprint"]
            summary.pop("losses")  # per-step losses are in MLflow
            summaries[stage] = summary
            run.log_metrics(summary, prefix=f"{stage}.summary.")
        if is_rank0():
            if out.exists():
                shutil.rmtree(out)
            model.save(out)
            run.log_artifacts(out, "checkpoint")
            shutil.rmtree(state_dir, ignore_errors=True)  # finished: nothing left to resume
        barrier()
        run_id = run.run_id
    if not is_rank0():
        return {"path": str(out), **summaries}
    return _write_summary(out, {"path": str(out), "mlflow_run_id": run_id, **summaries})


# ---------------------------------------------------------------- compressed_index
def compressor_id(checkpoint: Path) -> str:
    """Identifies the compressor by the content of its weights and config, not by its folder: a retrained
    compressor in the same folder must invalidate every stored vector."""
    import hashlib

    h = hashlib.sha256()
    for name in ("clara_config.json", "weights.safetensors"):
        with open(Path(checkpoint) / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()[:16]


def run_compressed_index(ctx: StageContext) -> dict:
    """Compress every document once. Incremental: only new or changed documents are compressed (by content
    hash), unless the compressor changed; the new version is published atomically and a killed build
    resumes where it stopped."""
    from clara_pipeline.index import update_index
    from clara_pipeline.model import ClaraModel

    documents = read_jsonl(ctx.paths.raw_corpus / "documents.jsonl")
    model = ClaraModel.load(ctx.paths.compressor_checkpoint)
    started = time.perf_counter()

    def progress(done, total):
        ctx.log(f"compressed_index: {done}/{total} documents compressed")

    cfg = ctx.params["index"]
    with tracking.stage_run(ctx.paths.root, "compressed_index", {"index": cfg}) as run:
        result = update_index(model, documents, ctx.paths.compressed_index,
                              compressor_id=compressor_id(ctx.paths.compressor_checkpoint),
                              batch_size=cfg["batch_size"], progress=progress, settings=cfg)
        seconds = time.perf_counter() - started
        meta = dict(result["meta"])
        counts = {k: result[k] for k in ("added", "updated", "removed", "unchanged", "compressed")}
        counts["full_rebuild"] = int(bool(result["full_rebuild"]))
        if result["resumed_from"]:
            ctx.log(f"compressed_index: resumed a killed build with {result['resumed_from']} documents already "
                    f"compressed")
        meta.update(update=counts, reason=result["reason"], build_seconds=round(seconds, 3),
                    resumed_from=result["resumed_from"] or None,
                    docs_per_second=round(result["compressed"] / seconds, 2) if seconds and result["compressed"] else None)
        ctx.log(f"compressed_index: {result['reason']}; " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        run.log_metrics({k: v for k, v in meta.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        run.log_metrics(counts, prefix="update.")
        meta["mlflow_run_id"] = run.run_id
    summary = {"path": str(ctx.paths.compressed_index), **meta}
    # beside CURRENT and versions/: it describes the whole index folder, not one version
    return _write_summary(ctx.paths.compressed_index, summary)


# ---------------------------------------------------------------- clara_model
def run_clara_model(ctx: StageContext) -> dict:
    """Stage 3: the query reasoner and generator trained end to end through the straight-through top-k."""
    from clara_pipeline import registry
    from clara_pipeline.index import build_index, current_version_dir
    from clara_pipeline.model import ClaraModel
    from clara_pipeline.train import barrier, is_rank0, train_stage

    p = ctx.params
    cfg = p["train"]["stage3"]
    documents = _documents_by_id(ctx.paths)
    stage3 = read_jsonl(ctx.paths.scp_data / "stage2.jsonl")
    model = ClaraModel.load(ctx.paths.compressor_checkpoint)
    out = ctx.paths.clara_model
    state_dir = _train_state_dir(ctx.paths, "clara_model")
    with tracking.stage_run(ctx.paths.root, "clara_model", {"seed": p["seed"], "train": p["train"],
                                                            "registry": p["registry"]}) as run:
        step_log = _progress(ctx.log, "stage3")

        def log_fn(step, metrics):
            run.log_step(step, metrics, prefix="stage3.")
            step_log(step, metrics)

        # the compressor checkpoint's own config names what stage 3 starts from
        start = (ctx.paths.compressor_checkpoint / "clara_config.json").read_text()
        summary = train_stage(model, "stage3", stage3, documents, cfg, p["train"], seed=p["seed"], log_fn=log_fn,
                              checkpoint_dir=state_dir, depends_on=start, log=ctx.log)
        summary.pop("losses")
        run.log_metrics(summary, prefix="stage3.summary.")
        version = None
        if is_rank0():
            if out.exists():
                shutil.rmtree(out)
            model.save(out)
            # A frozen compressor leaves the compressed index valid; a trained one needs its own index.
            if cfg.get("freeze_compressor", True):
                index_dir, own_index = ctx.paths.compressed_index, None
            else:
                ctx.log("clara_model: compressor was trained in stage 3, re-indexing with it")
                build_index(model, read_jsonl(ctx.paths.raw_corpus / "documents.jsonl"), out / "index",
                            batch_size=p["index"]["batch_size"], settings=p["index"],
                            compressor_id=compressor_id(out))
                index_dir, own_index = out / "index", "index"
            (out / "lineage.json").write_text(json.dumps({"index_dir": own_index,
                                                           "compressor_checkpoint": str(ctx.paths.compressor_checkpoint)}))
            # the published version alone: not the previous one, a build in progress or the lock file
            version = registry.register(run, p["registry"]["model_name"], out, current_version_dir(index_dir))
            ctx.log(f"clara_model: registered {p['registry']['model_name']} version {version}")
            shutil.rmtree(state_dir, ignore_errors=True)
        barrier()
        run_id = run.run_id
    if not is_rank0():
        return {"path": str(out), **summary}
    (out / "registered.json").write_text(json.dumps({"model_name": p["registry"]["model_name"], "version": version,
                                                     "run_id": run_id}))
    return _write_summary(out, {"path": str(out), "mlflow_run_id": run_id, "registered_version": version, **summary})


# ---------------------------------------------------------------- benchmark_report
def run_benchmark_report(ctx: StageContext) -> dict:
    from clara_pipeline import registry
    from clara_pipeline.benchmark import headline, run_benchmark, write_report
    from clara_pipeline.index import CompressedIndex
    from clara_pipeline.inference import ClaraRAG
    from clara_pipeline.model import ClaraModel

    p = ctx.params
    documents = read_jsonl(ctx.paths.raw_corpus / "documents.jsonl")
    questions = read_jsonl(ctx.paths.raw_corpus / "questions_eval.jsonl")
    dtype = p["benchmark"].get("dtype")  # e.g. bfloat16: every system is read in it, the report says which
    rag = ClaraRAG.load(ctx.paths.clara_model, ctx.paths.compressed_index, dtype=dtype)
    # the model before stage 3, over the index its own compressor built: what joint training started from
    stage2 = ClaraRAG(ClaraModel.load(ctx.paths.compressor_checkpoint, dtype=dtype),
                      CompressedIndex.load(ctx.paths.compressed_index))
    out = ctx.paths.benchmark_report
    out.mkdir(parents=True, exist_ok=True)
    registered = json.loads((ctx.paths.clara_model / "registered.json").read_text())
    with tracking.stage_run(ctx.paths.root, "benchmark_report", {"benchmark": p["benchmark"], "registry": p["registry"]},
                            tags={"model_version": registered["version"]}) as run:
        results = run_benchmark(rag, documents, questions, p["benchmark"],
                                dense_model_path=resolve_model_path("embedded-minilm"), seed=p["seed"], log=ctx.log,
                                num_candidates=p["scp"]["candidates"], stage2=stage2)
        head = headline(results)
        metric = p["registry"]["metric"]
        # the systems a champion must beat, on the same questions (default: closed book and BM25 + text)
        names = p["registry"].get("baselines", ["closed_book", "bm25_text"]) or []
        unknown = [n for n in names if n not in results["qa"]]
        if unknown:
            raise ValueError(f"params.yaml registry.baselines: {unknown} are not QA systems of the report "
                             f"({', '.join(results['qa'])})")
        baselines = {n: float(results["qa"][n]["all"][metric]) for n in names}
        promotion = registry.promote(ctx.paths.root, registered["model_name"], registered["version"], head, metric,
                                     results["eval_fingerprint"], baselines)
        metrics = write_report(results, out, promotion)
        (out / "promotion.json").write_text(json.dumps(promotion, indent=2))
        run.log_metrics(metrics["clara"], prefix="clara.")
        run.log_metrics(metrics["qa"], prefix="qa.")
        run.log_metrics(metrics["retrieval"], prefix="retrieval.")
        run.log_metrics(metrics["efficiency"], prefix="efficiency.")
        run.log_metrics(metrics.get("efficiency_by_system", {}), prefix="efficiency_by_system.")
        run.set_tags({"promotion.decision": promotion["alias"]})
        run.log_artifacts(out, "report")
        run_id = run.run_id
    ctx.log(f"benchmark_report: clara EM={head['em']:.3f} F1={head['f1']:.3f}; "
            f"version {promotion['version']} -> {promotion['alias']}: {promotion['reason']}")
    return _write_summary(out, {"path": str(out), "report": str(out / "report.md"), "mlflow_run_id": run_id,
                                "headline": head, "promotion": promotion})


_LIB = "clara_pipeline/"
STAGES: tuple[Stage, ...] = (
    Stage("raw_corpus", "Seeded fictional encyclopedia with held-out single-hop and two-hop questions.",
          (), ("seed", "corpus"), (_LIB + "corpus.py", _LIB + "importers.py"), run_raw_corpus),
    Stage("scp_data", "SCP data: synthetic QA and paraphrases per document, and BM25 candidate lists for stages 2/3.",
          ("raw_corpus",), ("seed", "scp"), (_LIB + "synthesis.py", _LIB + "prompts.py", _LIB + "retrieval.py", _LIB + "corpus.py"), run_scp_data),
    Stage("compressor_checkpoint", "Compressor + generator after SCP (stage 1) and instruction tuning (stage 2).",
          ("raw_corpus", "scp_data"), ("seed", "model", "train.backend", "train.deepspeed_config", "train.gradient_accumulation_steps", "train.autocast", "train.pretrain", "train.stage1", "train.stage2"),
          (_LIB + "model.py", _LIB + "train.py", _LIB + "tokenizer.py", "configs/deepspeed"), run_compressor_checkpoint),
    Stage("compressed_index", "Every document compressed once into memory-token vectors, in a faiss index.",
          ("raw_corpus", "compressor_checkpoint"), ("index",), (_LIB + "index.py", _LIB + "model.py"), run_compressed_index,
          persist=True),
    Stage("clara_model", "Stage 3 joint training (query reasoner + generator, straight-through top-k); registered in MLflow.",
          ("raw_corpus", "scp_data", "compressor_checkpoint", "compressed_index"), ("seed", "train.backend", "train.deepspeed_config", "train.gradient_accumulation_steps", "train.autocast", "train.stage3", "registry"),
          (_LIB + "model.py", _LIB + "train.py", _LIB + "serving.py", _LIB + "serving_model.py", _LIB + "registry.py", "configs/deepspeed"), run_clara_model),
    Stage("benchmark_report", "EM / F1 / Recall@k of CLaRa against closed-book, BM25 and dense baselines; promotion gate.",
          ("raw_corpus", "compressor_checkpoint", "compressed_index", "clara_model"), ("seed", "benchmark", "registry", "scp.candidates"),
          (_LIB + "benchmark.py", _LIB + "metrics.py", _LIB + "inference.py", _LIB + "registry.py"), run_benchmark_report,
          # the files benchmark.write_report writes (tests/test_graph.py checks they agree with benchmark.py)
          outputs=("report.md", "per_question.jsonl", "qa.png", "recall_at_k.png", "quality_vs_compression.png",
                   "latency.png", "promotion.json", "summary.json"),
          metrics=("metrics.json",), plots=("recall_at_k.json", "quality_vs_compression.json")),
)

BY_NAME = {s.name: s for s in STAGES}
TRAINING_STAGES = ("compressor_checkpoint", "clara_model")  # the stages `deepspeed`/`torchrun` can launch



def run_stage(name: str, params: dict, paths: Paths, log: Callable[[str], None] = print) -> dict:
    if name not in BY_NAME:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(BY_NAME)}")
    stage = BY_NAME[name]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and name not in TRAINING_STAGES:
        raise ValueError(f"stage {name} runs in one process; only {', '.join(TRAINING_STAGES)} run under a "
                         f"multi-process launcher (WORLD_SIZE={world})")
    for upstream in stage.reads:
        folder = paths.stage_dir(upstream)
        if not folder.exists():
            raise FileNotFoundError(f"stage {name} needs {folder} from stage {upstream}; run that stage first")
    started = time.perf_counter()
    summary = stage.run(StageContext(params, paths, log))
    summary["seconds"] = round(time.perf_counter() - started, 2)
    log(f"{name}: done in {summary['seconds']:.1f} s")
    return summary
