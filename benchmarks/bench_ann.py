"""Approximate (IVF-PQ, HNSW) vs exact search on a huge synthetic map: time, agreement, memory.

Measures the real path of ``vgssl build-db --index ivfpq|hnsw``: ``mapdb.resolve_index_spec``,
``mapdb.build_ann_index`` and ``mapdb.ApproximateIndex.search`` (IVF-PQ re-ranks its candidates
exactly), against a faiss flat inner-product index (what ``retrieval.ExactIndex`` builds; made
directly here so the 4 GB matrix is not copied once more).

Descriptors have the structure of a mapped route: ``n / 20`` streets, each a centre and 20
consecutive database images that drift from it by a random walk (``--step`` per dimension and
image), all L2-normalised, so neighbouring images look alike (cosine about 0.999); a query is a
random database image seen again (plus noise of norm ``--noise`` on the unit vector). The exact
top-1 then wins by a small margin (a median cosine gap of about 0.001): the near-ties that make
approximate search disagree. Street centres come from a ``--latent``-dimensional space (real
place descriptors have a low intrinsic dimension: streets resemble other streets to varying
degrees); ``--latent 0`` draws them isotropically in all ``dim`` dimensions instead, a worst case
of ``n / 20`` mutually orthogonal clusters that graph search (HNSW) cannot navigate. Reported per
index:

* build time (training + adding), memory (resident-set growth while building, and file size),
* query time: batched (all queries in one call, ms per query) and single (one query per call,
  as the localizer searches a frame; median ms),
* R@1 agreement: the fraction of queries whose approximate top-1 is the exact top-1 (target
  >= 0.95), and how often the exact top-1 is in the approximate top-10.

    python benchmarks/bench_ann.py                       # 1M x 1024 (about 4 GB of descriptors)
    python benchmarks/bench_ann.py --n 100000 --queries 500 --kinds ivfpq
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np

from benchkit import machine  # benchmarks/benchkit.py, next to this script
from vgssl_core.evaluation.search import ApproximateIndex, build_ann_index, resolve_index_spec

CHUNK = 65536


def rss_mb() -> float:
    """Current resident set size of this process (Linux), MB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def structured_map(n: int, dim: int, n_queries: int, *, step: float, noise: float, latent: int = 64,
                   per_street: int = 20, seed: int = 0):
    """(database (n, dim), queries (q, dim), source database row of each query), unit vectors."""
    rng = np.random.default_rng(seed)
    db = np.empty((n, dim), dtype=np.float32)
    mixing = rng.standard_normal((latent, dim), dtype=np.float32) / np.sqrt(latent) if latent else None
    streets = max(CHUNK // per_street, 1)
    for start in range(0, n, streets * per_street):  # in chunks: never a second n x dim temporary
        count = min(streets, -(-(n - start) // per_street))
        if mixing is None:
            centres = rng.standard_normal((count, 1, dim), dtype=np.float32)
        else:
            centres = (rng.standard_normal((count, latent), dtype=np.float32) @ mixing)[:, None, :]
        block = centres + np.cumsum(
            step * rng.standard_normal((count, per_street, dim), dtype=np.float32), axis=1)
        block = block.reshape(-1, dim)[: n - start]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        db[start:start + len(block)] = block
    source = rng.integers(0, n, n_queries)
    q = db[source] + noise / np.sqrt(dim) * rng.standard_normal((n_queries, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return db, np.ascontiguousarray(q), source


def time_search(search, q: np.ndarray, k: int, singles: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(scores, ids, batched ms per query, median single-query ms)."""
    t0 = time.perf_counter()
    scores, ids = search(q, k)
    batched = 1000 * (time.perf_counter() - t0) / len(q)
    single = []
    for i in range(min(singles, len(q))):
        t0 = time.perf_counter()
        search(q[i:i + 1], k)
        single.append(1000 * (time.perf_counter() - t0))
    return scores, ids, batched, float(np.median(single))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="database descriptors")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--singles", type=int, default=30, help="queries timed one by one")
    parser.add_argument("--kinds", default="ivfpq,hnsw")
    parser.add_argument("--nprobe-sweep", default="16,64", help="ivfpq: nprobe values also measured")
    parser.add_argument("--efsearch-sweep", default="128,1024", help="hnsw: ef_search values also measured")
    parser.add_argument("--step", type=float, default=0.05, help="per-dimension drift between consecutive images")
    parser.add_argument("--latent", type=int, default=64,
                        help="intrinsic dimension of the street centres (0: isotropic, the worst case)")
    parser.add_argument("--noise", type=float, default=0.4, help="norm of a query's noise around its source image (unit vectors)")
    parser.add_argument("--out", default="bench_results/ann.json")
    args = parser.parse_args()
    k = 10
    print(f"machine: {machine()}, faiss threads: {faiss.omp_get_max_threads()}")
    t0 = time.perf_counter()
    db, q, source = structured_map(args.n, args.dim, args.queries, step=args.step, noise=args.noise,
                                   latent=args.latent)
    print(f"data: {args.n} x {args.dim} float32 ({db.nbytes / 1e9:.1f} GB) + {args.queries} queries in "
          f"{time.perf_counter() - t0:.1f} s")

    before = rss_mb()
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(args.dim)
    for start in range(0, args.n, CHUNK):
        flat.add(db[start:start + CHUNK])
    exact_build = time.perf_counter() - t0
    exact_mem = rss_mb() - before
    exact_scores, exact_ids, exact_batched, exact_single = time_search(flat.search, q, k, args.singles)
    del flat
    gap = exact_scores[:, 0] - exact_scores[:, 1]
    exact = {"build_s": round(exact_build, 3), "batch_ms_per_query": round(exact_batched, 4),
             "single_ms_median": round(exact_single, 3), "memory_mb": round(exact_mem, 1),
             "top1_is_source": float(np.mean(exact_ids[:, 0] == source)),
             "median_top1_top2_gap": float(np.median(gap)), "share_gap_below_0.001": float(np.mean(gap < 1e-3))}
    print(f"exact: build {exact_build:.1f} s, {exact_batched:.3f} ms/query batched, {exact_single:.1f} ms single, "
          f"{exact_mem:.0f} MB; median cosine gap top-1/top-2 {exact['median_top1_top2_gap']:.4f}")

    rows = []
    for kind in [s.strip() for s in args.kinds.split(",") if s.strip()]:
        spec = resolve_index_spec(kind, {}, n=args.n, dim=args.dim)
        before = rss_mb()
        t0 = time.perf_counter()
        index = build_ann_index(db, spec)
        build = time.perf_counter() - t0
        mem = rss_mb() - before
        file_mb = None
        if kind != "hnsw":  # an HNSW file is the whole matrix again: not written here
            with tempfile.TemporaryDirectory() as tmp:
                faiss.write_index(index, str(Path(tmp) / "index.faiss"))
                file_mb = round((Path(tmp) / "index.faiss").stat().st_size / 1e6, 1)
        # the defaults first (the row summary.py reads), then search-time variants on the same index
        key = {"ivfpq": "nprobe", "hnsw": "ef_search"}[kind]
        sweep = [int(v) for v in getattr(args, f"{key.replace('_', '')}_sweep").split(",") if v.strip()]
        for value in [spec[key]] + [v for v in sweep if v != spec[key]]:
            params = {**spec, key: value}
            ann = ApproximateIndex(index, db, "ip", params)
            _, ids, batched, single = time_search(ann.search, q, k, args.singles)
            row = {"index": kind, "default": value == spec[key], "params": {p: v for p, v in params.items() if p != "type"},
                   "build_s": round(build, 3), "batch_ms_per_query": round(batched, 4),
                   "single_ms_median": round(single, 3), "memory_mb": round(mem, 1), "file_mb": file_mb,
                   "speedup_batch": round(exact_batched / batched, 2),
                   "speedup_single": round(exact_single / single, 2),
                   "query_time_ratio": round(single / exact_single, 4),
                   "r1_agreement": float(np.mean(ids[:, 0] == exact_ids[:, 0])),
                   "exact_top1_in_top10": float(np.mean([e in r for e, r in zip(exact_ids[:, 0], ids)]))}
            rows.append(row)
            print(f"{kind} ({key} {value}): build {build:.1f} s, {batched:.3f} ms/query batched "
                  f"({row['speedup_batch']}x), {single:.2f} ms single ({row['speedup_single']}x), "
                  f"R@1 agreement {row['r1_agreement']:.3f}, {mem:.0f} MB", flush=True)
        del index, ann

    print()
    print(f"| index | build (s) | batched ms/query | single ms/query | speed-up (single) | R@1 agreement | memory (MB) |")
    print("|:--|--:|--:|--:|--:|--:|--:|")
    print(f"| exact (flat) | {exact['build_s']} | {exact['batch_ms_per_query']} | {exact['single_ms_median']} | 1 | 1 "
          f"| {exact['memory_mb']} |")
    for r in rows:
        print(f"| {r['index']} {r['params']} | {r['build_s']} | {r['batch_ms_per_query']} | {r['single_ms_median']} "
              f"| {r['speedup_single']} | {r['r1_agreement']:.3f} | {r['memory_mb']} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "ann", "machine": machine(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "faiss_threads": faiss.omp_get_max_threads(), "n_database": args.n, "dim": args.dim,
               "n_queries": args.queries, "k": k,
               "data": {"kind": "streets of 20 images drifting by a random walk, unit vectors",
                        "streets": -(-args.n // 20), "step": args.step, "query_noise": args.noise,
                        "latent_dim": args.latent},
               "exact": exact, "approximate": rows}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
