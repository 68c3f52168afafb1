"""Benchmark the compressed index's faiss types on synthetic vectors: build time, single-query latency, recall.

For each corpus size and each index type (flat, ivf, hnsw, pq) this builds the index exactly as the
pipeline does (``clara_pipeline.index.build_faiss_index``: L2-normalised rows, seeded training sample,
fallback rules) and searches it through ``CompressedIndex.search``, one query at a time, as serving does.
It prints a Markdown table: build seconds, p50/p99 latency per single query in milliseconds, recall@10
against exact (flat) search, and the serialised index size. Settings that apply at search time (hnsw's
ef_search, ivf/pq's nprobe, pq's rerank) are also swept on the same build (rows marked "same build"), so
the table shows what raising them buys without rebuilding (``index.ef_search`` etc. in params.yaml, or
``CompressedIndex.set_search_params``).

The vectors are a seeded gaussian mixture (``--clusters`` centres, unit-variance spread around each), not
uniform noise: real document embeddings cluster by topic, and on structureless noise ivf and pq recall
says little. Queries are fresh draws from the same mixture.

``--dim`` is the *flattened* dimension (n_mem x hidden size). The pipeline's embedded default is 8 x 256 =
2048, but 1M x 2048 float32 is 8 GB and hours of hnsw building on two cores, so the default is 256
(1M x 256 float32 = 1 GB); pass ``--dim 2048`` with smaller ``--sizes`` to see the pipeline's real width.

    python benchmarks/index_search.py --quick            # 100k vectors only
    python benchmarks/index_search.py                    # 100k and 1M
    python benchmarks/index_search.py --sizes 20000 --dim 2048 --types flat hnsw
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from clara_pipeline.index import CompressedIndex, IndexSettings, build_faiss_index  # noqa: E402

TYPES = ("flat", "ivf", "hnsw", "pq")


def mixture(rng: np.random.Generator, centres: np.ndarray, count: int, spread: float) -> np.ndarray:
    """``count`` points, each a random centre plus gaussian noise; generated in chunks to bound memory."""
    out = np.empty((count, centres.shape[1]), dtype=np.float32)
    for start in range(0, count, 100_000):
        n = min(100_000, count - start)
        out[start:start + n] = centres[rng.integers(len(centres), size=n)]
        out[start:start + n] += spread * rng.standard_normal((n, centres.shape[1]), dtype=np.float32)
    return out


def describe(plan: dict) -> str:
    """The settings that matter for a row of the table."""
    if plan["type"] == "flat":
        return "exact" + (f" (fallback: {plan['fallback_reason']})" if "fallback_reason" in plan else "")
    keys = {"ivf": ("nlist", "nprobe"), "hnsw": ("hnsw_m", "ef_construction", "ef_search"),
            "pq": ("nlist", "nprobe", "pq_m", "pq_nbits", "rerank")}[plan["type"]]
    if "train_size" in plan:
        keys += ("train_size",)
    return ", ".join(f"{k}={plan[k]}" for k in keys if k in plan)


def run_one(data: np.ndarray, queries: np.ndarray, exact_rows: np.ndarray, settings: IndexSettings, k: int,
            search_threads: int, variants: list[dict] | None = None) -> list[dict]:
    """Build once; time the plan's own search settings, then each of `variants` (search-time settings such
    as {"ef_search": 256} or {"nprobe": 64, "rerank": 32}) on the same index. One row each."""
    started = time.perf_counter()
    index, plan = build_faiss_index(data, settings)
    build_s = time.perf_counter() - started
    # Searched through the pipeline's own reader so the timing includes what serving does per query
    # (normalising the query, hnsw's beam >= k, ivf's refill of short result lists, pq's exact re-ranking
    # from the stored vectors, which here are in memory rather than a memory-mapped vectors.npy).
    reader = CompressedIndex(Path("<memory>"), index, data[:, None, :], [], {"index": plan})
    size_mb = faiss.serialize_index(index).nbytes / 2**20
    rows = []
    for variant in [{}] + list(variants or []):
        searched = {**plan, **variant}
        reader.set_search_params(nprobe=searched.get("nprobe"), ef_search=searched.get("ef_search"),
                                 rerank=searched.get("rerank"))
        row = _time_search(reader, queries, exact_rows, k, search_threads)
        rows.append({"type": plan["type"], "settings": describe(searched) + (" (same build)" if variant else ""),
                     "build_s": build_s if not variant else None, **row, "index_mb": size_mb})
    return rows


def _time_search(reader: CompressedIndex, queries: np.ndarray, exact_rows: np.ndarray, k: int,
                 search_threads: int) -> dict:
    one = queries[:, None, :]  # [Q, n_mem=1, dim]: search() flattens anyway
    build_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(search_threads)
    try:
        reader.search(one[:5], k)  # warm-up: first-touch page faults and thread start-up
        latencies, rows = [], []
        for q in one:
            t = time.perf_counter()
            _, found = reader.search(q[None], k)
            latencies.append((time.perf_counter() - t) * 1000)
            rows.append(found[0])
    finally:
        faiss.omp_set_num_threads(build_threads)
    rows = np.stack(rows)
    recall = float(np.mean([len(set(a) & set(e)) / k for a, e in zip(rows, exact_rows)]))
    return {"p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)),
            f"recall@{k}": recall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="corpus sizes")
    parser.add_argument("--quick", action="store_true", help="100k vectors only")
    parser.add_argument("--dim", type=int, default=256, help="flattened dimension (n_mem x hidden); default 256")
    parser.add_argument("--types", nargs="+", choices=TYPES, default=list(TYPES))
    parser.add_argument("--clusters", type=int, default=1000, help="gaussian mixture components")
    parser.add_argument("--spread", type=float, default=1.0, help="noise std around a centre (centres are N(0, 1))")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads for building; 0 = faiss's default")
    # One query is too little work to share between OpenMP threads: on a busy machine the threads wait for
    # each other (2 threads took 16 ms per 20k-vector flat query where 1 took 0.6 ms). A server gets its
    # parallelism from concurrent requests instead.
    parser.add_argument("--search-threads", type=int, default=1, help="faiss OpenMP threads while timing queries")
    parser.add_argument("--nlist", type=int, default=0, help="ivf/pq lists; 0 = round(sqrt(N)) as in the pipeline")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=IndexSettings().ef_construction)
    parser.add_argument("--ef-search", type=int, default=IndexSettings().ef_search)
    parser.add_argument("--pq-m", type=int, default=0, help="0 = largest divisor of dim <= dim/8 (32 for 256)")
    parser.add_argument("--pq-nbits", type=int, default=8)
    parser.add_argument("--pq-rerank", type=int, nargs="+", default=[1, IndexSettings().pq_rerank],
                        help="pq rows: candidates per result re-scored exactly (1 = pq codes alone)")
    parser.add_argument("--sweep-ef-search", type=int, nargs="*", default=[16, 32, 128],
                        help="hnsw: also search the same build with these beams (search-time setting)")
    parser.add_argument("--sweep-nprobe", type=int, nargs="*", default=[64],
                        help="ivf and pq: also search the same build probing these many lists")
    parser.add_argument("--sweep-pq-rerank", type=int, nargs="*", default=[8, 16, 64],
                        help="pq with rerank > 1: also search the same build re-scoring these many candidates per "
                             "result")
    parser.add_argument("--train-size", type=int, default=50_000, help="ivf/pq training sample (seeded)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    sizes = [100_000] if args.quick else args.sizes
    if args.threads:
        faiss.omp_set_num_threads(args.threads)

    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
    queries = mixture(rng, centres, args.queries, args.spread)
    results = []
    for size in sizes:
        data = mixture(np.random.default_rng([args.seed, size]), centres, size, args.spread)
        exact = CompressedIndex(Path("<memory>"), build_faiss_index(data, IndexSettings())[0], np.empty((0,)), [], {})
        exact_rows = exact.search(queries[:, None, :], args.k)[1]
        del exact
        runs = [(kind, 1) for kind in args.types if kind != "pq"]
        runs += [("pq", rerank) for rerank in args.pq_rerank] if "pq" in args.types else []
        for kind, rerank in runs:
            settings = IndexSettings(type=kind, nlist=args.nlist, nprobe=args.nprobe, hnsw_m=args.hnsw_m,
                                     ef_construction=args.ef_construction, ef_search=args.ef_search,
                                     pq_m=args.pq_m, pq_nbits=args.pq_nbits, pq_rerank=rerank,
                                     train_size=args.train_size, seed=args.seed)
            variants = [{"ef_search": ef} for ef in args.sweep_ef_search] if kind == "hnsw" else []
            variants += [{"nprobe": n} for n in args.sweep_nprobe] if kind in ("ivf", "pq") else []
            variants += [{"rerank": r} for r in args.sweep_pq_rerank] if kind == "pq" and rerank > 1 else []
            print(f"[{size} x {args.dim}] building {kind} ...", file=sys.stderr, flush=True)
            for row in run_one(data, queries, exact_rows, settings, args.k, args.search_threads, variants):
                row = {"vectors": size, **row}
                print(f"[{size} x {args.dim}] {kind} {row['settings']}: p50 {row['p50_ms']:.2f}ms, "
                      f"recall {row[f'recall@{args.k}']:.3f}", file=sys.stderr, flush=True)
                results.append(row)
        del data

    print(f"Compressed-index search, {args.dim}-d L2-normalised vectors (gaussian mixture, {args.clusters} "
          f"clusters, spread {args.spread}), {args.queries} single queries, faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} build threads, {args.search_threads} search thread(s)\n")
    print(f"| vectors | type | settings | build s | p50 ms | p99 ms | recall@{args.k} vs flat | index MB |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        build = "" if r["build_s"] is None else f"{r['build_s']:.1f}"
        print(f"| {r['vectors']:,} | {r['type']} | {r['settings']} | {build} | {r['p50_ms']:.2f} | "
              f"{r['p99_ms']:.2f} | {r[f'recall@{args.k}']:.3f} | {r['index_mb']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
