"""A quick look at one trained checkpoint, for recipe ablations: does it read its memory tokens, does it retrieve?

    .venv/bin/python benchmarks/checkpoint_probe.py                                   # artifacts/compressor_checkpoint
    .venv/bin/python benchmarks/checkpoint_probe.py --model artifacts/clara_model --questions 150

On the project's held-out questions (artifacts/raw_corpus) it prints, as one JSON line:
- ``R@5``: gold recall of the model's query reasoner over every document, compressed by the model itself;
- ``oracle_compressed``: EM / F1 / sub-EM answering from the gold documents' memory tokens only;
- ``oracle_compressed_top5``: the same from the benchmark report's oracle lists (the gold documents filled up
  to 5 with BM25's hits, shuffled, ``benchmark.oracle_lists``), so that what the distractors cost shows;
  ``--list-sizes 2,3,5`` answers from lists of each size (``oracle_compressed_top2`` ...), so that how the
  cost grows with the number of distractors shows; ``--bm25-sizes 1,3,5`` answers from BM25's top k as
  ranked (``bm25_compressed_top1`` ...), what the report's ``bm25_compressed`` row would read at that k;
- ``closed_book``: the same model with no documents. A model that reads its memory tokens scores well above
  closed book; one that does not scores the same;
- F1 of ``oracle_compressed`` per question type;
- ``memory_gain``: how much a document's own memory tokens tell the generator about its text: the mean
  per-token loss of writing the document back from another document's memory tokens minus that from its
  own (nats per token). Near 0: the generator does not read its memory tokens, whatever its training loss
  says (a generator can lower that loss by learning the corpus by heart, docs/embedded-default.md).
It takes about a minute for 150 questions on the embedded default (2 CPU cores), against ~10 minutes for
the benchmark_report stage, which covers every system.

``--retrieval-only`` prints only ``R@5``, ``R@5_rerank`` (BM25's top 20 in the query reasoner's order, the
report's clara_rerank) and ``R@5_bm25``. With ``--root`` a project whose corpus the model never trained on
(e.g. made with another ``seed``), it shows whether the query reasoner learnt to match or learnt the corpus;
``--split train`` scores stage 2/3's own training questions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from clara_pipeline.benchmark import oracle_lists  # noqa: E402
from clara_pipeline.jsonl import read_jsonl  # noqa: E402
from clara_pipeline.metrics import qa_scores, recall_at_k  # noqa: E402
from clara_pipeline.model import ClaraModel  # noqa: E402
from clara_pipeline.retrieval import BM25Retriever  # noqa: E402
from clara_pipeline.train import RECONSTRUCT_INSTRUCTION  # noqa: E402


def _mean_scores(preds: list[str], questions: list[dict]) -> dict:
    rows = [qa_scores(p, q["answers"]) for p, q in zip(preds, questions)]
    return {k: round(sum(r[k] for r in rows) / len(rows), 3) for k in ("em", "f1", "sub_em")}


@torch.no_grad()
def memory_gain(model: ClaraModel, texts: list[str], batch_size: int = 16) -> dict:
    """Loss of reconstructing each text from its own memory tokens vs from the next text's (a cyclic shift)."""
    if len(texts) < 2:
        raise ValueError("memory_gain needs at least two documents")
    vectors = model.compress(texts)

    def loss(memory: torch.Tensor) -> float:
        total, count = 0.0, 0
        for i in range(0, len(texts), batch_size):
            chunk = texts[i:i + batch_size]
            value, n = model.answer_loss([RECONSTRUCT_INSTRUCTION] * len(chunk), memory[i:i + batch_size, None],
                                         chunk, model.doc_max_length, ["instruction"] * len(chunk))
            total, count = total + float(value) * n, count + n
        return total / count

    with model._eval_mode():
        own, other = loss(vectors), loss(vectors.roll(1, 0))
    return {"own": round(own, 3), "other": round(other, 3), "gain": round(other - own, 3), "documents": len(texts)}


