"""Re-indexing outside the lineage: keep a live index in step with the corpus and the registry's champion.

The lineage's ``compressed_index`` belongs to a training run: it is rebuilt when the lineage runs. Serving
needs more: when documents are added, edited or deleted, or when a new model becomes ``champion``, the
index the champion searches must follow, without retraining anything. This module does that:

* :func:`champion_compressor` fetches the champion's joint model (its ``model`` artifact) from the MLflow
  registry into ``artifacts/.cache/champion/<version>/`` and identifies its compressor by content
  (:func:`clara_pipeline.stages.compressor_id`);
* :func:`reindex` re-reads the corpus from its source (params.yaml ``corpus:``) and brings the live index in
  ``artifacts/live_index/`` up to date with :func:`clara_pipeline.index.update_index`: only new or changed
  documents are compressed, and a new champion (a different compressor) rebuilds it in full;
* :func:`corpus_fingerprint` is a cheap identity of the corpus source (file sizes and mtimes, or the
  embedded generator's params), for a sensor that re-indexes when it changes;
* :func:`compress_shard` and :func:`merge_shards` split the compression into N shards of the document table
  (row ``i`` goes to shard ``i % N``), each of which can run in its own process, machine or GPU, and merge
  them into one index with the same atomic ``versions/`` + ``CURRENT`` layout as every other index.

Nothing here imports Dagster; ``assets/automation.py`` wraps it in assets, a schedule and a sensor.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from clara_pipeline import tracking
from clara_pipeline.jsonl import read_jsonl, write_jsonl

DEFAULTS = {"cron": "0 3 * * *", "sensor_interval_s": 60, "shards": 4}
# importer spec keys that name input files or folders (see importers.import_corpus)
FILE_KEYS = ("path", "paths", "corpus_path")
COUNT_KEYS = ("added", "updated", "removed", "unchanged", "compressed")

Log = Callable[[str], None]


# ---------------------------------------------------------------- settings and folders
def reindex_settings(params: dict) -> dict:
    """The ``reindex:`` section of params.yaml over :data:`DEFAULTS` (the section is optional)."""
    cfg = {**DEFAULTS, **(params.get("reindex") or {})}
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown reindex settings {unknown}; known: {sorted(DEFAULTS)}")
    cfg["shards"] = int(cfg["shards"])
    cfg["sensor_interval_s"] = int(cfg["sensor_interval_s"])
    if cfg["shards"] < 1:
        raise ValueError(f"reindex.shards must be >= 1, got {cfg['shards']}")
    if cfg["sensor_interval_s"] < 1:
        raise ValueError(f"reindex.sensor_interval_s must be >= 1, got {cfg['sensor_interval_s']}")
    return cfg


def live_index_dir(root) -> Path:
    return Path(root) / "artifacts" / "live_index"


def shards_dir(root) -> Path:
    return Path(root) / "artifacts" / "shards"


def sharded_index_dir(root) -> Path:
    return Path(root) / "artifacts" / "sharded_index"


def champion_cache_dir(root) -> Path:
    return Path(root) / "artifacts" / ".cache" / "champion"


def live_index_exists(root) -> bool:
    """Whether a live index has been published (readers follow CURRENT)."""
    return (live_index_dir(root) / "CURRENT").is_file()


# ---------------------------------------------------------------- the champion
def champion_compressor(root, model_name: str) -> tuple[Path, str, str]:
    """The registry champion's joint model on local disk, its compressor id and its version.

    The ``model`` artifact of ``models:/<model_name>@champion`` is downloaded once per version into
    ``artifacts/.cache/champion/<version>/model`` and reused afterwards (a version's artifacts never change;
    ``source.json`` records where the copy came from, so a registry recreated from scratch, whose version
    numbers start again, is not mistaken for the old one)."""
    from clara_pipeline import registry
    from clara_pipeline.stages import compressor_id

    root = Path(root)
    mlflow = tracking.configure(root)
    client = mlflow.MlflowClient()
    mv = registry.champion(client, model_name)
    if mv is None:
        raise LookupError(f"registered model {model_name!r} has no {registry.CHAMPION!r} alias in "
                          f"{tracking.tracking_uri(root)}: benchmark_report promotes a model only when it beats the "
                          "baselines of its report and the current champion; run the lineage, or promote a "
                          "version by hand with `clara promote VERSION`")
    version = str(mv.version)
    identity = {"model_name": model_name, "version": version, "source": mv.source, "run_id": mv.run_id}
    cache = champion_cache_dir(root) / version
    model_dir = cache / "model"
    marker = cache / "source.json"
    cached = (model_dir / "clara_config.json").is_file() and (model_dir / "weights.safetensors").is_file()
    if not (cached and marker.is_file() and json.loads(marker.read_text()) == identity):
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".{version}."))
        try:
            local = _download_pyfunc_artifact(mlflow, client, model_name, version, "model", tmp / "download")
            for name in ("clara_config.json", "weights.safetensors"):
                if not (local / name).is_file():
                    raise FileNotFoundError(f"champion {model_name} v{version}: the 'model' artifact has no {name} "
                                            f"(downloaded to {local})")
            os.replace(local, tmp / "model")
            (tmp / "source.json").write_text(json.dumps(identity, indent=2))
            shutil.rmtree(tmp / "download", ignore_errors=True)
            if cache.exists():
                shutil.rmtree(cache)
            os.replace(tmp, cache)  # a concurrent reader sees the old copy or the complete new one
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return model_dir, compressor_id(model_dir), version


def _download_pyfunc_artifact(mlflow, client, model_name: str, version: str, key: str, dst: Path) -> Path:
    """Download one of a registered pyfunc's ``artifacts`` (here the joint model folder) and nothing else:
    MLmodel maps the artifact's key to its path inside the logged model."""
    import yaml

    base = client.get_model_version_download_uri(model_name, version).rstrip("/")
    dst.mkdir(parents=True, exist_ok=True)
    mlmodel = yaml.safe_load(Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{base}/MLmodel",
                                                                      dst_path=str(dst))).read_text())
    artifacts = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts") or {}
    if key not in artifacts:
        raise KeyError(f"{model_name} v{version} has no pyfunc artifact {key!r} (has {sorted(artifacts)})")
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{base}/{artifacts[key]['path']}",
                                                    dst_path=str(dst)))


