"""Answering questions with a trained CLaRa model over its compressed index.

This is the path one question takes at serving time: the query reasoner encodes it into memory-token
vectors, faiss finds the top-k compressed documents by cosine, and the generator answers from those
vectors alone; no document text is read at question time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from clara_pipeline.index import CompressedIndex
from clara_pipeline.model import ClaraModel

MAX_QUESTION_CHARS = 1000
MAX_K = 50


def check_request(questions: list[str], k: int) -> None:
    """Bounded inputs with errors a caller can act on."""
    if not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an integer between 1 and {MAX_K}, got {k!r}")
    for i, q in enumerate(questions):
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"question {i} is empty or not a string")
        if len(q) > MAX_QUESTION_CHARS:
            raise ValueError(f"question {i} has {len(q)} characters; the limit is {MAX_QUESTION_CHARS}")


def index_dir_for(model_dir: Path, default_index: Path) -> Path:
    """The joint model names the index it was trained and should be served with (see the clara_model stage)."""
    lineage = Path(model_dir) / "lineage.json"
    if lineage.is_file():
        own = json.loads(lineage.read_text()).get("index_dir")
        if own and (Path(model_dir) / own).is_dir():
            return Path(model_dir) / own
    return Path(default_index)


class ClaraRAG:
    def __init__(self, model: ClaraModel, index: CompressedIndex):
        self.model = model
        self.index = index
        if index.meta["n_mem"] != model.n_mem or index.meta["dim"] != model.memory_dim:
            raise ValueError(f"{index.path}: index holds {index.meta['n_mem']}x{index.meta['dim']} vectors, "
                             f"the model makes {model.n_mem}x{model.memory_dim}; rebuild the index with this model")

    @classmethod
    def load(cls, model_dir, index_dir, dtype: str | None = None) -> "ClaraRAG":
        """dtype: see ClaraModel.load (e.g. "bfloat16" for faster CPU/GPU inference)."""
        return cls(ClaraModel.load(model_dir, dtype=dtype), CompressedIndex.load(index_dir_for(model_dir, index_dir)))

    def retrieve(self, questions: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [B, k], index rows [B, k]) by the query reasoner's cosine, best first."""
        queries = self.model.encode_queries(questions).float().numpy()
        return self.index.search(queries, k)

    def rerank(self, questions: list[str], candidate_rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Score given candidates [B, N] (e.g. BM25's top N) by the query reasoner's cosine, as stage 3 was
        trained; returns (scores [B, k], rows [B, k]), best first."""
        queries = self.model.encode_queries(questions).float().numpy().reshape(len(questions), -1)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True) + 1e-12
        docs = self.index.embeddings(candidate_rows).reshape(*candidate_rows.shape, -1).astype(np.float32)
        docs /= np.linalg.norm(docs, axis=-1, keepdims=True) + 1e-12
        scores = np.einsum("bd,bnd->bn", queries, docs)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(candidate_rows, order, 1)

    def answer_from_rows(self, questions: list[str], rows: np.ndarray, max_new_tokens: int = 16,
                         batch_size: int = 32) -> list[str]:
        embeddings = torch.from_numpy(self.index.embeddings(rows).astype(np.float32))
        return self.model.generate(questions, embeddings, max_new_tokens=max_new_tokens, batch_size=batch_size)

    def ask(self, questions: list[str], k: int = 5, max_new_tokens: int = 16) -> list[dict]:
        check_request(questions, k)
        scores, rows = self.retrieve(questions, k)
        answers = self.answer_from_rows(questions, rows, max_new_tokens=max_new_tokens)
        out = []
        for question, answer, row_scores, row_ids in zip(questions, answers, scores, rows):
            docs = [{"id": self.index.documents[r]["id"], "title": self.index.documents[r]["title"], "score": float(s)}
                    for s, r in zip(row_scores, row_ids)]
            out.append({"question": question, "answer": answer, "documents": docs})
        return out
