"""``vgssl table``: the paper's results table from a grid of runs (strategies x datasets x seeds).

A *run* is a folder written by ``vgssl train``: ``config.json``, checkpoints, and ``test.json``
(Recall@N on the test split, the ``vgssl eval`` JSON) once it finished; optionally
``attention.json`` (the geo-relevance of its Grad-CAM, ``attention.geo_relevance``). The grid
trains into ``OUT/runs/<dataset>/<strategy>/seed<k>/`` and skips every run that already has
its ``test.json`` (an interrupted run resumes from its ``last.ckpt``), so re-running a grid
only does what is missing. ``collect_runs`` reads existing run folders instead.

The table has one row per strategy, grouped by category as in VG-SSL (contrastive,
self-distillation, information maximization, then the supervised baseline), and R@1/5/10 per
dataset, plus the attention shares (geo %, geo lift, transient %) where runs have them; several
seeds give mean ± sample standard deviation. ``starting_points`` adds, first, the untrained model
of each backbone and initialisation in the grid, so the table shows what training added. In each
column the best value is bold and the second best underlined (compared as displayed; for
transient % the lowest is best)::

    runs = run_grid(["demo-simclr", "demo-byol"], ["worlds/demo"], seeds=[0, 1], out=Path("runs/table"))
    table = build_table(runs)
    print(to_markdown(table)); Path("table.csv").write_text(to_csv(table))
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vgssl_core.training.config import resolve_preset
from vgssl_core.errors import VgsslError

# method -> category, in the paper's order
CATEGORIES: dict[str, str] = {
    "simclr": "contrastive",
    "mocov2": "contrastive",
    "byol": "self-distillation",
    "simsiam": "self-distillation",
    "barlow_twins": "information maximization",
    "vicreg": "information maximization",
    "triplet": "supervised",
    "untrained": "no training",
}
CATEGORY_ORDER = ("no training", "contrastive", "self-distillation", "information maximization", "supervised", "other")
METHOD_LABELS = {"simclr": "SimCLR", "mocov2": "MoCo v2", "byol": "BYOL", "simsiam": "SimSiam",
                 "barlow_twins": "BT", "vicreg": "VICReg", "triplet": "Triplet", "untrained": "Untrained"}
DEMO_PRESETS = ("demo-simclr", "demo-mocov2", "demo-byol", "demo-simsiam", "demo-bt", "demo-vicreg", "demo-triplet")
DEFAULT_NS = ("1", "5", "10")


# --- runs ------------------------------------------------------------------------------------
@dataclass
class Run:
    """One finished training run, as the table sees it."""

    path: Path
    strategy: str  # the preset's name, e.g. arxiv-simclr-fc-1-2048-1
    method: str
    label: str  # the table's method column, e.g. "Triplet (partial mining)"
    category: str
    dataset: str  # the dataset folder's name
    data_root: str
    split: str
    seed: int | None
    recall: dict[str, float]
    attention: dict[str, Any] | None = None
    init: str = "unrecorded"  # the initial weights (init_label of test.json's "init")


def init_label(init: dict[str, Any] | None) -> str:
    """A run's initial weights in a table cell: random, imagenet, file <sha256[:8]>, unrecorded."""
    if not isinstance(init, dict) or "init" not in init:
        return "unrecorded"
    if init["init"] == "file":
        return f"file {str(init.get('sha256') or '?')[:8]}"
    return str(init["init"])


def method_label(cfg: dict[str, Any]) -> str:
    method = cfg.get("method", "?")
    label = METHOD_LABELS.get(method, method)
    if method == "triplet":
        label += f" ({(cfg.get('mining') or {}).get('mode', '?')} mining)"
    if method == "untrained":
        model = cfg.get("model") or {}
        label += f" ({model.get('backbone', '?')} {model.get('layer', '?')}, starting point)"
    return label


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise VgsslError(f"{path}: unreadable JSON ({exc})") from None


