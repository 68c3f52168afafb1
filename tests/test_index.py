"""The compressed index: exact cosine search over flattened memory vectors, approximate faiss types,
versioned atomic publication, resumable builds and incremental re-indexing."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from clara_pipeline.index import (
    CompressedIndex, IndexLockedError, IndexSettings, build_index, current_version_dir, document_hash, index_lock,
    plan_index, update_index)


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    """These indexes are tiny: OpenMP threads only spin against other work on a shared machine."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


class HashCompressor:
    """A deterministic stand-in encoder (text -> n_mem x dim vectors) to test the index on its own.
    Counts the texts it compressed, so tests can tell what was (not) recompressed."""

    n_mem, memory_dim = 3, 8

    def __init__(self, delay_s: float = 0.0):
        self.compressed: list[str] = []
        self.delay_s = delay_s

    def compress(self, texts, batch_size=32):
        if self.delay_s:
            time.sleep(self.delay_s)
        self.compressed.extend(texts)
        out = []
        for t in texts:
            seed = int(hashlib.sha1(t.encode()).hexdigest()[:8], 16)
            out.append(torch.from_numpy(np.random.default_rng(seed).normal(size=(self.n_mem, self.memory_dim))).float())
        return torch.stack(out) if out else torch.zeros(0, self.n_mem, self.memory_dim)


class FailingCompressor(HashCompressor):
    """Raises on its ``fail_at``-th call: a build killed mid-way."""

    def __init__(self, fail_at: int):
        super().__init__()
        self.calls, self.fail_at = 0, fail_at

    def compress(self, texts, batch_size=32):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("killed mid-build")
        return super().compress(texts, batch_size)


DOCS = [{"id": f"d{i}", "title": f"T{i}", "text": f"document number {i}"} for i in range(40)]
QUERY_TEXTS = [f"question {i}" for i in range(12)] + [d["text"] for d in DOCS[::7]]


def edited_corpus() -> list[dict]:
    """DOCS with d5 and d17 deleted, d10 and d30 edited, three new documents, and a new order."""
    docs = [dict(d) for d in DOCS if d["id"] not in ("d5", "d17")]
    for d in docs:
        if d["id"] == "d10":
            d["text"] = "document number 10, revised"
        if d["id"] == "d30":
            d["title"] = "T30 renamed"  # a title change is a change too
    docs = docs[20:] + docs[:20]
    docs.insert(7, {"id": "n1", "title": "N1", "text": "a new document"})
    docs.insert(0, {"id": "n2", "title": "N2", "text": "another new document"})
    docs.append({"id": "n3", "title": "N3", "text": "the last new document"})
    return docs


def ranked(index: CompressedIndex, k: int = 10) -> tuple[list[list[str]], np.ndarray]:
    """Search results as document ids (row order independent) and scores."""
    scores, rows = index.search(HashCompressor().compress(QUERY_TEXTS).numpy(), k)
    return [[index.documents[r]["id"] for r in row] for row in rows], scores


def exact_scores_of(index: CompressedIndex, query_texts: list[str]) -> np.ndarray:
    """Every query's cosine with every document [Q, N], computed with numpy from the stored vectors."""
    q = HashCompressor().compress(query_texts).numpy().reshape(len(query_texts), -1)
    d = index.embeddings(np.arange(len(index.documents))).reshape(len(index.documents), -1)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (d / np.linalg.norm(d, axis=1, keepdims=True)).T


def recall_at(approx_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx_rows, exact_rows)]))


