"""The benchmark: CLaRa against baselines on the same held-out questions.

Retrieval systems (Recall@k and MRR against gold document ids):
    bm25         bm25s over title + text
    dense        all-MiniLM-L6-v2 mean-pooled embeddings, as a sentence encoder would use it
    clara        the trained query reasoner over the whole compressed index
    clara_rerank the query reasoner re-ranking BM25's top-N candidates (N = scp.candidates), the setting
                 stage 3 trains in
QA systems (EM and token F1, max over gold aliases), all with the same trained generator:
    closed_book       no documents
    bm25_compressed   BM25 top-k, read as compressed documents
    clara             query-reasoner top-k from the compressed index (the full CLaRa path)
    clara_rerank      query reasoner over BM25's top-N candidates, top-k
    oracle_compressed gold documents (filled up to k with BM25 hits), compressed
Full-text baselines need a generator that reads raw text; the embedded default trains its generator on
compressed documents only, so those columns come with a text-trained generator (a later issue).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from clara_pipeline.inference import ClaraRAG
from clara_pipeline.metrics import aggregate, exact_match, mrr, recall_at_k, token_f1
from clara_pipeline.retrieval import BM25Retriever, DenseRetriever


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


def run_benchmark(rag: ClaraRAG, documents: list[dict], questions: list[dict], cfg: dict,
                  dense_model_path: str | None = None, seed: int = 0, log=print, num_candidates: int = 10) -> dict:
    k = int(cfg["top_k"])
    recall_ks = [int(x) for x in cfg["recall_ks"]]
    max_k = max(recall_ks + [k, num_candidates])
    texts = [q["question"] for q in questions]
    golds = [q["gold_doc_ids"] for q in questions]
    rng = random.Random(seed)

    # ---- retrieval ----
    ranked: dict[str, list[list[str]]] = {}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ranked["bm25"] = [[d for d, _ in hits] for hits in BM25Retriever(documents).search(texts, max_k)]
    timings["bm25_retrieval_s"] = time.perf_counter() - t0
    if dense_model_path:
        t0 = time.perf_counter()
        dense = DenseRetriever(documents, dense_model_path)
        ranked["dense"] = [[d for d, _ in hits] for hits in dense.search(texts, max_k)]
        timings["dense_retrieval_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, clara_rows = rag.retrieve(texts, max_k)
    timings["clara_retrieval_s"] = time.perf_counter() - t0
    ranked["clara"] = [[rag.index.documents[r]["id"] for r in row] for row in clara_rows]
    row_of = rag.index.row_of
    bm25_rows = np.array([[row_of[d] for d in lst[:num_candidates]] for lst in ranked["bm25"]], dtype=np.int64)
    t0 = time.perf_counter()
    _, rerank_rows = rag.rerank(texts, bm25_rows, num_candidates)
    timings["clara_rerank_s"] = time.perf_counter() - t0
    ranked["clara_rerank"] = [[rag.index.documents[r]["id"] for r in row] for row in rerank_rows]
    log(f"benchmark: retrieval done for {len(questions)} questions")

    retrieval = {}
    for system, lists in ranked.items():
        rows = []
        for q, retrieved in zip(questions, lists):
            # clara_rerank ranks only BM25's N candidates, so its Recall@k for k >= N equals BM25's Recall@N
            row = {f"recall@{n}": recall_at_k(retrieved, q["gold_doc_ids"], n) for n in recall_ks}
            row["mrr"] = mrr(retrieved, q["gold_doc_ids"])
            row["type"] = q.get("type", "all")
            rows.append(row)
        retrieval[system] = aggregate(rows, [f"recall@{n}" for n in recall_ks] + ["mrr"])

    # ---- question answering ----
    contexts = {
        "bm25_compressed": [[row_of[d] for d in lst[:k]] for lst in ranked["bm25"]],
        "clara": [list(r[:k]) for r in clara_rows],
        "clara_rerank": [list(r[:k]) for r in rerank_rows],
        "oracle_compressed": [[row_of[d] for d in _fill_to_k(g, lst, k, rng)] for g, lst in zip(golds, ranked["bm25"])],
    }
    predictions: dict[str, list[str]] = {}
    max_new = int(cfg["max_new_tokens"])
    bs = int(cfg["batch_size"])
    t0 = time.perf_counter()
    predictions["closed_book"] = rag.model.generate(texts, None, max_new_tokens=max_new, batch_size=bs)
    timings["closed_book_generation_s"] = time.perf_counter() - t0
    for system, rows in contexts.items():
        t0 = time.perf_counter()
        predictions[system] = rag.answer_from_rows(texts, np.array(rows, dtype=np.int64), max_new_tokens=max_new, batch_size=bs)
        timings[f"{system}_generation_s"] = time.perf_counter() - t0
        log(f"benchmark: answered with {system}")

    qa = {}
    per_question = []
    for system, preds in predictions.items():
        rows = [{"em": exact_match(p, q["answers"]), "f1": token_f1(p, q["answers"]), "type": q.get("type", "all")}
                for p, q in zip(preds, questions)]
        qa[system] = aggregate(rows, ["em", "f1"])
    for i, q in enumerate(questions):
        per_question.append({"id": q["id"], "type": q.get("type"), "question": q["question"], "answers": q["answers"],
                             "gold_doc_ids": q["gold_doc_ids"], "clara_retrieved": ranked["clara"][i][:k],
                             **{f"pred_{s}": predictions[s][i] for s in predictions}})

    # ---- efficiency: what the generator reads, and how long one question takes end to end ----
    n_mem = rag.model.n_mem
    tokenizer = getattr(rag.model, "gen_tok", None)
    text_of = {d["id"]: d["text"] for d in documents}
    if tokenizer is not None:
        full_tokens = [sum(len(tokenizer(text_of[d], add_special_tokens=False)["input_ids"]) for d in lst[:k])
                       for lst in ranked["clara"]]
        mean_full = float(np.mean(full_tokens))
    else:
        mean_full = float("nan")
    t0 = time.perf_counter()
    sample = texts[: min(32, len(texts))]
    for q in sample:
        rag.ask([q], k=k, max_new_tokens=max_new)
    latency_ms = (time.perf_counter() - t0) / max(len(sample), 1) * 1000
    efficiency = {
        "top_k": k, "memory_tokens_per_doc": n_mem,
        "context_positions_compressed": k * n_mem,
        "context_positions_full_text_mean": mean_full,
        "context_reduction": mean_full / (k * n_mem) if k * n_mem else float("nan"),
        "clara_latency_ms_per_question": latency_ms,
        "index_bytes_per_document": int(rag.index.meta.get("bytes_per_document", 0)),
        **{key: round(value, 3) for key, value in timings.items()},
    }
    return {"num_questions": len(questions), "eval_fingerprint": eval_fingerprint(questions),
            "retrieval": retrieval, "qa": qa, "efficiency": efficiency, "per_question": per_question}


def headline(results: dict) -> dict:
    """The flat figures the promotion gate and `dvc metrics` read."""
    clara_qa = results["qa"]["clara"]["all"]
    clara_ret = results["retrieval"]["clara"]["all"]
    out = {"em": clara_qa["em"], "f1": clara_qa["f1"], "mrr": clara_ret["mrr"]}
    out.update({k: v for k, v in clara_ret.items() if k.startswith("recall@")})
    return out


def write_report(results: dict, out_dir: Path, promotion: dict | None = None) -> dict:
    """report.md, metrics.json (for DVC), per_question.jsonl and PNG plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clara_pipeline.jsonl import write_jsonl

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {"clara": headline(results),
               "qa": {s: {m: round(v, 4) for m, v in r["all"].items() if m != "count"} for s, r in results["qa"].items()},
               "retrieval": {s: {m: round(v, 4) for m, v in r["all"].items() if m != "count"} for s, r in results["retrieval"].items()},
               "efficiency": results["efficiency"], "num_questions": results["num_questions"],
               "eval_fingerprint": results["eval_fingerprint"]}
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

    fig, ax = plt.subplots(figsize=(6, 3.5))
    systems = list(results["qa"])
    xs = np.arange(len(systems))
    ax.bar(xs - 0.2, [results["qa"][s]["all"]["em"] for s in systems], 0.4, label="EM")
    ax.bar(xs + 0.2, [results["qa"][s]["all"]["f1"] for s in systems], 0.4, label="F1")
    ax.set_xticks(xs, systems, rotation=15), ax.set_ylim(0, 1), ax.legend(), ax.grid(alpha=.3, axis="y")
    fig.tight_layout(), fig.savefig(out_dir / "qa.png", dpi=120), plt.close(fig)

    lines = ["# CLaRa benchmark report", "",
             f"{results['num_questions']} held-out questions (evaluation set {results['eval_fingerprint']}).", "",
             "## Question answering (same generator, same questions)", "",
             "| system | type | count | EM | F1 |", "|---|---|---|---|---|"]
    for system, by_type in results["qa"].items():
        for qtype, r in by_type.items():
            lines.append(f"| {system} | {qtype} | {r['count']} | {r['em']:.3f} | {r['f1']:.3f} |")
    lines += ["", "## Retrieval (gold documents)", "", "| system | type | count | " + " | ".join(f"R@{k}" for k in ks) + " | MRR |",
              "|---|---|---|" + "---|" * (len(ks) + 1)]
    for system, by_type in results["retrieval"].items():
        for qtype, r in by_type.items():
            lines.append(f"| {system} | {qtype} | {r['count']} | " + " | ".join(f"{r[f'recall@{k}']:.3f}" for k in ks)
                         + f" | {r['mrr']:.3f} |")
    lines += ["", "## Efficiency", "", "| figure | value |", "|---|---|"]
    for key, value in results["efficiency"].items():
        lines.append(f"| {key} | {value:.3f} |" if isinstance(value, float) else f"| {key} | {value} |")
    if promotion:
        lines += ["", "## Promotion", "", f"Decision: **{promotion['alias']}** (model version {promotion['version']}).",
                  "", promotion["reason"]]
    lines += ["", "![recall](recall_at_k.png)", "", "![qa](qa.png)", ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    return metrics