def read_run(run_dir: str | Path) -> Run:
    """A finished run folder (with ``test.json``) as a ``Run``; ``VgsslError`` if it is not one."""
    run_dir = Path(run_dir)
    if not (run_dir / "test.json").is_file():
        raise VgsslError(f"{run_dir}: not a finished run (no test.json); train it with 'vgssl train'")
    test = _read_json(run_dir / "test.json")
    cfg = _read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
    if not isinstance(test, dict) or not isinstance(test.get("recall"), dict):
        raise VgsslError(f"{run_dir / 'test.json'}: no 'recall' in it; not a vgssl eval report")
    attention = None
    if (run_dir / "attention.json").is_file():
        attention = _read_json(run_dir / "attention.json")
    try:  # hand-edited files: a wrong type is named here, not a traceback in the table
        if not isinstance(cfg, dict) or not isinstance(cfg.get("trainer") or {}, dict):
            raise TypeError("config.json is not a mapping of sections")
        if attention is not None and not (isinstance(attention, dict) and all(
                attention.get(k) is None or isinstance(attention[k], (int, float))
                for k in ("geo_share", "geo_lift", "transient_share"))):
            raise TypeError("attention.json: geo_share / geo_lift / transient_share must be numbers")
        method = str(cfg.get("method") or "unknown")
        data_root = str(test.get("data", ""))
        seed = (cfg.get("trainer") or {}).get("seed")
        return Run(path=run_dir, strategy=str(cfg.get("name") or method), method=method, label=method_label(cfg),
                   category=CATEGORIES.get(method, "other"), dataset=Path(data_root).name or "?",
                   data_root=data_root, split=str(test.get("split", "test")),
                   seed=None if seed is None else _whole(seed),
                   recall={str(k): float(v) for k, v in test["recall"].items()}, attention=attention,
                   init=init_label(test.get("init")))
    except (TypeError, ValueError) as exc:
        raise VgsslError(f"{run_dir}: run files with wrong types ({exc}); restore them or train the run again") from None


def _whole(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ValueError(f"seed must be a whole number, got {value!r}")
    return int(value)


def collect_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Every finished run in ``paths``: run folders themselves, or folders holding them (searched).

    A run reached twice (a folder and a folder holding it) counts once.
    """
    runs: list[Run] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise VgsslError(f"{p}: no such run folder")
        found = [p] if (p / "test.json").is_file() else sorted(t.parent for t in p.rglob("test.json"))
        if not found:
            raise VgsslError(f"{p}: no finished runs (no test.json) in it")
        for d in found:
            if d.resolve() not in seen:
                seen.add(d.resolve())
                runs.append(read_run(d))
    return runs


def run_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a run was tested with: best.ckpt (by validation R@5) else last.ckpt."""
    for name in ("best.ckpt", "last.ckpt"):
        if (run_dir / name).is_file():
            return run_dir / name
    raise VgsslError(f"{run_dir}: no best.ckpt or last.ckpt in this folder; is it a 'vgssl train' run folder?")


# --- the grid --------------------------------------------------------------------------------
def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


# where and how fast a run trains, not what it learns: a reused run may differ in these
RUNTIME_KEYS = ("trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy",
                "trainer.loggers", "trainer.eval_batch_size", "data.workers")


def _check_same_config(run_dir: Path, cfg: dict[str, Any]) -> None:
    """A run folder reused by a grid must hold the run the grid asks for."""
    path = run_dir / "config.json"
    if not path.is_file():
        return
    have, want = _flatten(_read_json(path)), _flatten(json.loads(json.dumps(cfg)))
    diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k) and k not in RUNTIME_KEYS)
    if diff:
        raise VgsslError(f"{run_dir} holds a run with another config (differs in: {', '.join(diff[:5])}); "
                         "delete that folder or choose another --out")


