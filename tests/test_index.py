"""The compressed index: exact cosine search over flattened memory vectors, atomic publication."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from clara_pipeline.index import CompressedIndex, build_index


class HashCompressor:
    """A deterministic stand-in encoder (text -> n_mem x dim vectors) to test the index on its own."""

    n_mem, hidden_size = 3, 8

    def compress(self, texts, batch_size=32):
        out = []
        for t in texts:
            seed = int(hashlib.sha1(t.encode()).hexdigest()[:8], 16)
            out.append(torch.from_numpy(np.random.default_rng(seed).normal(size=(self.n_mem, self.hidden_size))).float())
        return torch.stack(out)


DOCS = [{"id": f"d{i}", "title": f"T{i}", "text": f"document number {i}"} for i in range(40)]


def test_search_finds_each_document_by_its_own_vectors(tmp_path):
    model = HashCompressor()
    meta = build_index(model, DOCS, tmp_path / "index", batch_size=7)
    assert meta["count"] == 40 and meta["n_mem"] == 3 and meta["dim"] == 8
    index = CompressedIndex.load(tmp_path / "index")
    queries = model.compress([d["text"] for d in DOCS[:5]]).numpy() * 3.0  # cosine ignores scale
    scores, rows = index.search(queries, k=4)
    assert rows[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    np.testing.assert_array_equal(index.embeddings_for_ids(["d3"])[0], model.compress([DOCS[3]["text"]])[0].numpy())


def test_rebuild_replaces_whole_index_and_failed_build_keeps_old(tmp_path):
    model = HashCompressor()
    build_index(model, DOCS, tmp_path / "index")

    class Broken(HashCompressor):
        calls = 0

        def compress(self, texts, batch_size=32):
            Broken.calls += 1
            if Broken.calls > 2:
                raise RuntimeError("killed mid-build")
            return super().compress(texts, batch_size)

    with pytest.raises(RuntimeError):
        build_index(Broken(), DOCS + [{"id": "new", "title": "N", "text": "new doc"}], tmp_path / "index", batch_size=8)
    index = CompressedIndex.load(tmp_path / "index")
    assert len(index.documents) == 40  # the previous index, complete
    build_index(model, DOCS[:10], tmp_path / "index")
    assert CompressedIndex.load(tmp_path / "index").index.ntotal == 10
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".index")]


def test_missing_file_is_named(tmp_path):
    build_index(HashCompressor(), DOCS[:3], tmp_path / "index")
    (tmp_path / "index" / "vectors.npy").unlink()
    with pytest.raises(FileNotFoundError, match="vectors.npy"):
        CompressedIndex.load(tmp_path / "index")
