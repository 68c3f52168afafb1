"""The compressed index: every document compressed once, offline, and searched by cosine.

A document's compressed form is ``n_mem`` vectors of the generator's hidden size. Following the paper,
retrieval scores a question against a document by the cosine between the flattened query-reasoner
vectors and the flattened document vectors, so the index stores the flattened, L2-normalised vectors in
a faiss inner-product index. The unnormalised vectors are kept too (memory-mapped ``.npy``), because the
generator reads those.

Layout of an index folder:
    index.faiss     faiss IndexFlatIP over normalised flattened vectors
    vectors.npy     float32 [num_docs, n_mem, dim], the compressed documents themselves
    documents.jsonl the document table, row i <-> vector i (id, title, text)
    meta.json       n_mem, dim, count, and which compressor made it
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from clara_pipeline.jsonl import read_jsonl, write_jsonl


def _normalise(flat: np.ndarray) -> np.ndarray:
    flat = np.array(flat, dtype=np.float32, order="C", copy=True)  # normalize_L2 works in place
    faiss.normalize_L2(flat)
    return flat


def build_index(model, documents: list[dict], out_dir: Path, batch_size: int = 64,
                compressor_id: str = "", progress=None) -> dict:
    """Compress ``documents`` with ``model`` and write an index folder atomically.

    The folder is first written beside its final place and then renamed over it, so a reader never sees a
    half-written index and a killed build leaves the previous one intact.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    chunks = []
    for start in range(0, len(documents), batch_size):
        batch = documents[start:start + batch_size]
        chunks.append(model.compress([d["text"] for d in batch], batch_size=batch_size).float().numpy())
        if progress:
            progress(min(start + batch_size, len(documents)), len(documents))
    vectors = np.concatenate(chunks, axis=0) if chunks else np.zeros((0, model.n_mem, model.hidden_size), np.float32)
    count, n_mem, dim = vectors.shape
    index = faiss.IndexFlatIP(n_mem * dim)
    index.add(_normalise(vectors.reshape(count, n_mem * dim)))

    tmp = Path(tempfile.mkdtemp(prefix=".index-", dir=out_dir.parent))
    faiss.write_index(index, str(tmp / "index.faiss"))
    np.save(tmp / "vectors.npy", vectors.astype(np.float32))
    write_jsonl(tmp / "documents.jsonl", [{"id": d["id"], "title": d.get("title", ""), "text": d["text"]} for d in documents])
    meta = {"count": int(count), "n_mem": int(n_mem), "dim": int(dim), "metric": "cosine (inner product of L2-normalised flattened memory vectors)",
            "index_type": "flat", "compressor": compressor_id,
            "bytes_per_document": int(n_mem * dim * 4)}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    # Swap in the new folder: rename the old one away first, then the new one in, then delete the old.
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=".index-old-", dir=out_dir.parent))
        os.rmdir(old)
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        import shutil

        shutil.rmtree(old, ignore_errors=True)
    return meta


@dataclass
class CompressedIndex:
    """A loaded index folder: search by query vectors, fetch compressed documents by row or id."""

    path: Path
    index: faiss.Index
    vectors: np.ndarray
    documents: list[dict]
    meta: dict

    @classmethod
    def load(cls, path) -> "CompressedIndex":
        path = Path(path)
        for name in ("index.faiss", "vectors.npy", "documents.jsonl", "meta.json"):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path / name}: missing; rebuild the compressed index (clara stage compressed_index)")
        index = faiss.read_index(str(path / "index.faiss"))
        vectors = np.load(path / "vectors.npy", mmap_mode="r")
        documents = read_jsonl(path / "documents.jsonl")
        meta = json.loads((path / "meta.json").read_text())
        if index.ntotal != len(documents) or vectors.shape[0] != len(documents):
            raise ValueError(f"{path}: index has {index.ntotal} vectors, vectors.npy {vectors.shape[0]}, "
                             f"documents.jsonl {len(documents)} rows; rebuild it")
        return cls(path, index, vectors, documents, meta)

    @property
    def row_of(self) -> dict[str, int]:
        if not hasattr(self, "_row_of"):
            self._row_of = {d["id"]: i for i, d in enumerate(self.documents)}
        return self._row_of

    def search(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """query_vectors [B, n_mem, dim] -> (scores [B, k], rows [B, k]), best first."""
        flat = _normalise(np.asarray(query_vectors, dtype=np.float32).reshape(len(query_vectors), -1))
        k = min(k, self.index.ntotal)
        return self.index.search(flat, k)

    def embeddings(self, rows) -> np.ndarray:
        """Compressed documents for index rows (any shape of row array) -> [..., n_mem, dim]."""
        rows = np.asarray(rows)
        return np.asarray(self.vectors[rows.reshape(-1)]).reshape(*rows.shape, *self.vectors.shape[1:])

    def embeddings_for_ids(self, doc_ids: list[str]) -> np.ndarray:
        return self.embeddings(np.array([self.row_of[i] for i in doc_ids], dtype=np.int64))
