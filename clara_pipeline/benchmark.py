"""The benchmark: CLaRa against baselines on the same held-out questions, with the same generator.

Retrieval systems (Recall@k and MRR against gold document ids; see clara_pipeline.metrics):
    bm25         bm25s over title + text
    dense        all-MiniLM-L6-v2 mean-pooled embeddings, as a sentence encoder would use it
    clara        the trained query reasoner over the whole compressed index
    clara_rerank the query reasoner re-ranking BM25's top-N candidates (N = scp.candidates), the setting
                 stage 3 trains in
    clara_stage2, clara_stage2_rerank
                 the same two with the model before stage 3 (its query reasoner is still the copy of the
                 compressor that stage 3 starts from), so the report shows what joint training did
When the corpus was chunked (documents carry ``parent_id``), retrieval is scored over passages: each
ranked chunk is mapped to its passage, repeats dropped, and Recall@k counts the first k distinct passages.

QA systems (EM, token F1, sub-EM, cover-EM; max over gold aliases):
    closed_book        no documents, the trained generator
    bm25_text          BM25 top-k, raw text read by the pretrained generator with its adapter off, the paper's
                       text baseline (``ClaraModel.answer_from_text(base_generator=True)``); a generator
                       trained from scratch has no such state and reads with its trained weights
    dense_text         dense (MiniLM) top-k, raw text
    oracle_text        gold documents (filled up to k with BM25 hits), raw text
    bm25_compressed    BM25 top-k, read as compressed documents
    clara              query-reasoner top-k from the compressed index (the full CLaRa path, "normal")
    clara_rerank       query reasoner over BM25's top-N candidates, top-k
    oracle_compressed  gold documents (filled up to k with BM25 hits), compressed
Raw text is cut to ``model.doc_max_length`` generator tokens per document, the budget the compressor
reads.

Efficiency per QA system: document positions the generator reads (mean), compression rate (raw-text
positions of the same documents / positions read), a time-to-first-token proxy (retrieval + prompt
prefill + one generated token) and the whole-answer latency, both per question at batch size 1 on a
sample of ``benchmark.latency_questions`` (default 20) questions, and stored bytes per document.

Optional ``benchmark:`` keys (defaults in brackets): ``max_eval_questions`` [all] benchmarks the first N
held-out questions; ``latency_questions`` [20]; ``report_notes`` [none], {name: text} shown under
"Settings" in report.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from clara_pipeline.inference import ClaraRAG
from clara_pipeline.metrics import QA_METRICS, aggregate, mrr, qa_scores, recall_at_k
from clara_pipeline.retrieval import BM25Retriever, DenseRetriever

RETRIEVAL_SYSTEMS = ("bm25", "dense", "clara", "clara_rerank")
QA_SYSTEMS = ("closed_book", "bm25_text", "dense_text", "oracle_text", "bm25_compressed", "clara", "clara_rerank",
              "oracle_compressed")
TEXT_SYSTEMS = ("bm25_text", "dense_text", "oracle_text")
COMPRESSED_SYSTEMS = ("bm25_compressed", "clara", "clara_rerank", "oracle_compressed")
# written by write_report; the benchmark_report stage lists them as outputs / metrics / plots
REPORT_FILES = ("report.md", "per_question.jsonl", "qa.png", "recall_at_k.png", "quality_vs_compression.png",
                "latency.png")
METRICS_FILE, PLOT_FILES = "metrics.json", ("recall_at_k.json", "quality_vs_compression.json")
def eval_fingerprint(questions: list[dict]) -> str:
    """Identifies the evaluation set, so the promotion gate only compares scores on the same questions."""
    blob = json.dumps([[q["id"], q["question"], q["answers"]] for q in questions], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _fill_to_k(gold: list[str], ranked: list[str], k: int, rng: random.Random) -> list[str]:
    chosen = list(dict.fromkeys(gold))[:k]
    for doc_id in ranked:
        if len(chosen) >= k:
            break
        if doc_id not in chosen:
            chosen.append(doc_id)
    rng.shuffle(chosen)
    return chosen


def ranking_depth(documents: list[dict], cfg: dict, num_candidates: int) -> int:
    """How deep each retriever ranks: enough for every recall@k, top_k and the rerank candidates; deeper on a
    chunked corpus, whose retrieval is scored over passages (several chunks may map to one)."""
    max_k = max([int(x) for x in cfg["recall_ks"]] + [int(cfg["top_k"]), num_candidates])
    chunked = any(d.get("parent_id") for d in documents)
    return min(len(documents), max_k * (3 if chunked else 1))


def oracle_lists(golds: list[list[str]], ranked: list[list[str]], k: int, seed: int) -> list[list[str]]:
    """The oracle setting's k documents per question: its gold documents, filled up to k from `ranked`
    (BM25's order), shuffled with a seeded RNG so position says nothing."""
    rng = random.Random(seed)
    return [_fill_to_k(g, lst, k, rng) for g, lst in zip(golds, ranked)]


def _distinct(ids, unit: dict[str, str]) -> list[str]:
    """Ranked chunk ids -> ranked passage ids, first occurrence kept."""
    return list(dict.fromkeys(unit.get(d, d) for d in ids))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def _clara_rankings(rag: ClaraRAG, texts: list[str], depth: int, bm25_lists: list[list[str]], num_candidates: int,
                    timings: dict | None = None) -> tuple[list[list[str]], list[list[str]]]:
    """Document ids ranked by the query reasoner over the whole index, and over BM25's top-N (rerank)."""
    ids = [d["id"] for d in rag.index.documents]
    t0 = time.perf_counter()
    _, rows = rag.retrieve(texts, depth)
    t_retrieve = time.perf_counter() - t0
    bm25_rows = np.array([[rag.index.row_of[d] for d in lst[:num_candidates]] for lst in bm25_lists], dtype=np.int64)
    t1 = time.perf_counter()
    _, rerank_rows = rag.rerank(texts, bm25_rows, num_candidates)
    if timings is not None:
        timings["clara_retrieval_s"], timings["clara_rerank_s"] = t_retrieve, time.perf_counter() - t1
    return [[ids[r] for r in row] for row in rows], [[ids[r] for r in row] for row in rerank_rows]


def run_benchmark(rag: ClaraRAG, documents: list[dict], questions: list[dict], cfg: dict,
                  dense_model_path: str | None = None, seed: int = 0, log=print, num_candidates: int = 10,
                  stage2: ClaraRAG | None = None) -> dict:
    """stage2: the model before stage 3 over the same index, for the clara_stage2* retrieval rows."""
    k = int(cfg["top_k"])
    recall_ks = [int(x) for x in cfg["recall_ks"]]
    if cfg.get("max_eval_questions"):
        questions = questions[: int(cfg["max_eval_questions"])]
    max_new = int(cfg["max_new_tokens"])
    bs = int(cfg["batch_size"])
    model = rag.model
    texts = [q["question"] for q in questions]
    golds = [q["gold_doc_ids"] for q in questions]
    unit = {d["id"]: d["parent_id"] for d in documents if d.get("parent_id")}
    depth = ranking_depth(documents, cfg, num_candidates)

    # ---- retrieval ----
    ranked: dict[str, list[list[str]]] = {}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    bm25 = BM25Retriever(documents)
    ranked["bm25"] = [[d for d, _ in hits] for hits in bm25.search(texts, depth)]
    timings["bm25_retrieval_s"] = time.perf_counter() - t0
    dense = None
    if dense_model_path:
        t0 = time.perf_counter()
        dense = DenseRetriever(documents, dense_model_path)
        ranked["dense"] = [[d for d, _ in hits] for hits in dense.search(texts, depth)]
        timings["dense_retrieval_s"] = time.perf_counter() - t0
    row_of = rag.index.row_of
    ranked["clara"], ranked["clara_rerank"] = _clara_rankings(rag, texts, depth, ranked["bm25"], num_candidates,
                                                              timings)
    if stage2 is not None:
        ranked["clara_stage2"], ranked["clara_stage2_rerank"] = _clara_rankings(stage2, texts, depth, ranked["bm25"],
                                                                                num_candidates)
    log(f"benchmark: retrieval done for {len(questions)} questions")

    retrieval = {}
    for system, lists in ranked.items():
        rows = []
        for q, retrieved in zip(questions, lists):
            retrieved, gold = _distinct(retrieved, unit), _distinct(q["gold_doc_ids"], unit)
            # clara_rerank ranks only BM25's N candidates, so its Recall@k for k >= N equals BM25's Recall@N
            row = {f"recall@{n}": recall_at_k(retrieved, gold, n) for n in recall_ks}
            row["mrr"] = mrr(retrieved, gold)
            row["type"] = q.get("type", "all")
            rows.append(row)
        retrieval[system] = aggregate(rows, [f"recall@{n}" for n in recall_ks] + ["mrr"])

    # ---- question answering: the k documents each system gives the generator ----
    oracle = oracle_lists(golds, ranked["bm25"], k, seed)
    doc_lists: dict[str, list[list[str]]] = {
        "bm25_text": [lst[:k] for lst in ranked["bm25"]],
        "oracle_text": oracle,
        "bm25_compressed": [lst[:k] for lst in ranked["bm25"]],
        "clara": [lst[:k] for lst in ranked["clara"]],
        "clara_rerank": [lst[:k] for lst in ranked["clara_rerank"]],
        "oracle_compressed": oracle,
    }
    if dense is not None:
        doc_lists["dense_text"] = [lst[:k] for lst in ranked["dense"]]
    text_of = {d["id"]: d["text"] for d in documents}
    predictions: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    predictions["closed_book"] = model.generate(texts, None, max_new_tokens=max_new, batch_size=bs)
    timings["closed_book_generation_s"] = time.perf_counter() - t0
    for system in QA_SYSTEMS:
        if system not in doc_lists:
            continue
        lists = doc_lists[system]
        t0 = time.perf_counter()
        if system in TEXT_SYSTEMS:
            predictions[system] = model.answer_from_text(texts, [[text_of[d] for d in lst] for lst in lists],
                                                         max_new_tokens=max_new, batch_size=bs,
                                                         base_generator=True)
        else:
            rows = np.array([[row_of[d] for d in lst] for lst in lists], dtype=np.int64)
            predictions[system] = rag.answer_from_rows(texts, rows, max_new_tokens=max_new, batch_size=bs)
        timings[f"{system}_generation_s"] = time.perf_counter() - t0
        log(f"benchmark: answered with {system}")

    qa, scores = {}, {}
    for system, preds in predictions.items():
        scores[system] = [qa_scores(p, q["answers"]) for p, q in zip(preds, questions)]
        qa[system] = aggregate([{**s, "type": q.get("type", "all")} for s, q in zip(scores[system], questions)],
                               QA_METRICS)
    per_question = []
    for i, q in enumerate(questions):
        per_question.append({"id": q["id"], "type": q.get("type"), "question": q["question"], "answers": q["answers"],
                             "gold_doc_ids": q["gold_doc_ids"], "clara_retrieved": ranked["clara"][i][:k],
                             **{f"retrieved_{s}": ranked[s][i][:k] for s in ranked},
                             **{f"pred_{s}": predictions[s][i] for s in predictions},
                             **{f"f1_{s}": round(scores[s][i]["f1"], 4) for s in predictions}})

    efficiency_by_system = _efficiency(rag, documents, questions, doc_lists, text_of, k, max_new, cfg, bm25, dense,
                                       num_candidates, log)
    n_mem = model.n_mem
    rate = float(model.model_cfg.get("compression_rate", model.doc_max_length / n_mem))
    text_positions = efficiency_by_system.get("oracle_text", {}).get("context_positions_mean", float("nan"))
    efficiency = {
        "top_k": k, "memory_tokens_per_doc": n_mem, "doc_max_length": model.doc_max_length,
        "compression_rate": rate,
        "context_positions_compressed": k * n_mem,
        "context_positions_full_text_mean": text_positions,
        "context_reduction": text_positions / (k * n_mem) if k * n_mem else float("nan"),
        "clara_latency_ms_per_question": efficiency_by_system["clara"]["latency_ms"],
        "clara_ttft_ms_per_question": efficiency_by_system["clara"]["ttft_ms"],
        "index_bytes_per_document": int(rag.index.meta.get("bytes_per_document", 0)),
        "latency_questions": efficiency_by_system["clara"]["latency_questions"],
        **{key: round(value, 3) for key, value in timings.items()},
    }
    return {"num_questions": len(questions), "eval_fingerprint": eval_fingerprint(questions),
            "retrieval": retrieval, "qa": qa, "efficiency": efficiency, "efficiency_by_system": efficiency_by_system,
            "passage_level_retrieval": bool(unit),
            "settings": {"inference dtype": str(model.mem_embeddings.dtype).replace("torch.", ""),
                         **dict(cfg.get("report_notes") or {})},
            "per_question": per_question}


def _efficiency(rag, documents, questions, doc_lists, text_of, k, max_new, cfg, bm25, dense, num_candidates,
                log) -> dict:
    """Per QA system: context positions, compression rate, TTFT proxy and latency (batch 1), bytes/doc."""
    model = rag.model
    tok = model.gen_tok

    def text_positions(doc_id: str) -> int:
        # exactly what _prompt_ids puts in the background for one raw document
        ids = tok(" " + text_of[doc_id].strip(), add_special_tokens=False, truncation=True,
                  max_length=model.doc_max_length)["input_ids"]
        return len(ids)

    cache: dict[str, int] = {}

    def positions(doc_id: str) -> int:
        if doc_id not in cache:
            cache[doc_id] = text_positions(doc_id)
        return cache[doc_id]

    text_bytes = float(np.mean([len(d["text"].encode("utf-8")) for d in documents]))
    index_bytes = float(rag.index.meta.get("bytes_per_document", 0))
    dense_bytes = float(dense.doc_vectors.shape[1] * dense.doc_vectors.itemsize) if dense is not None else 0.0
    out: dict[str, dict] = {"closed_book": {"context_positions_mean": 0.0, "compression_rate": float("nan"),
                                            "bytes_per_document": 0.0}}
    for system, lists in doc_lists.items():
        raw = float(np.mean([sum(positions(d) for d in lst) for lst in lists]))
        if system in TEXT_SYSTEMS:
            read = raw
            stored = text_bytes + (dense_bytes if system == "dense_text" else 0.0)
        else:
            read = float(k * model.n_mem)
            stored = index_bytes
        out[system] = {"context_positions_mean": read, "raw_text_positions_mean": raw,
                       "compression_rate": raw / read if read else float("nan"), "bytes_per_document": stored}

    # ---- latency: one question at a time, retrieval included, on a fixed sample ----
    n = min(int(cfg.get("latency_questions", 20)), len(questions))
    sample = questions[:n]
    row_of = rag.index.row_of
    gold_lists = {q["id"]: lst for q, lst in zip(questions, doc_lists["oracle_text"])}

    def one(system: str, q: dict, new_tokens: int) -> None:
        text = [q["question"]]
        if system == "closed_book":
            model.generate(text, None, max_new_tokens=new_tokens, batch_size=1)
            return
        if system in ("bm25_text", "bm25_compressed", "clara_rerank"):
            ids = [d for d, _ in bm25.search(text, num_candidates if system == "clara_rerank" else k)[0]]
            if system == "clara_rerank":
                _, rows = rag.rerank(text, np.array([[row_of[d] for d in ids]], dtype=np.int64), k)
                ids = [rag.index.documents[r]["id"] for r in rows[0]]
        elif system == "dense_text":
            ids = [d for d, _ in dense.search(text, k)[0]]
        elif system == "clara":
            _, rows = rag.retrieve(text, k)
            ids = [rag.index.documents[r]["id"] for r in rows[0]]
        else:  # oracle: the gold documents are given, no retrieval
            ids = gold_lists[q["id"]]
        if system in TEXT_SYSTEMS:
            model.answer_from_text(text, [[text_of[d] for d in ids]], max_new_tokens=new_tokens, batch_size=1,
                                   base_generator=True)
        else:
            rag.answer_from_rows(text, np.array([[row_of[d] for d in ids]], dtype=np.int64),
                                 max_new_tokens=new_tokens, batch_size=1)

    with torch.inference_mode():
        for system in ["closed_book", *doc_lists]:
            if n == 0:
                out[system].update(ttft_ms=float("nan"), latency_ms=float("nan"), latency_questions=0)
                continue
            one(system, sample[0], 1)  # warm-up
            ttft, whole = [], []
            for q in sample:  # interleaved, so a load spike on a shared machine hits both alike
                ttft.append(_timed(lambda: one(system, q, 1)))
                whole.append(_timed(lambda: one(system, q, max_new)))
            out[system].update(ttft_ms=float(np.median(ttft)), latency_ms=float(np.median(whole)),
                               latency_questions=n)
    log(f"benchmark: latency measured on {n} questions per system (batch size 1)")
    return {s: out[s] for s in QA_SYSTEMS if s in out}


def headline(results: dict) -> dict:
    """The flat figures the promotion gate and `dvc metrics` read."""
    clara_qa = results["qa"]["clara"]["all"]
    clara_ret = results["retrieval"]["clara"]["all"]
    out = {"em": clara_qa["em"], "f1": clara_qa["f1"], "sub_em": clara_qa.get("sub_em", 0.0),
           "cover_em": clara_qa.get("cover_em", 0.0), "mrr": clara_ret["mrr"]}
    out.update({k: v for k, v in clara_ret.items() if k.startswith("recall@")})
    return out


def _finite(obj):
    """NaN / inf -> None, so metrics.json is strict JSON (closed book has no compression rate)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def sweep_command() -> str:
    return ("for r in 2 4 16 32; do dvc exp run -S model.compression_rate=$r; done; "
            "dvc exp show --only-changed; dvc plots diff $(dvc exp list --name-only)")


def write_report(results: dict, out_dir: Path, promotion: dict | None = None, settings: dict | None = None) -> dict:
    """report.md, metrics.json (for DVC), per_question.jsonl, recall_at_k.json and quality_vs_compression.json
    (DVC plots), and PNG plots: recall_at_k.png, qa.png, quality_vs_compression.png, latency.png.

    settings: {name: value} lines shown under "Settings"; default: ``benchmark.report_notes`` of the run (the
    real-data runner puts its overrides there)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clara_pipeline.jsonl import write_jsonl

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = settings if settings is not None else results.get("settings")
    eff_sys = results.get("efficiency_by_system", {})
    eff = results["efficiency"]
    metrics = {"clara": headline(results),
               "qa": {s: {m: round(v, 4) for m, v in r["all"].items() if m != "count"} for s, r in results["qa"].items()},
               "retrieval": {s: {m: round(v, 4) for m, v in r["all"].items() if m != "count"} for s, r in results["retrieval"].items()},
               "qa_by_type": {s: {t: {m: round(v, 4) for m, v in r.items()} for t, r in by.items() if t != "all"}
                              for s, by in results["qa"].items()},
               "efficiency": eff, "efficiency_by_system": eff_sys, "num_questions": results["num_questions"],
               "eval_fingerprint": results["eval_fingerprint"]}
    metrics = _finite(metrics)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_jsonl(out_dir / "per_question.jsonl", results["per_question"])

    ks = sorted(int(m.split("@")[1]) for m in next(iter(results["retrieval"].values()))["all"] if m.startswith("recall@"))
    recall_rows = [{"k": k, **{s: round(r["all"][f"recall@{k}"], 4) for s, r in results["retrieval"].items()}} for k in ks]
    (out_dir / "recall_at_k.json").write_text(json.dumps(recall_rows, indent=2))

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for system, r in results["retrieval"].items():
        ax.plot(ks, [r["all"][f"recall@{k}"] for k in ks], marker="o", label=system)
    ax.set_xlabel("k"), ax.set_ylabel("Recall@k (gold documents)"), ax.set_ylim(0, 1.02), ax.legend(), ax.grid(alpha=.3)
    fig.tight_layout(), fig.savefig(out_dir / "recall_at_k.png", dpi=120), plt.close(fig)

    systems = list(results["qa"])
    fig, ax = plt.subplots(figsize=(8, 3.8))
    xs = np.arange(len(systems))
    width = 0.8 / len(QA_METRICS)
    for j, m in enumerate(QA_METRICS):
        ax.bar(xs + (j - (len(QA_METRICS) - 1) / 2) * width, [results["qa"][s]["all"][m] for s in systems], width, label=m)
    ax.set_xticks(xs, systems, rotation=25, ha="right"), ax.set_ylim(0, 1), ax.legend(ncol=4), ax.grid(alpha=.3, axis="y")
    fig.tight_layout(), fig.savefig(out_dir / "qa.png", dpi=120), plt.close(fig)

    # quality vs compression rate: raw-text systems sit at rate 1, compressed ones at this model's rate. A sweep
    # needs one lineage run per rate (sweep_command()); each run's metrics.json carries its own points.
    rate = eff.get("compression_rate")
    points = []
    for system in systems:
        if system in TEXT_SYSTEMS or system in COMPRESSED_SYSTEMS:
            nominal = 1.0 if system in TEXT_SYSTEMS else rate
            points.append({"system": system, "compression_rate": nominal,
                           "effective_rate": _finite(eff_sys.get(system, {}).get("compression_rate")),
                           **{m: round(results["qa"][system]["all"][m], 4) for m in QA_METRICS}})
    (out_dir / "quality_vs_compression.json").write_text(json.dumps(points, indent=2))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    pairs = [("oracle_text", "oracle_compressed"), ("bm25_text", "bm25_compressed"), ("dense_text", None),
             (None, "clara"), (None, "clara_rerank")]
    by_name = {p["system"]: p for p in points}
    for ax, metric in zip(axes, ("f1", "cover_em")):
        for text_sys, comp_sys in pairs:
            xs_, ys_ = [], []
            for s in (text_sys, comp_sys):
                if s in by_name and by_name[s]["compression_rate"]:
                    xs_.append(by_name[s]["compression_rate"]), ys_.append(by_name[s][metric])
            if xs_:
                ax.plot(xs_, ys_, marker="o", label=" / ".join(s for s in (text_sys, comp_sys) if s in by_name))
        top = max([p[metric] for p in points] + [0.0])
        ax.set_ylim(0, max(0.05, min(1.0, top * 1.15)))
        ax.set_xscale("log", base=2), ax.set_xlabel("compression rate (1 = raw text)"), ax.set_title(metric)
        ax.grid(alpha=.3)
    axes[0].set_ylabel("score"), axes[1].legend(fontsize=7)
    fig.tight_layout(), fig.savefig(out_dir / "quality_vs_compression.png", dpi=120), plt.close(fig)

    lat_systems = [s for s in systems if s in eff_sys and eff_sys[s].get("latency_ms") is not None]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    xs = np.arange(len(lat_systems))
    ax.bar(xs - 0.2, [eff_sys[s]["ttft_ms"] for s in lat_systems], 0.4, label="TTFT proxy (ms)")
    ax.bar(xs + 0.2, [eff_sys[s]["latency_ms"] for s in lat_systems], 0.4, label="whole answer (ms)")
    ax.set_xticks(xs, lat_systems, rotation=25, ha="right"), ax.set_ylabel("ms per question, batch 1")
    ax.legend(), ax.grid(alpha=.3, axis="y")
    fig.tight_layout(), fig.savefig(out_dir / "latency.png", dpi=120), plt.close(fig)

    lines = ["# CLaRa benchmark report", "",
             f"{results['num_questions']} held-out questions (evaluation set {results['eval_fingerprint']}); every "
             f"system answers the same questions with the same trained generator, top-{eff['top_k']} documents.", ""]
    if settings:
        lines += ["## Settings", ""] + [f"- {k}: {v}" for k, v in settings.items()] + [""]
    lines += ["## Question answering", "",
              "EM / F1: SQuAD exact match and token F1; sub-EM: the normalised gold inside the normalised answer "
              "(FlashRAG/BERGEN \"acc\"); cover-EM: every gold token among the answer's tokens (CLaRa's \"acc\"). "
              "Each is the best over the gold aliases (definitions: clara_pipeline/metrics.py).", "",
              "The `*_text` systems give the generator raw document text (cut to "
              f"{eff.get('doc_max_length', '?')} tokens per document). The generator is trained on compressed "
              "documents only (stages 1-3 never show it raw text), so these rows measure it on an input it has "
              "never seen: they are low for that reason, not because raw text carries less; they are a lower "
              "bound for a full-text RAG, not a fair one. Compare the compressed rows with each other and with "
              "closed_book.", "",
              "| system | EM | F1 | sub-EM | cover-EM | context positions | compression rate | TTFT ms | answer ms | stored bytes/doc |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for system in systems:
        r, e = results["qa"][system]["all"], eff_sys.get(system, {})
        lines.append(f"| {system} | " + " | ".join(f"{r[m]:.3f}" for m in QA_METRICS)
                     + f" | {_fmt(e.get('context_positions_mean'), 1)} | {_fmt(e.get('compression_rate'), 1)}"
                     + f" | {_fmt(e.get('ttft_ms'), 1)} | {_fmt(e.get('latency_ms'), 1)} | {_fmt(e.get('bytes_per_document'), 0)} |")
    types = [t for t in next(iter(results["qa"].values())) if t != "all"]
    if len(types) > 1 or (types and types[0] != "all"):
        lines += ["", "### Per question type", "", "| system | type | count | EM | F1 | sub-EM | cover-EM |",
                  "|---|---|---|---|---|---|---|"]
        for system, by_type in results["qa"].items():
            for qtype, r in by_type.items():
                lines.append(f"| {system} | {qtype} | {r['count']} | " + " | ".join(f"{r[m]:.3f}" for m in QA_METRICS) + " |")
    passage_note = (" Documents were chunked: retrieval is scored over passages (chunks mapped to their passage, "
                    "first k distinct passages).") if results.get("passage_level_retrieval") else ""
    lines += ["", "## Retrieval (gold documents)", "",
              "Recall@k: share of a question's gold documents in the top k; MRR: 1 / rank of the first." + passage_note,
              "", "| system | type | count | " + " | ".join(f"R@{k}" for k in ks) + " | MRR |",
              "|---|---|---|" + "---|" * (len(ks) + 1)]
    for system, by_type in results["retrieval"].items():
        for qtype, r in by_type.items():
            lines.append(f"| {system} | {qtype} | {r['count']} | " + " | ".join(f"{r[f'recall@{k}']:.3f}" for k in ks)
                         + f" | {r['mrr']:.3f} |")
    lines += ["", "## Efficiency", "",
              "Context positions: document positions the generator reads per question (mean; compressed: k x memory "
              "tokens, raw text: generator tokens). Compression rate: raw-text positions of the same documents / "
              "positions read. TTFT proxy: retrieval + prompt prefill + first token; answer: retrieval + whole "
              f"answer (up to the max new tokens); both the median over {eff.get('latency_questions', '?')} questions "
              "at batch size 1 on this machine. Stored bytes/doc: compressed vectors in the index; raw text (mean "
              "UTF-8 bytes) for the text systems, plus the dense vector for dense_text.", "",
              "| figure | value |", "|---|---|"]
    for key, value in eff.items():
        lines.append(f"| {key} | {_fmt(value) if isinstance(value, float) else value} |")
    lines += ["", "## Quality vs compression rate", "",
              f"This run has one compression rate ({_fmt(rate, 0)}): the plot joins each raw-text system (rate 1) to "
              "its compressed counterpart (this rate), and quality_vs_compression.json holds the points. Retraining "
              "at other rates is a lineage run per rate, e.g. with DVC experiments:", "",
              f"    {sweep_command()}", ""]
    if promotion:
        lines += ["## Promotion", "", f"Decision: **{promotion['alias']}** (model version {promotion['version']}).",
                  "", promotion["reason"], ""]
    lines += ["![recall](recall_at_k.png)", "", "![qa](qa.png)", "",
              "![quality vs compression rate](quality_vs_compression.png)", "", "![latency](latency.png)", ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    return metrics


def terminal_summary(metrics: dict, promotion: dict | None = None) -> str:
    """The few lines a terminal shows after a run (the full report stays in report.md and the UIs): QA F1 /
    sub-EM and retrieval recall@5 of every system, and what the gate decided."""
    qa = "  ".join(f"{name} {row['f1']:.3f}/{row['sub_em']:.3f}" for name, row in metrics.get("qa", {}).items())
    recall = "  ".join(f"{name} {row['recall@5']:.3f}" for name, row in metrics.get("retrieval", {}).items()
                       if "recall@5" in row)
    lines = [f"QA F1/sub-EM ({metrics.get('num_questions', '?')} held-out questions): {qa}",
             f"retrieval recall@5: {recall}"]
    if promotion:
        lines.append(f"registry: {promotion.get('model_name')} version {promotion.get('version')} -> "
                     f"@{promotion.get('alias')} ({promotion.get('reason')})")
    return "\n".join(lines)