# ---------------------------------------------------------------- flat search, layout
def test_search_finds_each_document_by_its_own_vectors(tmp_path):
    model = HashCompressor()
    meta = build_index(model, DOCS, tmp_path / "index", batch_size=7)
    assert meta["count"] == 40 and meta["n_mem"] == 3 and meta["dim"] == 8
    assert meta["index_type"] == "flat" and meta["vector_dtype"] == "float32" and meta["bytes_per_document"] == 96
    index = CompressedIndex.load(tmp_path / "index")
    queries = model.compress([d["text"] for d in DOCS[:5]]).numpy() * 3.0  # cosine ignores scale
    scores, rows = index.search(queries, k=4)
    assert rows[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    np.testing.assert_array_equal(index.embeddings_for_ids(["d3"])[0], model.compress([DOCS[3]["text"]])[0].numpy())
    # exact cosine, checked against numpy
    flat = model.compress([d["text"] for d in DOCS]).numpy().reshape(40, -1)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    q = queries.reshape(5, -1) / np.linalg.norm(queries.reshape(5, -1), axis=1, keepdims=True)
    expected = np.sort(q @ flat.T, axis=1)[:, ::-1][:, :4]
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_layout_is_versioned_with_a_current_pointer(tmp_path):
    root = tmp_path / "index"
    meta = build_index(HashCompressor(), DOCS, root, batch_size=16)
    assert (root / "CURRENT").read_text().strip() == meta["version"]
    folder = current_version_dir(root)
    assert folder == root / "versions" / meta["version"]
    assert sorted(p.name for p in folder.iterdir()) == ["documents.jsonl", "index.faiss", "meta.json", "vectors.npy"]
    assert not (root / "work").exists()
    vectors = np.load(folder / "vectors.npy", mmap_mode="r")
    assert isinstance(vectors, np.memmap) and vectors.shape == (40, 3, 8)
    index = CompressedIndex.load(root)
    assert index.version == meta["version"] and index.path == folder
    assert isinstance(index.vectors, np.memmap)
    # a version folder copied elsewhere (e.g. as a registry artifact) loads on its own
    assert CompressedIndex.load(folder).index.ntotal == 40


def test_published_files_are_readable_like_any_other_file(tmp_path):
    """Files published by rename from mkstemp used to stay 0600 while the rest were 0644 (issue 13)."""
    old = os.umask(0o022)
    try:
        build_index(HashCompressor(), DOCS, tmp_path / "index", batch_size=16)
    finally:
        os.umask(old)
    folder = current_version_dir(tmp_path / "index")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [*folder.iterdir(), tmp_path / "index" / "CURRENT"]}
    assert modes == dict.fromkeys(modes, 0o644), modes


def test_rebuild_replaces_whole_index_and_failed_build_keeps_old(tmp_path):
    model = HashCompressor()
    build_index(model, DOCS, tmp_path / "index")
    before = ranked(CompressedIndex.load(tmp_path / "index"))
    with pytest.raises(RuntimeError):
        build_index(FailingCompressor(fail_at=3), DOCS + [{"id": "new", "title": "N", "text": "new doc"}],
                    tmp_path / "index", batch_size=8)
    index = CompressedIndex.load(tmp_path / "index")
    assert len(index.documents) == 40  # the previous index, complete
    after = ranked(index)
    assert after[0] == before[0]
    np.testing.assert_array_equal(after[1], before[1])
    build_index(model, DOCS[:10], tmp_path / "index")
    assert CompressedIndex.load(tmp_path / "index").index.ntotal == 10
    assert not (tmp_path / "index" / "work").exists()  # the unfinished build of other inputs was discarded
    assert [p.name for p in tmp_path.iterdir()] == ["index"]


def test_missing_file_is_named(tmp_path):
    build_index(HashCompressor(), DOCS[:3], tmp_path / "index")
    (current_version_dir(tmp_path / "index") / "vectors.npy").unlink()
    with pytest.raises(FileNotFoundError, match="vectors.npy"):
        CompressedIndex.load(tmp_path / "index")


def test_old_single_folder_layout_loads_and_is_migrated_by_an_update(tmp_path):
    build_index(HashCompressor(), DOCS, tmp_path / "new")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for p in current_version_dir(tmp_path / "new").iterdir():
        (legacy / p.name).write_bytes(p.read_bytes())
    meta = json.loads((legacy / "meta.json").read_text())
    for key in ("settings", "version", "update"):  # what an old index's meta.json lacked
        meta.pop(key)
    (legacy / "meta.json").write_text(json.dumps(meta))
    old = CompressedIndex.load(legacy)
    assert old.index.ntotal == 40 and old.version is None

    model = HashCompressor()
    result = update_index(model, DOCS, legacy, compressor_id="")
    assert model.compressed == []  # the old table's vectors are reused
    assert result["published"] and result["reason"] == "index settings changed" and result["unchanged"] == 40
    assert not (legacy / "index.faiss").exists() and (legacy / "versions" / "legacy" / "index.faiss").is_file()
    assert ranked(CompressedIndex.load(legacy))[0] == ranked(old)[0]


