"""Training configs: a YAML preset, ``key=value`` overrides, and one schema of defaults.

A strategy preset (package data: ``vgssl_core/presets/*.yaml``) names the paper's strategy (``arxiv-simclr-fc-1-2048-1``)
and holds only what differs from the defaults below; every hyperparameter the reference code
hard-codes lives here or in the method's defaults with the paper's value. The resolved config
is plain data (str/int/float/bool/list/dict/None), so it can travel inside checkpoints that
load with ``weights_only=True``.
"""

from __future__ import annotations

import copy
import importlib.resources
from pathlib import Path
from typing import Any

import yaml

from vgssl_core.data.geo import EVAL_RADIUS_M, TRAIN_RADIUS_M
from vgssl_core.errors import VgsslError

MINING_MODES = ("full", "partial", "random")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")  # auto: bf16-mixed on a bf16 GPU, else 32-true
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine")
BATCHNORM_MODES = ("train", "frozen")
SYNC_BATCHNORM = ("none", "heads", "all")

DEFAULTS: dict[str, Any] = {
    "name": None,
    "method": "simclr",
    "model": {},  # see vgssl_core.models.resolve_model_config
    "method_config": {},  # see vgssl_core.methods.resolve_method_config
    "data": {
        "train_radius_m": TRAIN_RADIUS_M,
        "eval_radius_m": EVAL_RADIUS_M,
        "queries_per_epoch": None,
        "db_negative_ratio": 1.0,
        "positive": "uniform",
        # feature-nearest: a descriptor the training step computed (or an earlier refresh made)
        # stands in for a new description for this many epochs (0: describe all every epoch, as
        # the reference); each epoch then describes about 1/6 of what a full refresh does
        "positive_max_age": 5,
        "batch_size": 32,
        "workers": 2,
        "augment": {},  # a set's name or a mapping; see vgssl_core.data.transforms.AUGMENT_SETS
    },
    "mining": {  # the triplet baseline only (Berton et al., CVPR 2022)
        "mode": "partial",
        "cache_refresh_queries": 1000,
        "db_subset": 1000,
        "negatives_per_query": 10,
        "margin": 0.1,  # the triplet loss's margin (method_config.margin follows it)
        # queries per epoch; null: as many as a GeoPair epoch (data.queries_per_epoch, else every
        # usable query), so the baseline and the SSL methods see equal query budgets per epoch
        "queries_per_epoch": None,
    },
    "optim": {
        "name": "adam",
        "lr": 1.0e-5,
        "weight_decay": 0.0,
        "momentum": 0.9,
        "scheduler": "none",
        "warmup_steps": 0,
        "grad_clip": None,
    },
    "trainer": {
        "max_epochs": 10,
        "max_steps": -1,
        "precision": "auto",
        "val_every_n_epochs": 1,
        "val_split": "val",
        "test_split": "test",
        "seed": 0,
        "accelerator": "auto",
        "devices": "auto",
        "num_nodes": 1,
        "strategy": "auto",
        # torch.use_deterministic_algorithms + cuBLAS workspace: needed for bit-exact GPU runs and
        # resumes; on CPU the step is deterministic anyway (bench_training.py measures the cost)
        "deterministic": False,
        # torch.compile the backbone (GPU; the first steps pay the compilation)
        "compile": False,
        # rows of logs/metrics.csv (and loss checks, each a device-to-host sync): every N steps;
        # null: every step on CPU (no sync to save), every 50 on a GPU
        "log_every_n_steps": None,
        "loggers": ["csv"],  # csv, tensorboard, wandb
        "eval_batch_size": 32,
        # Backbone BatchNorm during training: "train" (batch statistics, running stats updated:
        # the benchmark's and VG-SSL's setting) or "frozen" (eval mode: the statistics the
        # backbone started with are kept and only the affine weights learn).
        "batchnorm": "train",
        # Step checkpoints: last.ckpt also every N optimiser steps and/or every M minutes of wall
        # time (null: epoch ends only); a resume from any of them is exact.
        "checkpoint_every_n_steps": None,
        "checkpoint_every_minutes": None,
        # Under DDP: BatchNorm statistics over all ranks (SyncBatchNorm, GPUs only) in the
        # projection heads/predictors ("heads"), also in the backbone ("all"), or per rank ("none").
        "sync_batchnorm": "heads",
    },
}