def _check_dataset(root: Path, splits: Sequence[str]) -> None:
    """The folders a training reads, checked before a grid's first run rather than midway."""
    images = root / "images"
    if not images.is_dir():
        raise VgsslError(f"{root}: not a dataset folder (no 'images/' inside); run 'vgssl synth --out {root}' "
                         "to make one")
    for split in splits:
        if not (images / split).is_dir():
            have = ", ".join(sorted(p.name for p in images.iterdir() if p.is_dir())) or "none"
            raise VgsslError(f"{root}: split '{split}' is missing (no images/{split}/); this dataset has: {have}")


def synthetic_world(out: Path, preset: str = "demo", seed: int = 0, progress: bool = True) -> Path:
    """``OUT/world-<preset>-<seed>``, generated unless that world is already there."""
    from vgssl_core.synth import generate_world

    root = out / f"world-{preset}-{seed}"
    info = root / "world.json"
    if info.is_file():
        meta = _read_json(info)
        if meta.get("preset") == preset and meta.get("seed") == seed:
            return root
    generate_world(root, preset=preset, seed=seed, progress=progress)
    return root


def ensure_attention(run: Run, *, n: int = 8, target: str = "retrieved", device=None, progress: bool = False,
                     log=print) -> Run:
    """Measure the run's geo-relevance (``RUN/attention.json``) unless done with the same n, target and
    checkpoint. A run that cannot be measured as asked (no class masks, its dataset not found) is left
    without a measurement, never shown with one of another n or checkpoint."""
    from vgssl_core.evaluation.attention import geo_relevance, has_masks
    from vgssl_core.io import file_sha256
    from vgssl_core.models.loading import load_descriptor_model
    from vgssl_core.io import write_json

    try:
        ckpt = run_checkpoint(run.path)
    except VgsslError:
        ckpt = None  # checkpoints deleted to save space: an earlier measurement still stands
    sha = file_sha256(ckpt) if ckpt else None
    done = run.attention or {}
    if (done.get("n_requested"), done.get("target")) == (n, target) and (
            ckpt is None or done.get("checkpoint_sha256") == sha):
        return run
    run.attention = None  # measured with another n, target or checkpoint: not what was asked for
    if ckpt is None:
        log(f"{run.path}: no best.ckpt or last.ckpt; geo-relevance not measured")
        return run
    root = Path(run.data_root)
    if not root.is_dir():
        where = "" if root.is_absolute() else " (a relative path: run 'vgssl table' from where the run trained)"
        log(f"{run.path}: its dataset {run.data_root} (from test.json) is not found{where}; "
            "geo-relevance not measured")
        return run
    if not has_masks(root, run.split):
        log(f"{run.path}: {run.data_root} has no class masks; geo-relevance not measured")
        return run
    model, cfg, _ = load_descriptor_model(ckpt)
    if device is not None:
        model.to(device)
    report = geo_relevance(model, cfg, run.data_root, split=run.split, n=n, target=target, device=device,
                           progress=progress)
    report.update({"n_requested": n, "checkpoint": str(ckpt), "checkpoint_sha256": sha})
    write_json(run.path / "attention.json", _json_safe(report))
    run.attention = _json_safe(report)
    return run


