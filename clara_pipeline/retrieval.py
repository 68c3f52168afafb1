"""First-stage retrieval (BM25 or a dense encoder) and the candidate lists of CLaRa stages 2 and 3.

Stages 2 and 3 train on a question plus N candidate documents. Two settings, as in the paper:
- "normal": the retriever's top-N as it is; a question whose gold document was missed has none;
- "oracle": the top-N with every missing gold document swapped in for the lowest-ranked non-gold ones,
  so the answer is always reachable.
Each record keeps both lists (``retrieved_doc_ids`` and ``oracle_doc_ids``); ``candidate_doc_ids`` is the
one the chosen setting trains on.
"""

from __future__ import annotations

import bm25s
import numpy as np
import torch

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


class DenseRetriever:
    """Pretrained all-MiniLM-L6-v2 with mean pooling: the standard dense baseline, untouched by training."""

    def __init__(self, documents: list[dict], model_path: str, batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.encoder = AutoModel.from_pretrained(model_path).eval()
        self.ids = [d["id"] for d in documents]
        self.batch_size = batch_size
        self.doc_vectors = self.encode([f"{d.get('title', '')}. {d['text']}" for d in documents])

    @torch.no_grad()
    def encode(self, texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True, max_length=128,
                                   return_tensors="pt")
            hidden = self.encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out)

    def search(self, queries: list[str], k: int) -> list[list[tuple[str, float]]]:
        scores = self.encode(queries) @ self.doc_vectors.T
        top = np.argsort(-scores, axis=1)[:, :k]
        return [[(self.ids[j], float(scores[i, j])) for j in row] for i, row in enumerate(top)]


def make_retriever(name: str, documents: list[dict]):
    """params.yaml scp.retriever: "bm25" or "dense" (all-MiniLM-L6-v2, shipped in a PyPI wheel)."""
    if name == "bm25":
        return BM25Retriever(documents)
    if name == "dense":
        from clara_pipeline.config import resolve_model_path

        return DenseRetriever(documents, resolve_model_path("embedded-minilm"))
    raise ValueError(f"scp.retriever must be 'bm25' or 'dense', got {name!r}")


def build_candidates(questions: list[dict], retriever, n: int, setting: str = "oracle") -> tuple[list[dict], dict]:
    """Attach the retriever's top-n and the gold-completed list to each question; `setting` picks which
    one is ``candidate_doc_ids`` (what stages 2 and 3 train on)."""
    if setting not in ("normal", "oracle"):
        raise ValueError(f"candidate setting must be 'normal' or 'oracle', got {setting!r}")
    hits = retriever.search([q["question"] for q in questions], n)
    records, recalls, needed, inserted = [], [], 0, 0
    for question, ranked in zip(questions, hits):
        retrieved = [doc_id for doc_id, _ in ranked]
        gold = question.get("gold_doc_ids", [])
        oracle = insert_gold(retrieved, gold)
        changed = sum(1 for a, b in zip(retrieved, oracle) if a != b)
        needed += changed > 0
        inserted += changed
        recalls.append(recall_at_k(retrieved, gold, len(retrieved)))
        records.append({**question, "retrieved_doc_ids": retrieved, "oracle_doc_ids": oracle,
                        "candidate_doc_ids": oracle if setting == "oracle" else retrieved})
    effective_n = len(hits[0]) if hits else 0
    stats = {
        "n": effective_n,
        "setting": setting,
        "questions": len(questions),
        "gold_recall_at_n": sum(recalls) / len(recalls) if recalls else 0.0,
        "questions_needing_insertion": needed,
        "inserted_gold_docs": inserted,
    }
    return records, stats