# ---------------------------------------------------------------- incremental re-indexing
def test_incremental_update_equals_full_rebuild_and_compresses_only_changes(tmp_path):
    build_index(HashCompressor(), DOCS, tmp_path / "inc", compressor_id="enc-A")
    new_docs = edited_corpus()
    model = HashCompressor()
    calls: list[tuple[int, int]] = []
    result = update_index(model, new_docs, tmp_path / "inc", compressor_id="enc-A", batch_size=2,
                          progress=lambda done, total: calls.append((done, total)))
    assert {k: result[k] for k in ("added", "updated", "removed", "unchanged", "full_rebuild", "reason",
                                   "compressed", "published")} == {
        "added": 3, "updated": 2, "removed": 2, "unchanged": 36, "full_rebuild": False,
        "reason": "incremental update", "compressed": 5, "published": True}
    # only new and changed documents were compressed, in corpus order
    assert model.compressed == ["another new document", "a new document", "document number 30",
                                "document number 10, revised", "the last new document"]
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert result["meta"]["update"]["compressed"] == 5

    build_index(HashCompressor(), new_docs, tmp_path / "full", compressor_id="enc-A")
    inc, full = CompressedIndex.load(tmp_path / "inc"), CompressedIndex.load(tmp_path / "full")
    assert [d["id"] for d in inc.documents] == [d["id"] for d in new_docs]  # the new corpus' order
    assert inc.documents == full.documents
    np.testing.assert_array_equal(np.asarray(inc.vectors), np.asarray(full.vectors))
    inc_scores, inc_rows = inc.search(HashCompressor().compress(QUERY_TEXTS).numpy(), 10)
    full_scores, full_rows = full.search(HashCompressor().compress(QUERY_TEXTS).numpy(), 10)
    np.testing.assert_array_equal(inc_rows, full_rows)
    np.testing.assert_array_equal(inc_scores, full_scores)
    assert "d5" not in inc.row_of and inc.embeddings_for_ids(["n1"]).shape == (1, 3, 8)


def test_unchanged_corpus_publishes_nothing(tmp_path):
    meta = build_index(HashCompressor(), DOCS, tmp_path / "index", compressor_id="enc-A")
    model = HashCompressor()
    result = update_index(model, DOCS, tmp_path / "index", compressor_id="enc-A")
    assert model.compressed == []
    assert (result["published"], result["reason"], result["unchanged"], result["version"]) == (
        False, "no changes", 40, meta["version"])
    assert CompressedIndex.load(tmp_path / "index").version == meta["version"]


def test_reordered_corpus_or_new_settings_reuse_every_vector(tmp_path):
    build_index(HashCompressor(), DOCS, tmp_path / "index", compressor_id="enc-A")
    model = HashCompressor()
    result = update_index(model, DOCS[::-1], tmp_path / "index", compressor_id="enc-A")
    assert model.compressed == [] and result["published"] and result["unchanged"] == 40
    assert [d["id"] for d in CompressedIndex.load(tmp_path / "index").documents] == [d["id"] for d in DOCS[::-1]]
    # an index type change keeps every vector (shared by hard link where it can) and rebuilds faiss only
    result = update_index(model, DOCS[::-1], tmp_path / "index", compressor_id="enc-A", settings={"type": "hnsw"})
    assert model.compressed == [] and result["reason"] == "index settings changed"
    assert CompressedIndex.load(tmp_path / "index").meta["index_type"] == "hnsw"


def test_compressor_change_means_full_rebuild(tmp_path):
    build_index(HashCompressor(), DOCS, tmp_path / "index", compressor_id="enc-A")
    model = HashCompressor()
    result = update_index(model, DOCS[:30], tmp_path / "index", compressor_id="enc-B")
    assert result["full_rebuild"] is True
    assert result["reason"] == "compressor changed ('enc-A' -> 'enc-B')"
    assert (result["unchanged"], result["removed"], result["compressed"]) == (30, 10, 30)
    assert len(model.compressed) == 30
    assert CompressedIndex.load(tmp_path / "index").meta["compressor"] == "enc-B"


def test_dtype_change_means_full_rebuild(tmp_path):
    build_index(HashCompressor(), DOCS, tmp_path / "index")
    model = HashCompressor()
    result = update_index(model, DOCS, tmp_path / "index", compressor_id="", settings={"vector_dtype": "float16"})
    assert result["full_rebuild"] and result["reason"] == "vector dtype changed (float32 -> float16)"
    assert len(model.compressed) == 40