def starting_points(runs: Sequence[Run], out: Path, *, device=None, progress: bool = False, log=print) -> list[Run]:
    """The untrained model of each backbone and initialisation in ``runs``, scored on each run's
    dataset and split: the table's starting-point rows, so it shows what training added.

    Each is an ``OUT/start/<dataset>/untrained-<backbone>-<layer>-<aggregation>-<init>-<hash>/``
    folder with ``config.json`` and ``test.json``, skipped when already there. Runs whose initial
    weights were not recorded, or whose dataset is not found, get no starting point (one line).
    """
    import hashlib

    from vgssl_core.data.dataset import load_split
    from vgssl_core.evaluation.split import evaluate_split
    from vgssl_core.io import write_json
    from vgssl_core.models.config import resolve_model_config
    from vgssl_core.models.loading import load_descriptor_model

    done: dict[Path, Run] = {}
    for run in runs:
        if run.method == "untrained":
            continue
        cfg = _read_json(run.path / "config.json") if (run.path / "config.json").is_file() else {}
        init = _read_json(run.path / "test.json").get("init") or {}
        weights = {"imagenet": "imagenet", "random": "random", "file": init.get("file")}.get(init.get("init"))
        if not cfg.get("model") or not weights:
            log(f"{run.path}: initial weights not recorded (or not imagenet / random / a file); "
                "no starting point for it")
            continue
        if not Path(run.data_root).is_dir():
            log(f"{run.path}: its dataset {run.data_root} is not found; no starting point for it")
            continue
        model_cfg = resolve_model_config({**cfg["model"], "weights": weights})
        digest = hashlib.sha256(json.dumps([model_cfg, run.data_root, run.split], sort_keys=True).encode())
        name = (f"untrained-{model_cfg['backbone']}-{model_cfg['layer']}-{model_cfg['aggregation']}-"
                f"{run.init.split()[0]}-{digest.hexdigest()[:8]}")
        folder = out / "start" / run.dataset / name
        if folder in done:
            continue
        if not (folder / "test.json").is_file():
            log(f"starting point {name}: scoring the untrained model on {run.data_root} ({run.split})")
            model, model_cfg, _ = load_descriptor_model(None, model_cfg)
            if device is not None:
                model.to(device)
            report, *_ = evaluate_split(model, model_cfg, load_split(run.data_root, run.split),
                                        device or next(model.parameters()).device, progress=progress)
            report["init"] = dict(init)
            write_json(folder / "config.json", {"name": name, "method": "untrained", "model": model_cfg})
            write_json(folder / "test.json", report)
        done[folder] = read_run(folder)
    have = {r.path.resolve() for r in runs}
    return [r for folder, r in done.items() if folder.resolve() not in have]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def run_grid(configs: Sequence[str | Path], datasets: Sequence[str | Path], *, seeds: Sequence[int] = (0,),
             out: Path, overrides: Sequence[str] = (), progress: bool = True, attention_n: int = 0,
             attention_target: str = "retrieved", device=None, log=print) -> list[Run]:
    """Train every (dataset, preset, seed) that has no finished run folder yet; return all runs."""
    from vgssl_core.training.config import load_config
    from vgssl_core.training import train

    presets = [resolve_preset(c) for c in configs]
    names = [Path(d).name for d in datasets]
    if len(set(names)) != len(names):
        raise VgsslError(f"datasets need distinct folder names to tell their columns apart, got {', '.join(names)}")
    plan = []
    for root in map(Path, datasets):
        for preset in presets:
            for seed in seeds:
                cfg = load_config(preset, [*overrides, f"trainer.seed={int(seed)}"])
                if not cfg["trainer"]["test_split"]:
                    raise VgsslError(f"{preset.name}: trainer.test_split is null; the table needs a test split")
                run_dir = out / "runs" / root.name / (cfg.get("name") or preset.stem) / f"seed{int(seed)}"
                _check_same_config(run_dir, cfg)
                if not (run_dir / "test.json").is_file():
                    _check_dataset(root, ["train", *(cfg["trainer"][k] for k in ("val_split", "test_split")
                                                     if cfg["trainer"][k])])
                plan.append((root, preset, seed, cfg, run_dir))
    runs = []
    for i, (root, preset, seed, cfg, run_dir) in enumerate(plan, 1):
        head = f"[{i}/{len(plan)}] {cfg.get('name') or preset.stem} on {root.name}, seed {seed}"
        if (run_dir / "test.json").is_file():
            log(f"{head}: done before, reusing {run_dir}")
        else:
            resume = run_dir / "last.ckpt" if (run_dir / "last.ckpt").is_file() else None
            log(f"{head}: {'resuming' if resume else 'training'} -> {run_dir}")
            train(cfg, root, run_dir, resume=resume, progress=progress)
        run = read_run(run_dir)
        if attention_n:
            run = ensure_attention(run, n=attention_n, target=attention_target, device=device, log=log)
        runs.append(run)
    return runs


