"""Gold-document recall of the first-stage candidate lists that stages 2 and 3 train on, on real data.

    .venv/bin/python benchmarks/first_stage_recall.py            # both sets in ../shared/data
    .venv/bin/python benchmarks/first_stage_recall.py --data DIR

Each set goes through the project's importer (the same code the raw_corpus stage runs), then BM25 (bm25s)
and the dense encoder (all-MiniLM-L6-v2) retrieve the top-N for every question, and the script prints the
gold-document Recall@5 and @20 of those lists ("normal" setting; the "oracle" setting is 1.0 by
construction). Recall@k = the share of a question's gold documents found in its top k, averaged over
questions; for multi-hop MuSiQue that is the share of its 2-4 supporting paragraphs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clara_pipeline.importers import import_corpus  # noqa: E402
from clara_pipeline.metrics import recall_at_k  # noqa: E402
from clara_pipeline.retrieval import build_candidates, make_retriever  # noqa: E402

SETS = {
    "musique_mini": lambda d: {"source": "musique", "path": str(d / "musique_train.json"),
                               "corpus_path": str(d / "musique_train_corpus.json")},
    "wiki_scp_qa": lambda d: {"source": "clara_stage1", "path": str(d / "wiki_scp_qa.jsonl")},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--ks", type=int, nargs="+", default=[5, 20])
    args = ap.parse_args()
    n = max(args.ks)
    rows = []
    for name, spec in SETS.items():
        folder = args.data / name
        if not folder.is_dir():
            print(f"{folder}: absent, skipped")
            continue
        result = import_corpus(spec(folder) | {"eval_fraction": 0.1, "seed": 0})
        questions = result.questions_train + result.questions_eval  # first stage has no training: use all
        for retriever_name in ("bm25", "dense"):
            started = time.perf_counter()
            retriever = make_retriever(retriever_name, result.documents)
            records, stats = build_candidates(questions, retriever, n, setting="normal")
            seconds = time.perf_counter() - started
            recalls = {k: sum(recall_at_k(r["retrieved_doc_ids"], r["gold_doc_ids"], k) for r in records) / len(records)
                       for k in args.ks}
            rows.append((name, len(result.documents), len(questions), retriever_name, recalls, seconds))
    if not rows:
        print("no data found; nothing measured")
        return 1
    ks = " | ".join(f"R@{k}" for k in args.ks)
    print(f"\n| set | documents | questions | retriever | {ks} | seconds (index + search) |")
    print("|---|---|---|---|" + "---|" * len(args.ks) + "---|")
    for name, docs, qs, retriever_name, recalls, seconds in rows:
        figures = " | ".join(f"{recalls[k]:.3f}" for k in args.ks)
        print(f"| {name} | {docs} | {qs} | {retriever_name} | {figures} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
