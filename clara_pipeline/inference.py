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

# The bounds of one request, the same for `clara ask` and the HTTP server (serving.py): each checked before
# any model loads, with an error a caller can act on.
MAX_QUESTION_CHARS = 1000
MAX_K = 50
MAX_NEW_TOKENS = 64


def _check_int(name: str, value, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ValueError(f"{name} must be an integer between 1 and {high}, got {value!r}")


def check_request(questions: list[str], k: int, max_new_tokens: int | None = None) -> None:
    """Bounded inputs with errors a caller can act on."""
    _check_int("k", k, MAX_K)
    if max_new_tokens is not None:
        _check_int("max_new_tokens", max_new_tokens, MAX_NEW_TOKENS)
    for i, q in enumerate(questions):
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"question {i} is empty or not a string")
        if len(q) > MAX_QUESTION_CHARS:
            raise ValueError(f"question {i} has {len(q)} characters; the limit is {MAX_QUESTION_CHARS}")
        try:
            q.encode("utf-8")
        except UnicodeEncodeError as exc:  # e.g. undecodable bytes on the command line (surrogate escapes)
            raise ValueError(f"question {i} is not valid UTF-8 (character {exc.start}); pass UTF-8 text") from None


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
        check_request(questions, k, max_new_tokens)
        scores, rows = self.retrieve(questions, k)
        answers = self.answer_from_rows(questions, rows, max_new_tokens=max_new_tokens)
        out = []
        for question, answer, row_scores, row_ids in zip(questions, answers, scores, rows):
            docs = [{"id": self.index.documents[r]["id"], "title": self.index.documents[r]["title"], "score": float(s)}
                    for s, r in zip(row_scores, row_ids)]
            out.append({"question": question, "answer": answer, "documents": docs})
        return out