def test_duplicate_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="'d1' appears twice"):
        build_index(HashCompressor(), DOCS + [DOCS[1]], tmp_path / "index")


def test_old_versions_are_pruned_but_the_previous_is_kept(tmp_path):
    root = tmp_path / "index"
    first = build_index(HashCompressor(), DOCS, root)["version"]
    reader = CompressedIndex.load(root)
    second = update_index(HashCompressor(), DOCS[:30], root, compressor_id="")["version"]
    assert sorted(p.name for p in (root / "versions").iterdir()) == sorted([first, second])
    third = update_index(HashCompressor(), DOCS[:20], root, compressor_id="")["version"]
    assert sorted(p.name for p in (root / "versions").iterdir()) == sorted([second, third])
    # a reader that loaded the first version still reads its (memory-mapped) vectors and searches
    assert reader.embeddings([39]).shape == (1, 3, 8) and reader.search(reader.embeddings([39]), 1)[1][0, 0] == 39
    assert CompressedIndex.load(root).index.ntotal == 20


# ---------------------------------------------------------------- resuming a killed build
def test_killed_update_keeps_old_index_and_resumes_to_the_same_result(tmp_path):
    build_index(HashCompressor(), DOCS, tmp_path / "index", compressor_id="enc-A")
    before = ranked(CompressedIndex.load(tmp_path / "index"))
    new_docs = DOCS + [{"id": f"x{i}", "title": "", "text": f"extra document {i}"} for i in range(20)]
    with pytest.raises(RuntimeError, match="killed mid-build"):
        update_index(FailingCompressor(fail_at=4), new_docs, tmp_path / "index", compressor_id="enc-A", batch_size=3)
    state = json.loads((tmp_path / "index" / "work" / "state.json").read_text())
    assert (state["done"], state["total"]) == (9, 20)  # three batches of three were flushed
    after = ranked(CompressedIndex.load(tmp_path / "index"))  # the previous index, complete and unchanged
    assert after[0] == before[0]
    np.testing.assert_array_equal(after[1], before[1])

    model = HashCompressor()
    result = update_index(model, new_docs, tmp_path / "index", compressor_id="enc-A", batch_size=3)
    assert model.compressed == [f"extra document {i}" for i in range(9, 20)]  # only what was not done
    assert (result["resumed_from"], result["compressed"], result["added"]) == (9, 11, 20)

    build_index(HashCompressor(), new_docs, tmp_path / "clean", compressor_id="enc-A")
    resumed, clean = CompressedIndex.load(tmp_path / "index"), CompressedIndex.load(tmp_path / "clean")
    np.testing.assert_array_equal(np.asarray(resumed.vectors), np.asarray(clean.vectors))
    assert ranked(resumed)[0] == ranked(clean)[0]
    np.testing.assert_array_equal(ranked(resumed)[1], ranked(clean)[1])


def test_killed_build_with_other_inputs_starts_over(tmp_path):
    with pytest.raises(RuntimeError):
        build_index(FailingCompressor(fail_at=3), DOCS, tmp_path / "index", batch_size=5, compressor_id="enc-A")
    model = HashCompressor()
    build_index(model, DOCS, tmp_path / "index", batch_size=5, compressor_id="enc-B")  # a different fingerprint
    assert len(model.compressed) == 40
    model = HashCompressor()
    with pytest.raises(RuntimeError):
        build_index(FailingCompressor(fail_at=2), DOCS[:20], tmp_path / "other", batch_size=5)
    build_index(model, DOCS[:20], tmp_path / "other", batch_size=5)  # same inputs: resumes after batch 1
    assert model.compressed == [d["text"] for d in DOCS[5:20]]


def test_kill_after_compressing_but_before_publishing_redoes_no_compression(tmp_path, monkeypatch):
    import clara_pipeline.index as index_module

    build_index(HashCompressor(), DOCS, tmp_path / "index")
    real = index_module.build_faiss_index

    def broken(*args, **kwargs):
        raise MemoryError("killed while building faiss")

    monkeypatch.setattr(index_module, "build_faiss_index", broken)
    new_docs = DOCS + [{"id": "n", "title": "", "text": "one more"}]
    with pytest.raises(MemoryError):
        update_index(HashCompressor(), new_docs, tmp_path / "index", compressor_id="", batch_size=4)
    assert CompressedIndex.load(tmp_path / "index").index.ntotal == 40
    monkeypatch.setattr(index_module, "build_faiss_index", real)
    model = HashCompressor()
    result = update_index(model, new_docs, tmp_path / "index", compressor_id="", batch_size=4)
    assert model.compressed == [] and (result["resumed_from"], result["compressed"], result["added"]) == (1, 0, 1)
    assert CompressedIndex.load(tmp_path / "index").embeddings_for_ids(["n"]).shape == (1, 3, 8)
    assert not (current_version_dir(tmp_path / "index") / "state.json").exists()


