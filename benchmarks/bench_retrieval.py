"""Exact search + Recall@N at growing database sizes (synthetic descriptors).

Measures the real path of ``vgssl eval``/``build-db``: ``retrieval.ExactIndex`` (faiss flat,
inner product on L2-normalised descriptors) and ``retrieval.recall_at_n`` with ground truth
from ``retrieval.ground_truth``. Descriptors are random with a weak dependence on position so
recall is neither 0 nor 100; the numbers that matter are the times and the memory.

    python benchmarks/bench_retrieval.py [--sizes 10000,100000,1000000] [--dims 256,2048] [--queries 1000]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
from benchkit import machine  # benchmarks/benchkit.py, next to this script

from vgssl_core.evaluation.search import ExactIndex
from vgssl_core.evaluation.recall import ground_truth, recall_at_n


def synthetic(n: int, dim: int, rng: np.random.Generator, extent_m: float) -> tuple[np.ndarray, np.ndarray]:
    utm = rng.uniform(0, extent_m, (n, 2))
    desc = rng.standard_normal((n, dim), dtype=np.float32)
    # a weak positional signal in the first dimensions
    desc[:, :2] += (utm / extent_m * 4).astype(np.float32)
    return desc, utm


def run(n_db: int, dim: int, n_q: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    extent = float(np.sqrt(n_db) * 10)  # about one database image per 100 m^2, like a dense city
    db, db_utm = synthetic(n_db, dim, rng, extent)
    q, q_utm = synthetic(n_q, dim, rng, extent)
    t0 = time.perf_counter()
    index = ExactIndex(db, "ip")
    t1 = time.perf_counter()
    _, pred = index.search(q, 20)
    t2 = time.perf_counter()
    positives = ground_truth(db_utm, q_utm, 25.0)
    recall = recall_at_n(pred, positives, (1, 5, 10, 20))
    t3 = time.perf_counter()
    return {
        "n_database": n_db, "dim": dim, "n_queries": n_q,
        "index_build_s": round(t1 - t0, 4), "search_s": round(t2 - t1, 4),
        "search_ms_per_query": round(1000 * (t2 - t1) / n_q, 4), "recall_s": round(t3 - t2, 4),
        "index_gb": round(db.nbytes / 1e9, 3), "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3),
        "recall": recall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dims", default="256,2048")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--out", default="bench_results/retrieval.json")
    args = parser.parse_args()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        for d in (int(s) for s in args.dims.split(",")):
            if n * d * 4 > 9e9:  # keep within this machine's memory with room for the copy faiss makes
                print(f"skip {n} x {d}: {n * d * 4 / 1e9:.1f} GB of descriptors")
                continue
            rows.append(run(n, d, args.queries))
            r = rows[-1]
            print(f"db {n:>8} dim {d:>5}: build {r['index_build_s']:7.3f} s  search {r['search_ms_per_query']:8.3f} ms/query"
                  f"  recall {r['recall_s']:6.3f} s  R@1 {r['recall'][1]:5.1f}  index {r['index_gb']:.2f} GB")
    print()
    print("| database | dim | build (s) | search (ms/query) | Recall@N (s) | index (GB) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n_database']} | {r['dim']} | {r['index_build_s']} | {r['search_ms_per_query']} | {r['recall_s']} | {r['index_gb']} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
