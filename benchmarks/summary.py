"""One table of the ratios vgssl promises, from the JSON every benchmark writes to bench_results/.

    python benchmarks/summary.py [--results bench_results]

A benchmark whose JSON is missing shows "not run"; a file without a key below shows which key
is missing. Always exits 0: it reports, it does not gate.

What each benchmark must write (top-level keys; times in the unit the name says; every file
also has ``"machine"``, a string naming the computer, e.g. "host (CPU model, 16 CPUs)"):

``training.json`` (benchmarks/bench_training.py)
    ``pipeline_step_ms``    median wall time of one optimiser step through vgssl's training
                            pipeline (data loading, augmentation, GeoPair batch, forward,
                            backward, step: what ``vgssl train`` runs)
    ``model_step_ms``       median time of the same step on pre-made tensors in a plain torch loop
                            (model + loss + optimiser only, same batch, model and device)
                            -> promise: pipeline_step_ms / model_step_ms <= 1.25
    ``geopair_prep_s``, ``geopair_peak_mb``
                            time and peak memory (MB) of preparing one epoch of GeoPairs
    ``mining_partial_s``, ``mining_partial_peak_mb``
                            the same for one epoch of partial hard-negative mining
    ``mining_full_s``, ``mining_full_peak_mb``
                            the same for full hard-negative mining
                            -> promise: each mining time and peak memory >= 10 x the GeoPair one

``localizer.json`` (benchmarks/bench_localizer.py)
    ``end_to_end_ms``       median latency of one frame through ``Localizer.localize`` (RGB array
                            in, fix out: preprocess, model, search, fix)
    ``model_ms``            median time of the model forward alone on the same preprocessed frame
    ``search_ms``           median time of ``MapDatabase.search`` alone for the same descriptor
                            -> promise: end_to_end_ms / (model_ms + search_ms) <= 1.2

``replay.json`` (benchmarks/bench_replay.py)
    ``without_fusion_s``    wall time of replaying the bag with plain per-frame localization
    ``with_fusion_s``       the same bag with fusion turned on
                            -> promise: with_fusion_s / without_fusion_s <= 1.10

``ann.json`` (benchmarks/bench_ann.py)
    ``n_database``, ``dim``, ``exact`` {``single_ms_median``, ``batch_ms_per_query``},
    ``approximate``: list of {``index`` ("ivfpq" | "hnsw"), ``default`` (true for the row measured
    with vgssl's default search parameters; other rows are sweeps), ``single_ms_median``,
    ``query_time_ratio`` (approximate / exact single-query time), ``r1_agreement``}
                            -> promise at 1M x 1024: r1_agreement >= 0.95 (and faster than exact)

``retrieval.json`` (benchmarks/bench_retrieval.py): shown for information (exact search time
at its largest size); it carries no promise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any, Callable

NOT_RUN = "not run"


def this_machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.node()} ({cpu}, {os.cpu_count()} CPUs)"


class MissingKey(Exception):
    pass


def need(data: dict[str, Any], *keys: str) -> list[float]:
    values = []
    for key in keys:
        if key not in data or data[key] is None:
            raise MissingKey(key)
        values.append(float(data[key]))
    return values


# (benchmark file, promise, how to measure it from the JSON -> (value, shown text), target text, passes?)
Check = tuple[str, str, Callable[[dict], float], str, Callable[[float], bool], str]


def _ratio(num: str, den: str) -> Callable[[dict], float]:
    def compute(d: dict) -> float:
        a, b = need(d, num, den)
        return a / b

    return compute


def _ann_row(kind: str, key: str) -> Callable[[dict], float]:
    def compute(d: dict) -> float:
        rows = [r for r in d.get("approximate", []) if r.get("index") == kind]
        rows.sort(key=lambda r: not r.get("default", True))  # the index's default parameters first
        if not rows:
            raise MissingKey(f"approximate[index={kind}]")
        return need(rows[0], key)[0]

    return compute


CHECKS: list[Check] = [
    ("training", "training: pipeline step / model-only step", _ratio("pipeline_step_ms", "model_step_ms"),
     "<= 1.25", lambda v: v <= 1.25, "{:.2f}"),
    ("training", "GeoPairs vs partial mining: time (x cheaper)", _ratio("mining_partial_s", "geopair_prep_s"),
     ">= 10", lambda v: v >= 10, "{:.1f}x"),
    ("training", "GeoPairs vs partial mining: peak memory (x less)",
     _ratio("mining_partial_peak_mb", "geopair_peak_mb"), ">= 10", lambda v: v >= 10, "{:.1f}x"),
    ("training", "GeoPairs vs full mining: time (x cheaper)", _ratio("mining_full_s", "geopair_prep_s"),
     ">= 10", lambda v: v >= 10, "{:.1f}x"),
    ("training", "GeoPairs vs full mining: peak memory (x less)", _ratio("mining_full_peak_mb", "geopair_peak_mb"),
     ">= 10", lambda v: v >= 10, "{:.1f}x"),
    ("localizer", "localizer: end-to-end / (model + search)",
     lambda d: need(d, "end_to_end_ms")[0] / sum(need(d, "model_ms", "search_ms")), "<= 1.2",
     lambda v: v <= 1.2, "{:.2f}"),
    ("replay", "replay: with fusion / without (overhead)", _ratio("with_fusion_s", "without_fusion_s"),
     "<= 1.10", lambda v: v <= 1.10, "{:.3f}"),
    ("ann", "ANN ivfpq: query time / exact (single query)", _ann_row("ivfpq", "query_time_ratio"),
     "< 1", lambda v: v < 1, "{:.4f}"),
    ("ann", "ANN ivfpq: R@1 agreement with exact", _ann_row("ivfpq", "r1_agreement"),
     ">= 0.95", lambda v: v >= 0.95, "{:.3f}"),
    ("ann", "ANN hnsw: query time / exact (single query)", _ann_row("hnsw", "query_time_ratio"),
     "< 1", lambda v: v < 1, "{:.4f}"),
    ("ann", "ANN hnsw: R@1 agreement with exact", _ann_row("hnsw", "r1_agreement"),
     ">= 0.95", lambda v: v >= 0.95, "{:.3f}"),
]


def load(folder: Path, name: str) -> dict[str, Any] | None | str:
    """The benchmark's JSON, None when it has not run, or a line saying why it is unreadable."""
    path = folder / f"{name}.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc})"
    return data if isinstance(data, dict) else "unreadable (not a JSON object)"