# --- the table -------------------------------------------------------------------------------
@dataclass
class Column:
    key: str  # (dataset, metric) as "dataset|metric"
    dataset: str
    metric: str  # "R@1", "geo %", "geo lift", "transient %"
    digits: int
    lower_is_better: bool = False  # the transient share: less attention on vehicles and pedestrians is better


@dataclass
class Row:
    label: str
    strategy: str
    category: str
    method: str
    values: dict[str, list[float]] = field(default_factory=dict)  # column key -> one value per seed
    runs: list[str] = field(default_factory=list)
    inits: list[str] = field(default_factory=list)  # the runs' initial weights (init_label), distinct

    @property
    def init(self) -> str:
        return " / ".join(self.inits)

    def mean(self, key: str) -> float | None:
        v = self.values.get(key)
        return float(np.mean(v)) if v else None

    def std(self, key: str) -> float | None:
        v = self.values.get(key)
        return float(np.std(v, ddof=1)) if v and len(v) > 1 else None

    @property
    def seeds(self) -> int:
        return max((len(v) for v in self.values.values()), default=0)


@dataclass
class Table:
    columns: list[Column]
    rows: list[Row]
    datasets: list[str]


def build_table(runs: Sequence[Run], ns: Sequence[str] = DEFAULT_NS) -> Table:
    """Rows by strategy (seeds pooled), columns R@N per dataset (+ geo-relevance when measured)."""
    if not runs:
        raise VgsslError("no runs to tabulate")
    ns = [str(n) for n in ns]
    datasets = list(dict.fromkeys(r.dataset for r in runs))
    with_attention = {r.dataset for r in runs if r.attention and r.attention.get("geo_share") is not None}
    with_transient = {r.dataset for r in runs if r.attention and r.attention.get("transient_share") is not None}
    columns = []
    for ds in datasets:
        columns += [Column(f"{ds}|R@{n}", ds, f"R@{n}", 1) for n in ns]
        if ds in with_attention:
            columns += [Column(f"{ds}|geo %", ds, "geo %", 1), Column(f"{ds}|geo lift", ds, "geo lift", 2)]
        if ds in with_transient:
            columns.append(Column(f"{ds}|transient %", ds, "transient %", 1, lower_is_better=True))
    seen: dict[tuple, Path] = {}
    for r in runs:  # two runs of one strategy and seed are no two seeds: say so rather than pool them
        key = (r.dataset, r.label, r.strategy, r.seed)
        if r.seed is not None and key in seen:
            raise VgsslError(f"{seen[key]} and {r.path} are both {r.strategy} seed {r.seed} on {r.dataset}; "
                             "tabulate one of them, or give the other its own name (name=... when training)")
        seen[key] = r.path
    rows: dict[tuple[str, str], Row] = {}
    for r in runs:
        row = rows.setdefault((r.label, r.strategy), Row(r.label, r.strategy, r.category, r.method))
        row.runs.append(str(r.path))
        if r.init not in row.inits:
            row.inits.append(r.init)
        for n in ns:
            if n not in r.recall:
                raise VgsslError(f"{r.path / 'test.json'}: has no R@{n}; available: {', '.join(r.recall)}")
            row.values.setdefault(f"{r.dataset}|R@{n}", []).append(r.recall[n])
        if r.attention and r.attention.get("geo_share") is not None:
            row.values.setdefault(f"{r.dataset}|geo %", []).append(100.0 * float(r.attention["geo_share"]))
            if r.attention.get("geo_lift") is not None:
                row.values.setdefault(f"{r.dataset}|geo lift", []).append(float(r.attention["geo_lift"]))
        if r.attention and r.attention.get("transient_share") is not None:
            row.values.setdefault(f"{r.dataset}|transient %", []).append(100.0 * float(r.attention["transient_share"]))
    order = list(CATEGORIES)

    def sort_key(row: Row):
        return (CATEGORY_ORDER.index(row.category), order.index(row.method) if row.method in order else 99,
                row.label, row.strategy)

    return Table(columns, sorted(rows.values(), key=sort_key), datasets)