# ---------------------------------------------------------------- the corpus
def load_documents(root, params: dict) -> list[dict]:
    """The document table from the configured source, as raw_corpus would write it (without writing it)."""
    cfg = params["corpus"]
    if cfg.get("source", "embedded") == "embedded":
        from clara_pipeline.corpus import generate_corpus

        return generate_corpus(cfg, params["seed"])["documents"]
    from clara_pipeline.importers import import_corpus

    return import_corpus(cfg, root=Path(root), seed=params["seed"]).documents


def _input_paths(root: Path, cfg: dict) -> list[Path]:
    paths = []
    for key in FILE_KEYS:
        value = cfg.get(key)
        if value in (None, "", []):
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            path = Path(str(item)).expanduser()
            paths.append(path if path.is_absolute() else root / path)
    return paths


def _stat_entries(root: Path, path: Path) -> list[list]:
    """(path, size, mtime_ns) of a file, of every file under a folder (BEIR), or a 'missing' marker."""
    def name(p: Path) -> str:
        try:
            return str(p.relative_to(root))
        except ValueError:
            return str(p)

    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    elif path.exists():
        files = [path]
    else:
        return [[name(path), "missing"]]
    entries = []
    for f in files:
        st = f.stat()
        entries.append([name(f), st.st_size, st.st_mtime_ns])
    return entries


def corpus_fingerprint(root, params: dict) -> str:
    """A cheap identity of the corpus source; it changes when the corpus may have changed.

    File sources: the importer spec plus (path, size, mtime_ns) of every input file named by ``path`` /
    ``paths`` / ``corpus_path`` (relative to ``root``; every file under a folder). No file is read.
    Embedded: the ``corpus:`` section and the seed, which determine the generated corpus."""
    root = Path(root)
    cfg = params["corpus"]
    source = cfg.get("source", "embedded")
    key: dict = {"source": source, "spec": cfg, "seed": params.get("seed")}
    if source != "embedded":
        key["files"] = [e for p in _input_paths(root, cfg) for e in _stat_entries(root, p)]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return f"{source}:{digest[:16]}"