def rows(folder: Path) -> tuple[list[list[str]], dict[str, str]]:
    table, machines = [], {}
    loaded = {name: load(folder, name) for name in ("training", "localizer", "replay", "ann", "retrieval")}
    for name, data in loaded.items():
        if isinstance(data, dict) and data.get("machine"):
            machines[name] = str(data["machine"])
    for name, promise, compute, target, passes, fmt in CHECKS:
        data = loaded[name]
        source = f"{name}.json"
        if data is None:
            table.append([promise, NOT_RUN, target, NOT_RUN, source])
            continue
        if isinstance(data, str):
            table.append([promise, "-", target, data, source])
            continue
        try:
            value = compute(data)
        except MissingKey as exc:
            table.append([promise, "-", target, f"missing key '{exc}'", source])
            continue
        except (ZeroDivisionError, TypeError, ValueError) as exc:
            table.append([promise, "-", target, f"bad value ({exc})", source])
            continue
        where = ""
        if name == "ann":
            n, dim = data.get("n_database"), data.get("dim")
            where = "" if (n, dim) == (1_000_000, 1024) else f" (at {n} x {dim}, not 1M x 1024)"
        table.append([promise, fmt.format(value), target, ("PASS" if passes(value) else "FAIL") + where, source])
    retrieval = loaded["retrieval"]
    if isinstance(retrieval, dict) and retrieval.get("rows"):
        biggest = max(retrieval["rows"], key=lambda r: (r.get("n_database", 0), r.get("dim", 0)))
        table.append([f"exact search, {biggest.get('n_database')} x {biggest.get('dim')} (info)",
                      f"{biggest.get('search_ms_per_query')} ms/query", "-", "info", "retrieval.json"])
    else:
        table.append(["exact search (info)", NOT_RUN if retrieval is None else "-", "-",
                      NOT_RUN if retrieval is None else "no rows", "retrieval.json"])
    return table, machines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="bench_results", help="folder with the benchmarks' JSON files")
    args = parser.parse_args()
    table, machines = rows(Path(args.results))
    print(f"machine: {this_machine()}")
    for name, text in machines.items():
        if text != this_machine():
            print(f"  {name}.json was measured on: {text}")
    header = ["promise", "measured", "target", "status", "from"]
    widths = [max(len(str(r[i])) for r in table + [header]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in table:
        print(line(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