def _ranks(table: Table, col: Column) -> dict[int, int]:
    """Row index -> 1 (best) or 2 (second), by the displayed value (ties share a rank)."""
    shown = {i: round(m, col.digits) for i, row in enumerate(table.rows) if (m := row.mean(col.key)) is not None}
    distinct = sorted(set(shown.values()), reverse=not col.lower_is_better)
    if len(shown) < 2:
        return {}
    return {i: distinct.index(v) + 1 for i, v in shown.items() if distinct.index(v) < 2}


def _cell(row: Row, col: Column) -> str:
    mean = row.mean(col.key)
    if mean is None:
        return "–"
    std = row.std(col.key)
    return f"{mean:.{col.digits}f}" + (f" ± {std:.{col.digits}f}" if std is not None else "")


def to_markdown(table: Table) -> str:
    """The paper-style table: best of each column **bold**, second <u>underlined</u>."""
    many = len(table.datasets) > 1
    header = ["Method", "Strategy", "Category", "Init", "Seeds"] + [
        f"{c.dataset} {c.metric}" if many else c.metric for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":--"] * 4 + ["--:"] * (len(header) - 4)) + "|"]
    ranks = [_ranks(table, c) for c in table.columns]
    for i, row in enumerate(table.rows):
        cells = [row.label, row.strategy, row.category, row.init, str(row.seeds)]
        for col, rank in zip(table.columns, ranks):
            text = _cell(row, col)
            cells.append(f"**{text}**" if rank.get(i) == 1 else f"<u>{text}</u>" if rank.get(i) == 2 else text)
        lines.append("| " + " | ".join(cells) + " |")
    caption = ("Test Recall@N (%) at 25 m" + ("" if many else f" on {table.datasets[0]}")
               + "; mean ± std over seeds; best **bold**, second <u>underlined</u>")
    if any(c.metric.startswith("geo") for c in table.columns):
        caption += ("; geo % = share of Grad-CAM attention on buildings and landmarks, geo lift = that share "
                    "divided by their share of the pixels (1 = no preference)")
    if any(c.metric == "transient %" for c in table.columns):
        caption += "; transient % = share on vehicles and pedestrians (lower is better)"
    if mixed_inits(table):
        caption += ("; **the rows start from different initial weights** (Init column: "
                    + ", ".join(mixed_inits(table)) + "), so their gaps are not the methods' alone")
    return caption + "\n\n" + "\n".join(lines) + "\n"


def mixed_inits(table: Table) -> list[str]:
    """The distinct initial weights of the table's runs when there is more than one, else []."""
    found = list(dict.fromkeys(i for row in table.rows for i in row.inits))
    return found if len(found) > 1 else []


def to_csv(table: Table) -> str:
    """Plain numbers: one row per strategy, ``<column>_mean`` and ``<column>_std`` per column."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    names = [f"{c.dataset} {c.metric}" for c in table.columns]
    writer.writerow(["method", "strategy", "category", "init", "seeds"]
                    + [f"{n} {part}" for n in names for part in ("mean", "std")])
    for row in table.rows:
        values = []
        for col in table.columns:
            mean, std = row.mean(col.key), row.std(col.key)
            values += ["" if mean is None else f"{mean:.4f}", "" if std is None else f"{std:.4f}"]
        writer.writerow([row.label, row.strategy, row.category, row.init, row.seeds] + values)
    return buf.getvalue()


def to_dict(table: Table) -> dict[str, Any]:
    return {
        "datasets": table.datasets,
        "columns": [f"{c.dataset} {c.metric}" for c in table.columns],
        "mixed_inits": mixed_inits(table),
        "rows": [{"method": r.label, "strategy": r.strategy, "category": r.category, "init": r.init, "seeds": r.seeds,
                  "runs": r.runs,
                  "values": {f"{c.dataset} {c.metric}": {"mean": r.mean(c.key), "std": r.std(c.key),
                                                          "values": r.values.get(c.key, [])}
                             for c in table.columns}} for r in table.rows],
    }