def probe(model: ClaraModel, documents: list[dict], questions: list[dict], max_new_tokens: int = 12,
          seed: int = 0, list_sizes: tuple[int, ...] = (5,), bm25_sizes: tuple[int, ...] = (),
          retrieval_only: bool = False) -> dict:
    ids = [d["id"] for d in documents]
    row = {d: i for i, d in enumerate(ids)}
    vectors = model.compress([d["text"] for d in documents])
    queries = model.encode_queries([q["question"] for q in questions])
    scores = model.score(queries, vectors)
    top = [[ids[i] for i in t] for t in torch.topk(scores, min(5, len(ids)), dim=-1).indices.tolist()]
    texts = [q["question"] for q in questions]
    bm25 = [[d for d, _ in hits] for hits in BM25Retriever(documents).search(texts, min(20, len(ids)))]
    # the report's clara_rerank: BM25's top 20 in the query reasoner's order
    reranked = [sorted(lst, key=lambda d: -float(scores[i, row[d]])) for i, lst in enumerate(bm25)]

    def recall5(lists: list[list[str]]) -> float:
        return round(sum(recall_at_k(lst, q["gold_doc_ids"], 5) for lst, q in zip(lists, questions)) / len(questions), 3)
    retrieval = {"R@5": recall5(top), "R@5_rerank": recall5(reranked), "R@5_bm25": recall5(bm25)}
    if retrieval_only:
        return retrieval
    # every question reads as many documents as the one with the most gold documents; shorter gold lists
    # repeat their first document (the generator reads a fixed number of slots per batch)
    k = max(len(q["gold_doc_ids"]) for q in questions)
    gold = torch.stack([torch.stack([vectors[row[q["gold_doc_ids"][min(j, len(q["gold_doc_ids"]) - 1)]]]
                                     for j in range(k)]) for q in questions])
    oracle = model.answer(texts, gold, max_new_tokens=max_new_tokens)
    closed = model.answer(texts, None, max_new_tokens=max_new_tokens)
    def read(id_lists: list[list[str]]) -> list[str]:
        return model.answer(texts, torch.stack([vectors[[row[d] for d in lst]] for lst in id_lists]),
                            max_new_tokens=max_new_tokens)

    # list size -> answers from the gold documents filled up to that size with BM25's hits (a size below a
    # question's number of gold documents keeps its first ones, as the report's oracle row does at that top_k)
    lists = {size: read(oracle_lists([q["gold_doc_ids"] for q in questions], bm25, min(size, len(ids)), seed))
             for size in sorted(set(list_sizes))}
    # list size -> answers from BM25's top documents as ranked (the report's bm25_compressed row)
    ranked = {size: read([lst[:size] for lst in bm25]) for size in sorted(set(bm25_sizes))}

    def f1_by_type(preds: list[str]) -> dict:
        by_type: dict[str, list[float]] = {}
        for p, q in zip(preds, questions):
            by_type.setdefault(q.get("type", "all"), []).append(qa_scores(p, q["answers"])["f1"])
        return {t: round(sum(v) / len(v), 3) for t, v in sorted(by_type.items())}
    gold_texts = [documents[row[d]]["text"] for d in dict.fromkeys(g for q in questions for g in q["gold_doc_ids"])]
    out = {**retrieval, "oracle_compressed": _mean_scores(oracle, questions)}
    out.update({f"oracle_compressed_top{size}": _mean_scores(preds, questions) for size, preds in lists.items()})
    out.update({"memory_gain": memory_gain(model, gold_texts[:64]),
                "closed_book": _mean_scores(closed, questions),
                "oracle_compressed_f1_by_type": f1_by_type(oracle)})
    out.update({f"oracle_compressed_top{size}_f1_by_type": f1_by_type(preds) for size, preds in lists.items()})
    out.update({f"bm25_compressed_top{size}": _mean_scores(preds, questions) for size, preds in ranked.items()})
    out["examples"] = [[q["question"], q["answers"][0], p] for q, p in list(zip(questions, oracle))[:3]]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="project whose artifacts/ to read")
    ap.add_argument("--model", type=Path, default=None, help="default: ROOT/artifacts/compressor_checkpoint")
    ap.add_argument("--questions", type=int, default=150)
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--list-sizes", default="5",
                    help="comma-separated sizes of the oracle lists to answer from (gold filled up with BM25's hits)")
    ap.add_argument("--bm25-sizes", default="",
                    help="comma-separated k: also answer from BM25's top k as ranked (bm25_compressed_top{k})")
    ap.add_argument("--retrieval-only", action="store_true",
                    help="only R@5 (full index), R@5_rerank (BM25's top 20 reordered) and R@5_bm25: a minute")
    ap.add_argument("--split", choices=("eval", "train"), default="eval",
                    help="which questions: the held-out ones, or stage 2/3's training questions")
    args = ap.parse_args(argv)
    corpus = args.root / "artifacts" / "raw_corpus"
    model_dir = args.model or args.root / "artifacts" / "compressor_checkpoint"
    for needed in (corpus / "documents.jsonl", model_dir / "clara_config.json"):
        if not needed.is_file():
            print(f"{needed} is missing: run the lineage first (make run)", file=sys.stderr)
            return 2
    started = time.perf_counter()
    out = probe(ClaraModel.load(model_dir), read_jsonl(corpus / "documents.jsonl"),
                read_jsonl(corpus / f"questions_{args.split}.jsonl")[: args.questions], args.max_new_tokens,
                list_sizes=tuple(int(x) for x in args.list_sizes.split(",")),
                bm25_sizes=tuple(int(x) for x in args.bm25_sizes.split(",") if x), retrieval_only=args.retrieval_only)
    out["model"], out["seconds"] = str(model_dir), round(time.perf_counter() - started, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
