"""One table of the ratios vgssl promises, from the JSON every benchmark writes to bench_results/.

    python benchmarks/summary.py [--results bench_results]

A benchmark whose JSON is missing shows "not run"; a file without a key below shows which key
is missing. Always exits 0: it reports, it does not gate.

The keys read from each file (dotted paths into its JSON object; every file also has
``"machine"``, a string naming the computer it ran on). Each benchmark computes its own ratio,
as its docstring defines it; this table only gathers them against the promised targets:

``training.json`` (benchmarks/bench_training.py)
    ``step.ratio``                      pipeline step / model-only step (median times)    <= 1.25
    ``preparation.time_ratio_partial``  partial mining / GeoPair preparation, time        >= 10
    ``preparation.memory_ratio_partial``  ... peak memory                                 >= 10
    ``preparation.time_ratio_full``     full mining / GeoPair preparation, time           >= 10
    ``preparation.memory_ratio_full``   ... peak memory                                   >= 10

``localizer.json`` (benchmarks/bench_localizer.py)
    ``ratio_p50``                       localizer end to end / model + search (median)    <= 1.2

``replay.json`` (benchmarks/bench_replay.py)
    ``rows[].ratio_p50``, ``rows[].ratio_p95``   (latency + fusion) / latency per replayed
                                        look (``rows[].condition``); the worst look shown   <= 1.10

``ann.json`` (benchmarks/bench_ann.py)
    ``n_database``, ``dim`` (the promise is at 1M x 1024), ``approximate[]``: rows with ``index``
    ("ivfpq" | "hnsw"), ``default`` (true: vgssl's default search parameters; other rows are
    sweeps, not read here), ``query_time_ratio`` (approximate / exact single-query time, < 1) and
    ``r1_agreement`` (share of queries whose approximate top-1 is the exact top-1)     >= 0.95

``retrieval.json`` (benchmarks/bench_retrieval.py): ``rows[].search_ms_per_query`` at the
largest ``n_database`` x ``dim``, for information (no promise).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

from benchkit import machine  # benchmarks/benchkit.py, next to this script

NOT_RUN = "not run"


class MissingKey(Exception):
    pass


def get(data: Any, path: str) -> float:
    """The number at a dotted ``path`` (``step.ratio``) of a benchmark's JSON."""
    node = data
    for part in path.split("."):
        if not isinstance(node, dict) or node.get(part) is None:
            raise MissingKey(path)
        node = node[part]
    return float(node)


def _key(path: str) -> Callable[[dict], float]:
    return lambda d: get(d, path)


def _worst_row(path: str) -> Callable[[dict], float]:
    """The largest value of ``rows[].<path>`` (the worst replayed look)."""

    def compute(d: dict) -> float:
        rows = d.get("rows") or []
        if not rows:
            raise MissingKey(f"rows[].{path}")
        return max(get(r, path) for r in rows)

    return compute


def _ann_row(kind: str, key: str) -> Callable[[dict], float]:
    def compute(d: dict) -> float:
        rows = [r for r in d.get("approximate", []) if r.get("index") == kind]
        rows.sort(key=lambda r: not r.get("default", True))  # the index's default parameters first
        if not rows:
            raise MissingKey(f"approximate[index={kind}]")
        return get(rows[0], key)

    return compute


# (benchmark, promise, value from its JSON, target text, passes?, format)
Check = tuple[str, str, Callable[[dict], float], str, Callable[[float], bool], str]
CHECKS: list[Check] = [
    ("training", "training: pipeline step / model-only step", _key("step.ratio"),
     "<= 1.25", lambda v: v <= 1.25, "{:.2f}"),
    ("training", "GeoPairs vs partial mining: time (x cheaper)", _key("preparation.time_ratio_partial"),
     ">= 10", lambda v: v >= 10, "{:.0f}x"),
    ("training", "GeoPairs vs partial mining: peak memory (x less)", _key("preparation.memory_ratio_partial"),
     ">= 10", lambda v: v >= 10, "{:.0f}x"),
    ("training", "GeoPairs vs full mining: time (x cheaper)", _key("preparation.time_ratio_full"),
     ">= 10", lambda v: v >= 10, "{:.0f}x"),
    ("training", "GeoPairs vs full mining: peak memory (x less)", _key("preparation.memory_ratio_full"),
     ">= 10", lambda v: v >= 10, "{:.0f}x"),
    ("localizer", "localizer: end-to-end / (model + search), median", _key("ratio_p50"),
     "<= 1.2", lambda v: v <= 1.2, "{:.3f}"),
    ("replay", "replay: fusion overhead, median (worst look)", _worst_row("ratio_p50"),
     "<= 1.10", lambda v: v <= 1.10, "{:.4f}"),
    ("replay", "replay: fusion overhead, p95 (worst look)", _worst_row("ratio_p95"),
     "<= 1.10", lambda v: v <= 1.10, "{:.4f}"),
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
    print(f"machine: {machine()}")
    for name, text in machines.items():
        if text != machine():
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