def _merge(base: dict[str, Any], update: dict[str, Any], where: str) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if key not in base:
            raise VgsslError(f"unknown config key '{where}{key}'; valid keys: {', '.join(base)}")
        if isinstance(base[key], dict) and base[key] and isinstance(value, dict):
            out[key] = _merge(base[key], value, f"{where}{key}.")
        elif isinstance(base[key], dict) and not base[key]:
            if not isinstance(value, dict):
                raise VgsslError(f"config key '{where}{key}' must be a mapping, got {value!r}")
            out[key] = {**out[key], **value}  # free-form; validated by its own resolver
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``optim.lr=1e-4`` -> {"optim": {"lr": 0.0001}} (the value parsed as YAML)."""
    if "=" not in text:
        raise VgsslError(f"override '{text}' must look like key=value (e.g. optim.lr=1e-4)")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, str):  # YAML reads 1e-4 as a string; numbers written that way are numbers
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    node: dict[str, Any] = {}
    cursor = node
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return node


def _deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def presets() -> dict[str, Path]:
    """Shipped presets by name -> their resource (found with ``importlib.resources``: works from a
    wheel, an editable install or a checkout alike)."""
    folder = importlib.resources.files("vgssl_core") / "presets"
    return {entry.name[:-len(".yaml")]: entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def preset_headers() -> dict[str, str]:
    """Shipped presets by name (sorted) -> the first line of their header comment."""
    out = {}
    for name, entry in sorted(presets().items()):
        first = next((ln for ln in entry.read_text().splitlines() if ln.strip()), "")
        out[name] = first.lstrip("#").strip() if first.lstrip().startswith("#") else ""
    return out


def resolve_preset(name: str | Path) -> Path:
    """A preset file, or the bare name of a shipped preset (``demo-simclr``).

    Only a bare name (no folder, no ``.yaml``) is looked up among the presets: a path a user typed
    (``./mine.yaml``, ``cfg/demo-simclr.yaml``) is their file or an error, never a shipped preset
    of the same name.
    """
    path = Path(name)
    if path.is_file():
        return path
    text = str(name)
    bare = "/" not in text and "\\" not in text and not text.endswith((".yaml", ".yml"))
    if not bare:
        raise VgsslError(f"{name}: config file not found")
    shipped = presets()
    if text in shipped:
        return shipped[text]
    raise VgsslError(f"strategy preset '{name}' not found (as a file or a shipped preset); "
                     f"'vgssl config list' shows them, e.g. {', '.join(sorted(shipped)[:6])}, ...")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = resolve_preset(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise VgsslError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise VgsslError(f"{path}: a config must be a mapping at the top level")
    return data


def _float(value: Any, key: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise VgsslError(f"config key '{key}' must be a number, got {value!r}") from None


def _augment_as_mapping(raw: dict[str, Any]) -> dict[str, Any]:
    """``data.augment: reference`` -> ``{"name": "reference"}``, so overrides of single keys merge."""
    from vgssl_core.data.transforms import augment_mapping

    data = raw.get("data")
    if isinstance(data, dict) and "augment" in data:
        raw = {**raw, "data": {**data, "augment": augment_mapping(data["augment"])}}
    return raw


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise VgsslError(f"config key '{key}' must be a whole number, got {value!r}")
    return int(value)


# (section, key, smallest allowed value, None allowed, -1 allowed (Lightning's "no limit")):
# every count is checked here, so a bad one fails before training, not after an epoch
INT_KEYS = [("data", "batch_size", 1, False, False), ("data", "workers", 0, False, False),
            ("data", "queries_per_epoch", 1, True, False),
            ("trainer", "max_epochs", 1, False, True), ("trainer", "max_steps", 1, False, True),
            ("trainer", "val_every_n_epochs", 1, False, False), ("trainer", "eval_batch_size", 1, False, False),
            ("trainer", "num_nodes", 1, False, False), ("trainer", "seed", 0, False, False),
            ("mining", "cache_refresh_queries", 1, False, False), ("mining", "db_subset", 1, False, False),
            ("mining", "negatives_per_query", 1, False, False), ("optim", "warmup_steps", 0, False, False)]
# (section, key, lower bound, bound allowed): floats already parsed by ``_float``
FLOAT_KEYS = [("optim", "lr", 0.0, False), ("optim", "weight_decay", 0.0, True), ("optim", "momentum", 0.0, True),
              ("data", "db_negative_ratio", 0.0, True), ("data", "train_radius_m", 0.0, False),
              ("data", "eval_radius_m", 0.0, False), ("mining", "margin", 0.0, True)]


def _check_numbers(cfg: dict[str, Any]) -> None:
    """Types and ranges of every numeric key (one pass, before any work)."""
    import math

    for section, key, low, none_ok, minus_one_ok in INT_KEYS:
        value = cfg[section][key]
        if value is None and none_ok:
            continue
        number = _int(value, f"{section}.{key}")
        if number < low and not (minus_one_ok and number == -1):
            extra = " (or -1: no limit)" if minus_one_ok else ""
            raise VgsslError(f"config key '{section}.{key}' must be >= {low}{extra}, got {number}")
        cfg[section][key] = number
    for section, key, low, equal_ok in FLOAT_KEYS:
        value = cfg[section][key]
        if not math.isfinite(value) or value < low or (value == low and not equal_ok):
            raise VgsslError(f"config key '{section}.{key}' must be a finite number {'>=' if equal_ok else '>'} "
                             f"{low:g}, got {value!r}")
    clip = cfg["optim"]["grad_clip"]
    if clip is not None:
        clip = cfg["optim"]["grad_clip"] = _float(clip, "optim.grad_clip")
        if not math.isfinite(clip) or clip <= 0:
            raise VgsslError(f"config key 'optim.grad_clip' must be null or a finite number > 0, got {clip!r}")


def resolve_config(preset: dict[str, Any] | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Defaults <- preset <- overrides, validated; the method and model parts by their own resolvers."""
    from vgssl_core.methods import canonical_method_name, model_config_for_method, resolve_method_config
    from vgssl_core.data.transforms import resolve_augment_config

    raw = _augment_as_mapping(dict(preset or {}))
    for text in overrides or []:
        raw = _deep_update(raw, _augment_as_mapping(parse_override(text)))
    cfg = _merge(DEFAULTS, raw, "")
    cfg["method"] = canonical_method_name(cfg["method"])
    for section, key in (("optim", "lr"), ("optim", "weight_decay"), ("data", "db_negative_ratio"),
                         ("data", "train_radius_m"), ("data", "eval_radius_m"), ("mining", "margin")):
        cfg[section][key] = _float(cfg[section][key], f"{section}.{key}")
    _check_numbers(cfg)
    checks = [("mining.mode", cfg["mining"]["mode"], MINING_MODES),
              ("trainer.precision", str(cfg["trainer"]["precision"]), PRECISIONS),
              ("optim.name", cfg["optim"]["name"], OPTIMIZERS),
              ("optim.scheduler", cfg["optim"]["scheduler"], SCHEDULERS),
              ("trainer.batchnorm", cfg["trainer"]["batchnorm"], BATCHNORM_MODES),
              ("trainer.sync_batchnorm", cfg["trainer"]["sync_batchnorm"], SYNC_BATCHNORM)]
    for key, value, valid in checks:
        if value not in valid:
            raise VgsslError(f"config key '{key}' is '{value}'; valid: {', '.join(valid)}")
    _check_data_and_mining(cfg)
    if cfg["method"] == "triplet":  # one margin: mining.margin (the presets' key) sets the loss's
        given = cfg["method_config"].get("margin")
        if given is not None and float(given) != cfg["mining"]["margin"]:
            raise VgsslError(f"method_config.margin={given} disagrees with mining.margin={cfg['mining']['margin']}; "
                             "set mining.margin only")
        cfg["method_config"] = {**cfg["method_config"], "margin": cfg["mining"]["margin"]}
    cfg["method_config"] = resolve_method_config(cfg["method"], cfg["method_config"])
    # the head's BatchNorm etc. follow the method unless the preset says otherwise
    cfg["model"] = model_config_for_method(cfg["method"], cfg["model"])
    cfg["data"]["augment"] = resolve_augment_config(cfg["data"]["augment"])
    return cfg


