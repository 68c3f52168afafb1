"""The compressed index: every document compressed once, offline, and searched by cosine.

A document's compressed form is ``n_mem`` vectors of the generator's hidden size. Following the paper,
retrieval scores a question against a document by the cosine between the flattened query-reasoner
vectors and the flattened document vectors, so the index stores the flattened, L2-normalised vectors in
a faiss inner-product index. The unnormalised vectors are kept too (memory-mapped ``.npy``), because the
generator reads those.

Layout of an index folder (``index_dir``)::

    CURRENT                 one line: the name of the published version under versions/
    versions/<version>/     one complete, immutable index (also loadable on its own):
        index.faiss         faiss index over the normalised flattened vectors (flat, ivf, hnsw or pq)
        vectors.npy         [num_docs, n_mem, dim] float32 or float16, the compressed documents themselves
        documents.jsonl     the document table, row i <-> vector i (id, title, text)
        meta.json           n_mem, dim, count, vector dtype, faiss type and settings, compressor, last update
    work/                   a build in progress (resumable): vectors.npy filled batch by batch, state.json
    .lock                   flock'd by whoever is (re)building, so two runs cannot interleave

Readers resolve ``CURRENT`` and read one version folder; writers build in ``work/``, rename it into
``versions/`` and then replace ``CURRENT`` (an atomic rename), so a reader sees the old index or the new
one, never a mix. The version that was current before a publish is kept (a reader may be between reading
``CURRENT`` and opening its files); older ones are deleted. A folder in the old single-version layout
(the four files directly in ``index_dir``) still loads, and is moved under ``versions/`` by the next update.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator

import faiss
import numpy as np

from clara_pipeline.jsonl import chmod_as_created, read_jsonl, write_jsonl

log = logging.getLogger(__name__)

INDEX_TYPES = ("flat", "ivf", "hnsw", "pq")
VECTOR_DTYPES = ("float32", "float16")
FILES = ("index.faiss", "vectors.npy", "documents.jsonl", "meta.json")
METRIC = "cosine (inner product of L2-normalised flattened memory vectors)"
# faiss's k-means warns below 39 training points per centroid: fewer give poor centroids, and a corpus that
# small is searched exactly in no time, so below it a trained index type falls back to flat.
MIN_POINTS_PER_CENTROID = 39
# Rows normalised and handed to faiss at a time, so building never needs a second full float32 copy.
_ADD_CHUNK_BYTES = 64 << 20

Progress = Callable[[int, int], None]


# ---------------------------------------------------------------- settings
@dataclass(frozen=True)
class IndexSettings:
    """The ``index:`` section of params.yaml (``batch_size`` is passed separately)."""

    type: str = "flat"              # flat | ivf | hnsw | pq
    vector_dtype: str = "float32"   # storage of vectors.npy; float16 halves the disk and page cache
    nlist: int = 0                  # ivf/pq inverted lists; 0 = round(sqrt(num_docs)); 1 with pq = IndexPQ
    nprobe: int = 16                # ivf/pq lists searched per query
    hnsw_m: int = 32                # hnsw neighbours per node
    ef_construction: int = 200      # hnsw build beam (at 1M vectors 40 capped recall@10 near 0.9; 200: 0.99)
    ef_search: int = 64             # hnsw search beam (raised to k when k is larger)
    pq_m: int = 0                   # pq sub-quantizers; must divide n_mem*dim; 0 = largest divisor <= dims/8
    pq_nbits: int = 8               # bits per pq code
    pq_rerank: int = 32             # pq: fetch k*this candidates, re-score them exactly from vectors.npy; 1 = off
                                    # (recall@10 at 1M vectors: 0.73 at 8, 0.97 at 32, 0.999 at 64)
    train_size: int = 100_000       # at most this many (seeded) sampled documents train ivf/pq
    seed: int = 0                   # the training sample's seed
    lock_timeout_s: float | None = None  # wait this long for another re-index to finish; None = wait

    def __post_init__(self):
        if self.type not in INDEX_TYPES:
            raise ValueError(f"index.type must be one of {INDEX_TYPES}, got {self.type!r}")
        if self.vector_dtype not in VECTOR_DTYPES:
            raise ValueError(f"index.vector_dtype must be one of {VECTOR_DTYPES}, got {self.vector_dtype!r}")
        for name in ("nprobe", "hnsw_m", "ef_construction", "ef_search", "pq_nbits", "pq_rerank", "train_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"index.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("nlist", "pq_m"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"index.{name} must be >= 0 (0 = automatic), got {getattr(self, name)!r}")

    @classmethod
    def from_params(cls, params: dict | None) -> "IndexSettings":
        params = dict(params or {})
        params.pop("batch_size", None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown index settings {unknown}; known: {sorted(known | {'batch_size'})}")
        return cls(**params)

    def index_settings(self) -> dict:
        """What shapes a published index (how long to wait for the lock does not)."""
        settings = asdict(self)
        settings.pop("lock_timeout_s")
        return settings


def _as_settings(settings: IndexSettings | dict | None) -> IndexSettings:
    return settings if isinstance(settings, IndexSettings) else IndexSettings.from_params(settings)


# ---------------------------------------------------------------- faiss
def _normalise(flat: np.ndarray) -> np.ndarray:
    flat = np.array(flat, dtype=np.float32, order="C", copy=True)  # normalize_L2 works in place
    faiss.normalize_L2(flat)
    return flat


def _auto_pq_m(dims: int) -> int:
    # At least 8 dimensions per sub-quantizer keeps its codebook meaningful; the largest such divisor
    # keeps the most accuracy (2048 dims -> 256 one-byte codes, 32x smaller than float32).
    return max(m for m in range(1, max(1, dims // 8) + 1) if dims % m == 0)


def plan_index(settings: IndexSettings | dict | None, count: int, dims: int) -> dict:
    """The faiss index type and settings actually used for ``count`` vectors of ``dims`` dimensions.

    A trained type (ivf, pq) on a corpus too small to train it falls back to flat; the returned dict says
    so in ``fallback_reason`` (and meta.json records it).
    """
    settings = _as_settings(settings)
    plan: dict = {"requested": settings.type, "type": settings.type}
    if settings.type == "flat":
        return plan
    if settings.type == "hnsw":
        plan.update(hnsw_m=settings.hnsw_m, ef_construction=settings.ef_construction, ef_search=settings.ef_search)
        return plan
    nlist = settings.nlist or max(1, round(math.sqrt(count)))
    if settings.type == "ivf":
        min_train = MIN_POINTS_PER_CENTROID * nlist
        plan.update(nlist=nlist, nprobe=min(settings.nprobe, nlist))
        needs = f"{nlist} lists"
    else:
        m = settings.pq_m or _auto_pq_m(dims)
        if dims % m:
            raise ValueError(f"index.pq_m={m} must divide the flattened dimension {dims}")
        codebook = 2 ** settings.pq_nbits
        min_train = MIN_POINTS_PER_CENTROID * max(nlist, codebook)
        # pq codes rank the near neighbours coarsely (recall@10 ~0.4 at 32 bytes for 256 dims); the exact vectors
        # are in vectors.npy anyway, so re-scoring k*pq_rerank candidates from them restores it (at 100k
        # vectors ~0.99 from 8; at 1M 0.73 at 8, 0.97 at 32: benchmarks/index_search.py).
        plan.update(nlist=nlist, pq_m=m, pq_nbits=settings.pq_nbits, code_bytes=math.ceil(m * settings.pq_nbits / 8),
                    rerank=settings.pq_rerank)
        if nlist > 1:  # nlist 1 is a plain IndexPQ: no lists to probe
            plan["nprobe"] = min(settings.nprobe, nlist)
        needs = f"{nlist} lists and {codebook}-entry codebooks"
    plan["train_size"] = min(count, max(settings.train_size, min_train))
    if count < min_train:
        reason = (f"{count} documents are too few to train a {settings.type} index with {needs} "
                  f"(needs {min_train}: {MIN_POINTS_PER_CENTROID} per centroid); searching exactly instead")
        log.warning("compressed index: %s", reason)
        return {"requested": settings.type, "type": "flat", "fallback_reason": reason}
    return plan


def build_faiss_index(flat: np.ndarray, settings: IndexSettings | dict | None = None) -> tuple[faiss.Index, dict]:
    """A faiss inner-product index over the L2-normalised rows of ``flat`` [N, D] (any float dtype; a
    memmap is read in chunks). Returns (index, plan) where plan is :func:`plan_index`'s record."""
    settings = _as_settings(settings)
    count, dims = flat.shape
    plan = plan_index(settings, count, dims)
    kind = plan["type"]
    if kind == "flat":
        index = faiss.IndexFlatIP(dims)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dims, plan["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = plan["ef_construction"]
        index.hnsw.efSearch = plan["ef_search"]
    elif kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dims), dims, plan["nlist"], faiss.METRIC_INNER_PRODUCT)
    elif plan["nlist"] > 1:
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dims), dims, plan["nlist"], plan["pq_m"], plan["pq_nbits"],
                                 faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexPQ(dims, plan["pq_m"], plan["pq_nbits"], faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        # Sorted row numbers: a memmap reads them front to back.
        sample = np.sort(np.random.default_rng(settings.seed).choice(count, size=plan["train_size"], replace=False))
        index.train(_normalise(flat[sample]))
    if "nprobe" in plan:
        index.nprobe = plan["nprobe"]
    step = max(1, _ADD_CHUNK_BYTES // (4 * max(dims, 1)))
    for start in range(0, count, step):
        index.add(_normalise(flat[start:start + step]))
    return index, plan


# ---------------------------------------------------------------- folder layout
def document_hash(document: dict) -> str:
    """The content identity of a document for re-indexing: its id, title and text."""
    key = json.dumps([document["id"], document.get("title", ""), document["text"]], ensure_ascii=False)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _current_name(index_dir: Path) -> str | None:
    pointer = index_dir / "CURRENT"
    try:
        return pointer.read_text().strip() or None
    except FileNotFoundError:
        return None


def current_version_dir(index_dir) -> Path:
    """The folder holding the published index: ``versions/<CURRENT>``, or ``index_dir`` itself for a folder
    in the old single-version layout (or a version folder copied elsewhere, e.g. a registry artifact)."""
    index_dir = Path(index_dir)
    name = _current_name(index_dir)
    return index_dir / "versions" / name if name else index_dir


def _check_files(folder: Path) -> None:
    for name in FILES:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: missing; rebuild the compressed index (clara stage compressed_index)")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    chmod_as_created(fd)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@dataclass
class _Stored:
    """A published version as an update needs it: table, meta and vectors, without the faiss index."""

    folder: Path
    documents: list[dict]
    meta: dict
    vectors: np.ndarray


def _read_stored(folder: Path) -> _Stored:
    _check_files(folder)
    return _Stored(folder, read_jsonl(folder / "documents.jsonl"), json.loads((folder / "meta.json").read_text()),
                   np.load(folder / "vectors.npy", mmap_mode="r"))


# ---------------------------------------------------------------- lock
class IndexLockedError(TimeoutError):
    """Another re-index of the same folder held the lock for longer than ``lock_timeout_s``."""


@contextlib.contextmanager
def index_lock(index_dir, timeout_s: float | None = None) -> Iterator[None]:
    """Hold ``index_dir/.lock`` exclusively (fcntl.flock). The kernel drops it when the holder dies, so a
    killed build never leaves a stale lock. ``timeout_s=None`` waits as long as it takes."""
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    path = index_dir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if timeout_s is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                        raise IndexLockedError(
                            f"{path}: another re-index of this index is running ({holder}); gave up after "
                            f"{timeout_s:g}s. Wait for it or raise index.lock_timeout_s.") from None
                    time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# ---------------------------------------------------------------- build / update
def build_index(model, documents: list[dict], out_dir, batch_size: int = 64, compressor_id: str = "",
                progress: Progress | None = None, *, settings: IndexSettings | dict | None = None,
                show_progress: bool = False) -> dict:
    """Compress every document with ``model`` and publish a new version of the index in ``out_dir``.

    Returns the new version's meta (meta.json), whose ``update`` entry holds :func:`update_index`'s counts.
    A killed build resumes from its last flushed batch when rerun with the same inputs.
    """
    result = _reindex(model, documents, Path(out_dir), compressor_id, batch_size, progress,
                      _as_settings(settings), show_progress, incremental=False)
    return result["meta"]


def update_index(model, documents: list[dict], index_dir, compressor_id: str, batch_size: int = 64,
                 progress: Progress | None = None, *, settings: IndexSettings | dict | None = None,
                 show_progress: bool = False) -> dict:
    """Bring the index in ``index_dir`` up to date with ``documents``, compressing only what changed.

    Documents are matched to the published table by id and compared by :func:`document_hash`: new ones
    are compressed, changed ones re-compressed, deleted ones dropped, unchanged ones keep their stored
    vectors. Rows follow ``documents``' order, so the result equals a full rebuild's. A different
    ``compressor_id`` (or vector shape or dtype) than the published index's means a full rebuild.

    Returns {added, updated, removed, unchanged, full_rebuild, reason, compressed, resumed_from,
    published, version, meta}: the first four describe the corpus change against the published index,
    ``compressed`` how many documents were compressed by this call (less than added+updated when it
    resumed a killed run), ``published`` whether a new version was written (False when nothing changed).
    """
    return _reindex(model, documents, Path(index_dir), compressor_id, batch_size, progress,
                    _as_settings(settings), show_progress, incremental=True)


def _reindex(model, documents, index_dir: Path, compressor_id: str, batch_size: int, progress,
             settings: IndexSettings, show_progress: bool, incremental: bool) -> dict:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    table = [{"id": d["id"], "title": d.get("title", ""), "text": d["text"]} for d in documents]
    seen: set = set()
    for d in table:
        if d["id"] in seen:
            raise ValueError(f"document id {d['id']!r} appears twice; ids must be unique to index by id")
        seen.add(d["id"])
    with index_lock(index_dir, settings.lock_timeout_s):
        return _reindex_locked(model, table, index_dir, compressor_id, batch_size, progress, settings,
                               show_progress, incremental)


def _plan_rows(base: _Stored | None, table: list[dict], hashes: list[str], full: bool) -> tuple[np.ndarray, dict]:
    """For each new row, the base row whose vectors it keeps (-1: compress it); plus the change counts."""
    source = np.full(len(table), -1, dtype=np.int64)
    counts = {"added": 0, "updated": 0, "removed": 0, "unchanged": 0}
    if base is None:
        counts["added"] = len(table)
        return source, counts
    old_row = {d["id"]: i for i, d in enumerate(base.documents)}
    for i, (doc, digest) in enumerate(zip(table, hashes)):
        j = old_row.get(doc["id"])
        if j is None:
            counts["added"] += 1
        elif document_hash(base.documents[j]) != digest:
            counts["updated"] += 1
        else:
            counts["unchanged"] += 1
            if not full:
                source[i] = j
    counts["removed"] = len(set(old_row) - {d["id"] for d in table})
    return source, counts


def _full_rebuild_reason(base: _Stored | None, incremental: bool, compressor_id: str, n_mem: int, dim: int,
                         dtype: str) -> str | None:
    if base is None:
        return "no published index"
    if not incremental:
        return "full build requested"
    old = base.meta
    if old.get("compressor", "") != compressor_id:
        return f"compressor changed ({old.get('compressor', '')!r} -> {compressor_id!r})"
    if (old.get("n_mem"), old.get("dim")) != (n_mem, dim):
        return f"vector shape changed ({old.get('n_mem')}x{old.get('dim')} -> {n_mem}x{dim})"
    if str(base.vectors.dtype) != dtype:
        return f"vector dtype changed ({base.vectors.dtype} -> {dtype})"
    return None


def _to_numpy(vectors) -> np.ndarray:
    if hasattr(vectors, "detach"):  # a torch tensor; the library stays importable without torch
        vectors = vectors.detach().float().cpu().numpy()
    return np.asarray(vectors, dtype=np.float32)


def _reindex_locked(model, table: list[dict], index_dir: Path, compressor_id: str, batch_size: int,
                    progress: Progress | None, settings: IndexSettings, show_progress: bool,
                    incremental: bool) -> dict:
    n_mem, dim = int(model.n_mem), int(model.memory_dim)
    dtype = settings.vector_dtype
    hashes = [document_hash(d) for d in table]
    published = _current_name(index_dir) is not None or (index_dir / "index.faiss").is_file()
    base = _read_stored(current_version_dir(index_dir)) if published else None

    full_reason = _full_rebuild_reason(base, incremental, compressor_id, n_mem, dim, dtype)
    source, counts = _plan_rows(base, table, hashes, full=full_reason is not None)
    keeps_order = base is not None and np.array_equal(source, np.arange(len(base.documents)))
    if full_reason:
        reason = full_reason
    elif base.meta.get("settings") != settings.index_settings():
        reason = "index settings changed"
    elif keeps_order:  # same documents, same order, same compressor and settings: nothing to do
        return {**counts, "full_rebuild": False, "reason": "no changes", "compressed": 0, "resumed_from": 0,
                "published": False, "version": _current_name(index_dir), "meta": base.meta}
    else:
        reason = "incremental update"
    counts.update(full_rebuild=full_reason is not None, reason=reason)

    # The work folder belongs to exactly these inputs: a rerun with the same fingerprint resumes it.
    copies = bool((source >= 0).any())
    fingerprint = hashlib.sha256(json.dumps({
        "compressor": compressor_id, "shape": [n_mem, dim], "vector_dtype": dtype,
        "documents": hashlib.sha256("".join(hashes).encode()).hexdigest(),
        # rows copied from the published version depend on which version that was
        "copied_from": [base.folder.name, base.meta.get("version")] if copies else None,
        "source": hashlib.sha256(source.tobytes()).hexdigest(),
    }).encode()).hexdigest()
    work = index_dir / "work"
    vectors_path = work / "vectors.npy"
    pending = np.flatnonzero(source < 0)
    shape = (len(table), n_mem, dim)
    done = _resume_point(work, fingerprint, shape, dtype)
    if done is None:
        done = 0
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        if keeps_order and not len(pending) and str(base.vectors.dtype) == dtype:
            # Published vector files are never written again, so a new version may share the file.
            _link_or_copy(base.folder / "vectors.npy", vectors_path)
        else:
            out = np.lib.format.open_memmap(vectors_path, mode="w+", dtype=dtype, shape=shape)
            kept = np.flatnonzero(source >= 0)
            for start in range(0, len(kept), 4096):
                rows = kept[start:start + 4096]
                out[rows] = base.vectors[source[rows]]
            out.flush()
            del out
        _write_atomic(work / "state.json", json.dumps({"fingerprint": fingerprint, "done": 0, "total": len(pending)}))
    elif done:
        log.info("compressed index: resuming a killed build at %d/%d documents", done, len(pending))
    counts["resumed_from"] = done

    compressed = _compress_pending(model, table, pending, done, vectors_path, work, fingerprint, batch_size,
                                   progress, show_progress, shape)
    counts["compressed"] = compressed

    vectors = np.load(vectors_path, mmap_mode="r")
    index, plan = build_faiss_index(vectors.reshape(len(table), n_mem * dim), settings)
    faiss.write_index(index, str(work / "index.faiss"))
    del index, vectors
    write_jsonl(work / "documents.jsonl", table)
    version = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    meta = {"version": version, "count": len(table), "n_mem": n_mem, "dim": dim, "metric": METRIC,
            "index_type": plan["type"], "index": plan, "settings": settings.index_settings(),
            "vector_dtype": dtype, "compressor": compressor_id,
            "bytes_per_document": int(n_mem * dim * np.dtype(dtype).itemsize),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "update": {k: counts[k] for k in ("added", "updated", "removed", "unchanged", "full_rebuild",
                                              "reason", "compressed", "resumed_from")}}
    (work / "meta.json").write_text(json.dumps(meta, indent=2))
    _publish(index_dir, work, version)
    return {**counts, "published": True, "version": version, "meta": meta}


def _resume_point(work: Path, fingerprint: str, shape: tuple, dtype: str) -> int | None:
    """Rows already compressed by an earlier run of the same build, or None to start over."""
    try:
        state = json.loads((work / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if state.get("fingerprint") != fingerprint:
        log.info("compressed index: discarding an unfinished build of different inputs")
        return None
    try:
        vectors = np.load(work / "vectors.npy", mmap_mode="r")
    except (FileNotFoundError, ValueError):
        return None
    if vectors.shape != shape or str(vectors.dtype) != dtype:
        return None
    return int(state["done"])


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _compress_pending(model, table, pending: np.ndarray, done: int, vectors_path: Path, work: Path,
                      fingerprint: str, batch_size: int, progress, show_progress: bool, shape: tuple) -> int:
    """Compress ``pending`` rows from ``done`` on, flushing each batch and then recording it as done."""
    total = len(pending)
    if done >= total:
        return 0
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=done, unit="doc", desc="compressing documents")
    out = np.lib.format.open_memmap(vectors_path, mode="r+")
    started = done
    try:
        for start in range(done, total, batch_size):
            rows = pending[start:start + batch_size]
            got = _to_numpy(model.compress([table[r]["text"] for r in rows], batch_size=batch_size))
            if got.shape != (len(rows), *shape[1:]):
                raise ValueError(f"compressor returned {got.shape} for {len(rows)} documents, "
                                 f"expected {(len(rows), *shape[1:])}")
            out[rows] = got
            out.flush()
            done = start + len(rows)
            # Written only after the batch is on disk: a kill in between redoes that batch, never skips it.
            _write_atomic(work / "state.json", json.dumps({"fingerprint": fingerprint, "done": done, "total": total}))
            if bar is not None:
                bar.update(len(rows))
            if progress:
                progress(done, total)
    finally:
        del out
        if bar is not None:
            bar.close()
    return done - started


def _publish(index_dir: Path, work: Path, version: str) -> None:
    """Move the finished ``work`` folder into versions/ and point CURRENT at it; prune old versions."""
    versions = index_dir / "versions"
    versions.mkdir(exist_ok=True)
    previous = _current_name(index_dir)
    os.rename(work, versions / version)
    # state.json stays until here: a kill before the rename resumes with every row done (faiss is rebuilt)
    (versions / version / "state.json").unlink()
    _fsync_dir(versions)
    _write_atomic(index_dir / "CURRENT", version + "\n")
    _fsync_dir(index_dir)
    if previous is None and (index_dir / "index.faiss").is_file():
        # An old single-version folder: now that CURRENT wins, move its files aside as the previous version.
        previous = "legacy"
        (versions / previous).mkdir(exist_ok=True)
        for name in FILES:
            with contextlib.suppress(FileNotFoundError):
                os.replace(index_dir / name, versions / previous / name)
    for folder in versions.iterdir():
        if folder.name not in (version, previous):
            shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- reading
@dataclass
class CompressedIndex:
    """A loaded index version: search by query vectors, fetch compressed documents by row or id."""

    path: Path                 # the version folder the files came from
    index: faiss.Index
    vectors: np.ndarray        # memmap [num_docs, n_mem, dim], float32 or float16
    documents: list[dict]
    meta: dict
    version: str | None = None
    rerank: int = 1            # pq: candidates per result re-scored exactly from ``vectors`` (1 = off)
    _row_of: dict | None = field(default=None, repr=False)

    @classmethod
    def load(cls, path) -> "CompressedIndex":
        """Load the published version of an index folder (or a plain old-layout / copied version folder)."""
        path = Path(path)
        for attempt in range(3):
            folder = current_version_dir(path)
            try:
                return cls._load_folder(folder)
            except FileNotFoundError:
                # A writer may have published and pruned between our reading CURRENT and the files: reread it.
                if attempt < 2 and current_version_dir(path) != folder:
                    continue
                raise
        raise AssertionError("unreachable")

    @classmethod
    def _load_folder(cls, folder: Path) -> "CompressedIndex":
        _check_files(folder)
        index = faiss.read_index(str(folder / "index.faiss"))
        vectors = np.load(folder / "vectors.npy", mmap_mode="r")
        documents = read_jsonl(folder / "documents.jsonl")
        meta = json.loads((folder / "meta.json").read_text())
        if index.ntotal != len(documents) or vectors.shape[0] != len(documents):
            raise ValueError(f"{folder}: index has {index.ntotal} vectors, vectors.npy {vectors.shape[0]}, "
                             f"documents.jsonl {len(documents)} rows; rebuild it")
        loaded = cls(folder, index, vectors, documents, meta, meta.get("version"))
        plan = meta.get("index", {})
        loaded.set_search_params(nprobe=plan.get("nprobe"), ef_search=plan.get("ef_search"), rerank=plan.get("rerank"))
        return loaded

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None,
                          rerank: int | None = None) -> None:
        """Trade recall for speed at search time (ivf/pq: lists probed; hnsw: search beam; pq: re-ranked
        candidates per result)."""
        if rerank is not None:
            self.rerank = max(1, int(rerank))
        if nprobe is not None and faiss.try_extract_index_ivf(self.index) is not None:
            faiss.extract_index_ivf(self.index).nprobe = int(nprobe)
        if ef_search is not None and hasattr(self.index, "hnsw"):
            self.index.hnsw.efSearch = int(ef_search)

    @property
    def row_of(self) -> dict:
        if self._row_of is None:
            self._row_of = {d["id"]: i for i, d in enumerate(self.documents)}
        return self._row_of

    def search(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """query_vectors [B, n_mem, dim] -> (scores [B, k], rows [B, k]), best first.

        Approximate types always fill all k rows: hnsw searches with a beam of at least k, and an ivf query
        whose probed lists held fewer than k documents is searched again with more lists. pq re-scores
        ``k * rerank`` candidates with the stored vectors, so its scores are exact cosines too.
        """
        flat = _normalise(np.asarray(query_vectors, dtype=np.float32).reshape(len(query_vectors), -1))
        k = min(int(k), self.index.ntotal)
        if k <= 0:
            return np.zeros((len(flat), 0), np.float32), np.zeros((len(flat), 0), np.int64)
        fetch = min(k * self.rerank, self.index.ntotal)
        scores, rows = self._search_faiss(flat, fetch)
        return self._rerank(flat, rows, k) if fetch > k else (scores, rows)

    def _search_faiss(self, flat: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        params = None
        if hasattr(self.index, "hnsw"):
            params = faiss.SearchParametersHNSW(efSearch=max(self.index.hnsw.efSearch, k))
        scores, rows = self.index.search(flat, k, params=params)
        ivf = faiss.try_extract_index_ivf(self.index)
        nprobe = ivf.nprobe if ivf is not None else 0
        while ivf is not None and (rows < 0).any() and nprobe < ivf.nlist:
            nprobe = min(ivf.nlist, nprobe * 2)
            short = np.flatnonzero((rows < 0).any(axis=1))
            wider = faiss.SearchParametersIVF(nprobe=nprobe)
            scores[short], rows[short] = self.index.search(flat[short], k, params=wider)
        return scores, rows

    def _rerank(self, flat: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best k of each query's candidate rows by exact cosine with the stored vectors."""
        scores = np.empty((len(flat), k), np.float32)
        rows = np.empty((len(flat), k), np.int64)
        for start in range(0, len(flat), 64):  # bounds the gathered [queries, candidates, dims] block
            cand = candidates[start:start + 64]
            docs = self.embeddings(np.maximum(cand, 0)).reshape(*cand.shape, -1)
            docs /= np.linalg.norm(docs, axis=-1, keepdims=True) + 1e-12
            exact = np.einsum("bd,bkd->bk", flat[start:start + 64], docs)
            exact[cand < 0] = -np.inf
            order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
            scores[start:start + 64] = np.take_along_axis(exact, order, 1)
            rows[start:start + 64] = np.take_along_axis(cand, order, 1)
        return scores, rows

    def embeddings(self, rows) -> np.ndarray:
        """Compressed documents (float32) for index rows (any shape of row array) -> [..., n_mem, dim]."""
        rows = np.asarray(rows)
        picked = np.asarray(self.vectors[rows.reshape(-1)], dtype=np.float32)
        return picked.reshape(*rows.shape, *self.vectors.shape[1:])

    def embeddings_for_ids(self, doc_ids: list[str]) -> np.ndarray:
        return self.embeddings(np.array([self.row_of[i] for i in doc_ids], dtype=np.int64))