SLOW_UPDATE = """
import sys
sys.path.insert(0, {tests!r})
from test_index import HashCompressor, DOCS
from clara_pipeline.index import update_index
docs = DOCS + [{{"id": f"x{{i}}", "title": "", "text": f"extra document {{i}}"}} for i in range(60)]
update_index(HashCompressor(delay_s=0.15), docs, {index!r}, compressor_id="enc-A", batch_size=4)
print("finished")
"""


def test_sigkilled_update_process_leaves_old_index_and_resumes(tmp_path):
    root = tmp_path / "index"
    build_index(HashCompressor(), DOCS, root, compressor_id="enc-A")
    before = ranked(CompressedIndex.load(root))
    code = SLOW_UPDATE.format(tests=str(Path(__file__).parent), index=str(root))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state_path = root / "work" / "state.json"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if json.loads(state_path.read_text())["done"] >= 12:
                    break
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    done = json.loads(state_path.read_text())["done"]
    assert 12 <= done < 60 and done % 4 == 0

    after = ranked(CompressedIndex.load(root))  # the previous version, complete
    assert len(CompressedIndex.load(root).documents) == 40
    assert after[0] == before[0]
    np.testing.assert_array_equal(after[1], before[1])

    docs = DOCS + [{"id": f"x{i}", "title": "", "text": f"extra document {i}"} for i in range(60)]
    model = HashCompressor()
    result = update_index(model, docs, root, compressor_id="enc-A", batch_size=4)
    assert model.compressed == [f"extra document {i}" for i in range(done, 60)]
    assert result["resumed_from"] == done
    build_index(HashCompressor(), docs, tmp_path / "clean", compressor_id="enc-A")
    resumed, clean = CompressedIndex.load(root), CompressedIndex.load(tmp_path / "clean")
    np.testing.assert_array_equal(np.asarray(resumed.vectors), np.asarray(clean.vectors))
    assert ranked(resumed)[0] == ranked(clean)[0]
    np.testing.assert_array_equal(ranked(resumed)[1], ranked(clean)[1])


# ---------------------------------------------------------------- concurrency
def test_concurrent_updates_run_one_after_the_other(tmp_path):
    root = tmp_path / "index"
    build_index(HashCompressor(), DOCS, root, compressor_id="enc-A")
    first_started = threading.Event()

    class Slow(HashCompressor):
        def compress(self, texts, batch_size=32):
            first_started.set()
            time.sleep(0.05)
            return super().compress(texts, batch_size)

    corpus_a = DOCS + [{"id": f"a{i}", "title": "", "text": f"from run a {i}"} for i in range(10)]
    corpus_b = DOCS[:35] + [{"id": f"b{i}", "title": "", "text": f"from run b {i}"} for i in range(4)]
    results: dict[str, dict] = {}
    errors: list[BaseException] = []

    def run(name, docs, model):
        try:
            results[name] = update_index(model, docs, root, compressor_id="enc-A", batch_size=2)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    a = threading.Thread(target=run, args=("a", corpus_a, Slow()))
    a.start()
    assert first_started.wait(30)  # run a holds the lock and is compressing
    b = threading.Thread(target=run, args=("b", corpus_b, HashCompressor()))
    b.start()
    a.join(60)
    b.join(60)
    assert not errors
    # b waited for a and then updated a's published index: it saw a's ten documents and removed them
    assert (results["a"]["added"], results["a"]["removed"]) == (10, 0)
    assert (results["b"]["added"], results["b"]["removed"], results["b"]["unchanged"]) == (4, 15, 35)
    final = CompressedIndex.load(root)
    assert final.version == results["b"]["version"]
    assert [d["id"] for d in final.documents] == [d["id"] for d in corpus_b]
    build_index(HashCompressor(), corpus_b, tmp_path / "clean", compressor_id="enc-A")
    clean = CompressedIndex.load(tmp_path / "clean")
    np.testing.assert_array_equal(np.asarray(final.vectors), np.asarray(clean.vectors))
    assert ranked(final)[0] == ranked(clean)[0]