# ---------------------------------------------------------------- the live index
def reindex(root, params: dict, log: Log = print) -> dict:
    """Bring ``artifacts/live_index`` up to date with the corpus source, using the champion's compressor.

    Only new and changed documents are compressed; deleted ones are dropped; a champion with a different
    compressor than the one the live index was built with rebuilds it in full. Logged to MLflow as a run
    named ``reindex``. Returns {added, updated, removed, unchanged, compressed, full_rebuild, reason,
    champion_version, version, published, count, index_dir, mlflow_run_id, seconds}."""
    from clara_pipeline.index import update_index
    from clara_pipeline.model import ClaraModel

    root = Path(root)
    started = time.perf_counter()
    model_name = params["registry"]["model_name"]
    model_dir, cid, version = champion_compressor(root, model_name)
    documents = load_documents(root, params)
    log(f"reindex: {len(documents)} documents from corpus source {params['corpus'].get('source', 'embedded')!r}; "
        f"champion {model_name} v{version} (compressor {cid})")
    model = ClaraModel.load(model_dir)
    cfg = params["index"]
    index_dir = live_index_dir(root)

    def progress(done, total):
        log(f"reindex: {done}/{total} documents compressed")

    with tracking.stage_run(root, "reindex", {"index": cfg, "corpus": params["corpus"]},
                            tags={"model_version": version, "compressor": cid}) as run:
        result = update_index(model, documents, index_dir, compressor_id=cid, batch_size=cfg["batch_size"],
                              progress=progress, settings=cfg)
        counts = {k: int(result[k]) for k in COUNT_KEYS}
        summary = {**counts, "full_rebuild": bool(result["full_rebuild"]), "reason": result["reason"],
                   "champion_version": version, "compressor": cid, "version": result["version"],
                   "published": bool(result["published"]), "count": int(result["meta"]["count"]),
                   "index_dir": str(index_dir), "seconds": round(time.perf_counter() - started, 3)}
        run.log_metrics({**counts, "full_rebuild": int(summary["full_rebuild"]), "count": summary["count"],
                         "seconds": summary["seconds"]}, prefix="update.")
        run.set_tags({"reindex.reason": result["reason"], "reindex.index_version": result["version"]})
        summary["mlflow_run_id"] = run.run_id
    log(f"reindex: {result['reason']}; " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return summary


# ---------------------------------------------------------------- shards
def shard_rows(count: int, shard: int, num_shards: int) -> np.ndarray:
    """Rows of a ``count``-row document table that belong to ``shard`` of ``num_shards`` (row i -> i % N)."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is not in 0..{num_shards - 1}")
    return np.arange(shard, count, num_shards, dtype=np.int64)


def _table_hash(documents: list[dict]) -> str:
    from clara_pipeline.index import document_hash

    return hashlib.sha256("".join(document_hash(d) for d in documents).encode()).hexdigest()


def compress_shard(model, documents: list[dict], shard: int, num_shards: int, out_dir, *, compressor_id: str,
                   batch_size: int = 64, log: Log = print) -> dict:
    """Compress shard ``shard`` of ``num_shards`` of the document table into ``out_dir/<shard>/``.

    Writes vectors.npy [rows, n_mem, dim] float32, documents.jsonl (id, title, text, row: the document's row
    in the full table) and meta.json (compressor_id, shard, num_shards, corpus hash), atomically (a tmp folder
    renamed into place). A shard already compressed from the same documents with the same compressor is kept
    as it is. Returns {shard, num_shards, count, compressed, skipped, path}."""
    out = Path(out_dir) / str(shard)
    rows = shard_rows(len(documents), shard, num_shards)
    table = [{"id": documents[r]["id"], "title": documents[r].get("title", ""), "text": documents[r]["text"],
              "row": int(r)} for r in rows]
    corpus_hash = _table_hash(documents)
    identity = {"compressor_id": compressor_id, "shard": shard, "num_shards": num_shards,
                "corpus_hash": corpus_hash, "total": len(documents), "count": len(table)}
    meta_path = out / "meta.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if {k: old.get(k) for k in identity} == identity and (out / "vectors.npy").is_file():
            log(f"shard {shard}/{num_shards}: {len(table)} documents already compressed with {compressor_id}")
            return {"shard": shard, "num_shards": num_shards, "count": len(table), "compressed": 0, "skipped": True,
                    "path": str(out)}
    from clara_pipeline.index import _to_numpy  # torch tensor -> float32 numpy, the index's own conversion

    n_mem, dim = int(model.n_mem), int(model.memory_dim)
    vectors = np.zeros((len(table), n_mem, dim), dtype=np.float32)
    for start in range(0, len(table), batch_size):
        part = table[start:start + batch_size]
        got = _to_numpy(model.compress([d["text"] for d in part], batch_size=batch_size))
        if got.shape != (len(part), n_mem, dim):
            raise ValueError(f"compressor returned {got.shape} for {len(part)} documents, "
                             f"expected {(len(part), n_mem, dim)}")
        vectors[start:start + len(part)] = got
        log(f"shard {shard}/{num_shards}: {start + len(part)}/{len(table)} documents compressed")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{shard}."))
    try:
        np.save(tmp / "vectors.npy", vectors)
        write_jsonl(tmp / "documents.jsonl", table)
        (tmp / "meta.json").write_text(json.dumps({**identity, "n_mem": n_mem, "dim": dim,
                                                   "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"shard": shard, "num_shards": num_shards, "count": len(table), "compressed": len(table),
            "skipped": False, "path": str(out)}


class PrecomputedCompressor:
    """Stands in for the model in :func:`update_index`: "compresses" a text by looking up the vectors a shard
    computed for it. Vectors depend on the text alone, so a lookup by text is exact."""

    def __init__(self, n_mem: int, memory_dim: int, by_text: dict[str, np.ndarray]):
        self.n_mem, self.memory_dim, self.by_text = n_mem, memory_dim, by_text

    def compress(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        missing = [t for t in texts if t not in self.by_text]
        if missing:
            raise KeyError(f"{len(missing)} documents have no vectors in any shard (first: {missing[0][:80]!r}); "
                           "rematerialise compressed_shards")
        if not texts:
            return np.zeros((0, self.n_mem, self.memory_dim), np.float32)
        return np.stack([self.by_text[t] for t in texts])


def merge_shards(shards_root, num_shards: int, index_dir, *, settings: dict | None = None, batch_size: int = 64,
                 documents: list[dict] | None = None) -> dict:
    """Merge shards 0..num_shards-1 under ``shards_root`` into the index in ``index_dir``.

    Every shard must come from the same corpus (and, when ``documents`` is given, from exactly that corpus)
    and the same compressor, and together they must cover every row once. The rows keep the table's order, and
    the index is published with :func:`clara_pipeline.index.update_index` (atomic, versioned, incremental:
    rows unchanged since the last merge keep their stored vectors), so the result loads with
    ``CompressedIndex.load`` and equals a single update_index build with the same compressor.
    Returns update_index's counts plus {compressor_id, shards, count}."""
    from clara_pipeline.index import update_index

    shards_root = Path(shards_root)
    metas = []
    for shard in range(num_shards):
        path = shards_root / str(shard) / "meta.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: shard {shard} of {num_shards} has not been compressed; "
                                    "materialise every partition of compressed_shards first")
        metas.append(json.loads(path.read_text()))
    for key in ("compressor_id", "corpus_hash", "total", "num_shards", "n_mem", "dim"):
        values = {str(m.get(key)) for m in metas}
        if len(values) != 1:
            raise ValueError(f"shards disagree on {key} ({sorted(values)}): some are stale; "
                             "rematerialise every partition of compressed_shards")
    first = metas[0]
    if first["num_shards"] != num_shards:
        raise ValueError(f"shards were made for {first['num_shards']} shards, not {num_shards}")
    if documents is not None and _table_hash(documents) != first["corpus_hash"]:
        raise ValueError("the corpus changed since the shards were compressed; rematerialise compressed_shards")
    total = int(first["total"])
    table: list[dict | None] = [None] * total
    by_text: dict[str, np.ndarray] = {}
    for shard in range(num_shards):
        folder = shards_root / str(shard)
        docs = read_jsonl(folder / "documents.jsonl")
        vectors = np.load(folder / "vectors.npy")
        if len(docs) != len(vectors):
            raise ValueError(f"{folder}: {len(docs)} documents but {len(vectors)} vectors")
        for doc, vec in zip(docs, vectors):
            row = int(doc.pop("row"))
            if table[row] is not None:
                raise ValueError(f"row {row} appears in more than one shard")
            table[row] = doc
            by_text[doc["text"]] = vec
    holes = [i for i, d in enumerate(table) if d is None]
    if holes:
        raise ValueError(f"{len(holes)} rows are in no shard (first: {holes[0]})")
    stand_in = PrecomputedCompressor(int(first["n_mem"]), int(first["dim"]), by_text)
    result = update_index(stand_in, table, Path(index_dir), compressor_id=first["compressor_id"],
                          batch_size=batch_size, settings=settings)
    return {**{k: int(result[k]) for k in COUNT_KEYS}, "full_rebuild": bool(result["full_rebuild"]),
            "reason": result["reason"], "version": result["version"], "published": bool(result["published"]),
            "count": total, "shards": num_shards, "compressor_id": first["compressor_id"]}


def pick_device(shard: int) -> str:
    """Where a shard compresses: GPU ``shard % visible GPUs`` when CUDA is available, else the CPU. With one
    process per GPU (CUDA_VISIBLE_DEVICES set per process) every shard lands on that process's GPU."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{shard % torch.cuda.device_count()}"
    return "cpu"
