"""First-stage BM25 retrieval and the candidate lists used by CLaRa stages 2 and 3.

Stages 2 and 3 train on a question plus N candidate documents. In the paper's "normal" setting the
gold documents are guaranteed to be among the candidates; here the candidates are the BM25 top-N
with any missing gold document swapped in for the lowest-ranked non-gold ones.
"""

from __future__ import annotations

import bm25s
import numpy as np

from clara_pipeline.metrics import recall_at_k


def _tokenize(texts: list[str]) -> list[list[str]]:
    # Lowercase word tokens minus English stopwords; no stemmer, so it works offline and is simple.
    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


class BM25Retriever:
    """BM25 over title + text of each document."""

    def __init__(self, documents: list[dict]):
        if not documents:
            raise ValueError("BM25Retriever needs at least one document")
        self.doc_ids = [d["id"] for d in documents]
        self._model = bm25s.BM25()
        self._model.index(_tokenize([f"{d.get('title', '')}\n{d['text']}" for d in documents]),
                          show_progress=False)
        self._vocab = set(self._model.vocab_dict)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for one query (zeros if no query word is in the corpus)."""
        tokens = [t for t in _tokenize([query])[0] if t in self._vocab]
        if not tokens:
            return np.zeros(len(self.doc_ids), dtype=np.float32)
        return np.asarray(self._model.get_scores(tokens), dtype=np.float32)

    def search(self, queries: list[str], k: int) -> list[list[tuple[str, float]]]:
        """Top-k (doc id, score) per query, best first; ties keep corpus order, so results are stable."""
        k = max(0, min(k, len(self.doc_ids)))
        results = []
        for query in queries:
            scores = self.scores(query)
            order = np.argsort(-scores, kind="stable")[:k]
            results.append([(self.doc_ids[i], float(scores[i])) for i in order])
        return results


def insert_gold(retrieved: list[str], gold: list[str]) -> list[str]:
    """Put every missing gold id in place of the lowest-ranked non-gold ids.

    Gold docs land where BM25 put the documents they replace, so the gold is not always first and
    the model cannot learn a position shortcut.
    """
    gold_set = set(gold)
    missing = [g for g in dict.fromkeys(gold) if g not in retrieved]
    if not missing:
        return list(retrieved)
    replaceable = [i for i in reversed(range(len(retrieved))) if retrieved[i] not in gold_set]
    if len(missing) > len(replaceable):
        raise ValueError(f"{len(set(gold))} gold documents do not fit in {len(retrieved)} candidates")
    candidates = list(retrieved)
    # Lowest-ranked slot gets the first missing gold; slots are filled bottom-up.
    for slot, doc_id in zip(replaceable, missing):
        candidates[slot] = doc_id
    return candidates


def build_candidates(questions: list[dict], retriever: BM25Retriever, n: int) -> tuple[list[dict], dict]:
    """Attach the BM25 top-n ("retrieved_doc_ids") and gold-completed candidates to each question."""
    hits = retriever.search([q["question"] for q in questions], n)
    records, recalls, needed, inserted = [], [], 0, 0
    for question, ranked in zip(questions, hits):
        retrieved = [doc_id for doc_id, _ in ranked]
        gold = question.get("gold_doc_ids", [])
        candidates = insert_gold(retrieved, gold)
        changed = sum(1 for a, b in zip(retrieved, candidates) if a != b)
        needed += changed > 0
        inserted += changed
        recalls.append(recall_at_k(retrieved, gold, len(retrieved)))
        records.append({**question, "candidate_doc_ids": candidates, "retrieved_doc_ids": retrieved})
    effective_n = len(hits[0]) if hits else min(n, len(retriever.doc_ids))
    stats = {
        "n": effective_n,
        "questions": len(questions),
        "bm25_gold_recall_at_n": sum(recalls) / len(recalls) if recalls else 0.0,
        "questions_needing_insertion": needed,
        "inserted_gold_docs": inserted,
    }
    return records, stats