def test_concurrent_update_gives_up_after_lock_timeout(tmp_path):
    root = tmp_path / "index"
    build_index(HashCompressor(), DOCS, root)
    with index_lock(root):
        started = time.monotonic()
        with pytest.raises(IndexLockedError, match=r"another re-index .*\(pid \d+"):
            update_index(HashCompressor(), DOCS[:5], root, compressor_id="", settings={"lock_timeout_s": 0.3})
        assert time.monotonic() - started >= 0.3
    assert CompressedIndex.load(root).index.ntotal == 40
    update_index(HashCompressor(), DOCS[:5], root, compressor_id="", settings={"lock_timeout_s": 0.3})
    assert CompressedIndex.load(root).index.ntotal == 5


# ---------------------------------------------------------------- index types
BIG = [{"id": f"b{i}", "title": "", "text": f"a bigger corpus, document {i}"} for i in range(1000)]
BIG_QUERIES = [f"big query {i}" for i in range(50)]


@pytest.fixture(scope="module")
def exact_big(tmp_path_factory):
    root = tmp_path_factory.mktemp("flat") / "index"
    build_index(HashCompressor(), BIG, root, batch_size=250)
    index = CompressedIndex.load(root)
    return index.search(HashCompressor().compress(BIG_QUERIES).numpy(), 10)


# Recall@10 against exact flat search on 24-dimensional gaussian stand-in vectors (no cluster structure,
# the hardest case for ivf/pq): the bounds bracket the measured value, so a broken setting fails.
@pytest.mark.parametrize("settings, plan, min_recall, max_recall", [
    ({"type": "ivf", "nlist": 8, "nprobe": 8}, {"type": "ivf", "nlist": 8, "nprobe": 8}, 1.0, 1.0),
    ({"type": "ivf", "nlist": 8, "nprobe": 1}, {"type": "ivf", "nlist": 8, "nprobe": 1}, 0.25, 0.55),  # 0.38
    ({"type": "hnsw", "hnsw_m": 16, "ef_search": 64}, {"type": "hnsw", "hnsw_m": 16, "ef_search": 64}, 0.97, 1.0),
    ({"type": "pq", "nlist": 4, "nprobe": 4, "pq_m": 12, "pq_nbits": 4, "pq_rerank": 1},  # 0.58: codes alone
     {"type": "pq", "nlist": 4, "nprobe": 4, "pq_m": 12, "pq_nbits": 4, "code_bytes": 6, "rerank": 1}, 0.45, 0.75),
    ({"type": "pq", "nlist": 1, "pq_m": 12, "pq_nbits": 4, "pq_rerank": 1},  # 0.65
     {"type": "pq", "nlist": 1, "pq_m": 12, "pq_nbits": 4, "code_bytes": 6, "rerank": 1}, 0.5, 0.8),
    ({"type": "pq", "nlist": 4, "nprobe": 4, "pq_m": 12, "pq_nbits": 4},  # re-scored from vectors.npy (default 32)
     {"type": "pq", "nlist": 4, "pq_m": 12, "pq_nbits": 4, "rerank": 32}, 0.97, 1.0),
])
def test_approximate_index_types_build_and_search(tmp_path, exact_big, settings, plan, min_recall, max_recall):
    meta = build_index(HashCompressor(), BIG, tmp_path / "index", batch_size=250, settings=settings)
    assert meta["index_type"] == settings["type"] and "fallback_reason" not in meta["index"]
    assert {k: meta["index"][k] for k in plan} == plan
    assert meta["settings"]["type"] == settings["type"]
    index = CompressedIndex.load(tmp_path / "index")
    assert type(index.index).__name__ == {"ivf": "IndexIVFFlat", "hnsw": "IndexHNSWFlat",
                                          "pq": "IndexIVFPQ" if plan.get("nlist", 0) > 1 else "IndexPQ"}[settings["type"]]
    scores, rows = index.search(HashCompressor().compress(BIG_QUERIES).numpy(), 10)
    assert rows.shape == (50, 10) and (rows >= 0).all() and (rows < 1000).all()
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    recall = recall_at(rows, exact_big[1])
    assert min_recall <= recall <= max_recall, recall
    if plan.get("nprobe") == 8 or plan.get("rerank", 1) > 1:  # every list probed / re-scored: exact scores
        np.testing.assert_allclose(scores, np.take_along_axis(
            exact_scores_of(index, BIG_QUERIES), rows, 1), atol=1e-5)
    if plan.get("nprobe") == 8:  # every list probed: exactly the flat result
        np.testing.assert_array_equal(rows, exact_big[1])
        np.testing.assert_allclose(scores, exact_big[0], atol=1e-5)
    # each document is still found first by its own vectors
    assert index.search(index.embeddings(np.arange(100)), 1)[1][:, 0].tolist() == list(range(100))
    # search-time knobs reach faiss / the re-ranker
    if settings["type"] == "pq" and plan["rerank"] > 1:
        index.set_search_params(rerank=1)
        assert recall_at(index.search(HashCompressor().compress(BIG_QUERIES).numpy(), 10)[1], exact_big[1]) < 0.8
    if settings["type"] == "ivf":
        index.set_search_params(nprobe=8)
        np.testing.assert_array_equal(index.search(HashCompressor().compress(BIG_QUERIES).numpy(), 10)[1], exact_big[1])