def _optional_count(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise VgsslError(f"config key '{key}' must be an integer >= 1 or null, got {value!r}")
    return int(value)


def _check_data_and_mining(cfg: dict[str, Any]) -> None:
    """The GeoPair and mining values, before any work starts (one line each)."""
    from vgssl_core.data.geopairs import POSITIVE_CHOICES

    data, mining = cfg["data"], cfg["mining"]
    if not data["db_negative_ratio"] >= 0:
        raise VgsslError(f"config key 'data.db_negative_ratio' must be >= 0, got {data['db_negative_ratio']}")
    if not mining["margin"] > 0:
        raise VgsslError(f"config key 'mining.margin' must be > 0, got {mining['margin']}")
    if data["positive"] not in POSITIVE_CHOICES:
        raise VgsslError(f"config key 'data.positive' is '{data['positive']}'; valid: {', '.join(POSITIVE_CHOICES)}")
    data["queries_per_epoch"] = _optional_count(data["queries_per_epoch"], "data.queries_per_epoch")
    age = data["positive_max_age"]
    if isinstance(age, bool) or not isinstance(age, (int, float)) or age != int(age) or age < 0:
        raise VgsslError(f"config key 'data.positive_max_age' must be an integer >= 0, got {age!r}")
    data["positive_max_age"] = int(age)
    mining["queries_per_epoch"] = _optional_count(mining["queries_per_epoch"], "mining.queries_per_epoch")
    trainer = cfg["trainer"]
    trainer["log_every_n_steps"] = _optional_count(trainer["log_every_n_steps"], "trainer.log_every_n_steps")
    trainer["checkpoint_every_n_steps"] = _optional_count(trainer["checkpoint_every_n_steps"],
                                                          "trainer.checkpoint_every_n_steps")
    minutes = trainer["checkpoint_every_minutes"]
    if minutes is not None:
        minutes = _float(minutes, "trainer.checkpoint_every_minutes")
        if not minutes > 0:
            raise VgsslError(f"config key 'trainer.checkpoint_every_minutes' must be > 0 or null, got {minutes}")
        trainer["checkpoint_every_minutes"] = minutes


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    return resolve_config(read_yaml(path) if path else {}, overrides)