def test_ivf_fills_every_row_when_probed_lists_are_short(tmp_path):
    build_index(HashCompressor(), BIG, tmp_path / "index", settings={"type": "ivf", "nlist": 20, "nprobe": 1})
    index = CompressedIndex.load(tmp_path / "index")
    scores, rows = index.search(HashCompressor().compress(BIG_QUERIES[:5]).numpy(), 200)  # > one list's ~50
    assert (rows >= 0).all() and all(len(set(r)) == 200 for r in rows)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_tiny_corpus_falls_back_to_flat_and_records_why(tmp_path):
    meta = build_index(HashCompressor(), DOCS, tmp_path / "index", settings={"type": "ivf", "nlist": 8})
    assert meta["index_type"] == "flat"
    assert meta["index"]["requested"] == "ivf"
    assert meta["index"]["fallback_reason"].startswith("40 documents are too few to train a ivf index with 8 lists")
    assert meta["settings"]["type"] == "ivf"
    stored = json.loads((current_version_dir(tmp_path / "index") / "meta.json").read_text())
    assert stored["index"] == meta["index"]
    assert type(CompressedIndex.load(tmp_path / "index").index).__name__ == "IndexFlatIP"
    assert plan_index({"type": "pq", "pq_nbits": 8}, 5000, 24)["type"] == "flat"  # 256-entry codebooks need 9984
    assert plan_index({"type": "ivf"}, 1600, 24) == {"requested": "ivf", "type": "ivf", "nlist": 40, "nprobe": 16,
                                                     "train_size": 1600}
    assert plan_index({"type": "pq"}, 20000, 2048)["pq_m"] == 256


def test_float16_storage_round_trips(tmp_path):
    model = HashCompressor()
    meta = build_index(model, DOCS, tmp_path / "index", settings={"vector_dtype": "float16"})
    assert meta["vector_dtype"] == "float16" and meta["bytes_per_document"] == 48
    index = CompressedIndex.load(tmp_path / "index")
    assert index.vectors.dtype == np.float16
    exact = model.compress([d["text"] for d in DOCS]).numpy()
    got = index.embeddings(np.arange(40))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, exact, rtol=1e-3, atol=2e-3)
    assert not np.array_equal(got, exact)  # really stored at half precision
    scores, rows = index.search(exact[:10], 1)
    assert rows[:, 0].tolist() == list(range(10)) and np.allclose(scores[:, 0], 1.0, atol=1e-3)


def test_settings_are_validated():
    with pytest.raises(ValueError, match="index.type"):
        IndexSettings(type="annoy")
    with pytest.raises(ValueError, match=r"unknown index settings \['nlists'\]"):
        IndexSettings.from_params({"nlists": 4})
    assert IndexSettings.from_params({"type": "hnsw", "batch_size": 64}).type == "hnsw"
    with pytest.raises(ValueError, match="must divide"):
        plan_index({"type": "pq", "pq_m": 5}, 100000, 24)


def test_document_hash_covers_id_title_and_text():
    base = {"id": "a", "title": "t", "text": "x"}
    assert len({document_hash(base), document_hash({**base, "id": "b"}), document_hash({**base, "title": "u"}),
                document_hash({**base, "text": "y"})}) == 4
    assert document_hash(base) == document_hash({**base, "extra": 1})
