"""Training methods: six SSL methods on GeoPairs and the triplet baseline, one interface.

    >>> method = build_method("simclr", {"head_layers": 1, "head_dim": 2048}, {"temperature": 0.07})
    >>> loss = method.loss_pairs(view_a, view_b, positions)
    >>> method.after_optimizer_step(step, max_steps)

``METHODS`` maps each name to its class; ``default_method_config(name)`` gives the paper's
hyperparameters as a plain dict; ``model_config_for_method(name, partial)`` resolves a model
config with the method's projection-head defaults (e.g. BatchNorm for BYOL, none for SimCLR).
"""

from __future__ import annotations

import copy
from typing import Any

from vgssl_core.methods.barlow_twins import BarlowTwins
from vgssl_core.methods.base import Method, MomentumMethod
from vgssl_core.methods.byol import BYOL
from vgssl_core.methods.mocov2 import MoCoV2
from vgssl_core.methods.simclr import SimCLR
from vgssl_core.methods.simsiam import SimSiam
from vgssl_core.methods.triplet import TripletBaseline
from vgssl_core.methods.vicreg import VICReg
from vgssl_core.errors import ConfigError
from vgssl_core.models.config import resolve_model_config
from vgssl_core.options import fill_defaults
from vgssl_core.models.network import build_model

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (SimCLR, MoCoV2, BYOL, SimSiam, BarlowTwins, VICReg, TripletBaseline)
}
SSL_METHODS = ("simclr", "mocov2", "byol", "simsiam", "barlow_twins", "vicreg")
# Other spellings, e.g. the paper's strategy names (BT-FC-2-4096-1).
METHOD_ALIASES = {"bt": "barlow_twins", "barlowtwins": "barlow_twins", "moco": "mocov2", "moco_v2": "mocov2"}


def canonical_method_name(name: str) -> str:
    """``name`` as a key of ``METHODS`` (case-insensitive, aliases accepted) or ``ConfigError``."""
    key = str(name).strip().lower().replace("-", "_")
    key = METHOD_ALIASES.get(key, key)
    if key not in METHODS:
        raise ConfigError(f"unknown method '{name}'; choose one of {', '.join(METHODS)}")
    return key


def default_method_config(name: str) -> dict[str, Any]:
    """The method's hyperparameters with the defaults of the paper / reference code (plain dict)."""
    return copy.deepcopy(METHODS[canonical_method_name(name)].default_config)


def resolve_method_config(name: str, partial: dict | None) -> dict[str, Any]:
    """Fill defaults into ``partial`` and check keys and types; values are checked by the class."""
    key = canonical_method_name(name)
    defaults = default_method_config(key)
    cfg = fill_defaults(partial, defaults, f"{key} config")
    for k, default in defaults.items():
        value = cfg[k]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif isinstance(default, int) or default is None:  # None defaults are optional integers
            nullable = default is None or k in METHODS[key].nullable_keys
            ok = (isinstance(value, int) and not isinstance(value, bool)) or (nullable and value is None)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            kind = "an integer or null" if default is None or k in METHODS[key].nullable_keys else type(default).__name__.replace("bool", "true/false")
            raise ConfigError(f"{key} config '{k}' must be {kind}, got {value!r}")
        cfg[k] = value
    return cfg


def model_config_for_method(name: str, partial: dict | None) -> dict:
    """Resolve a model config, taking the head (L, D, BatchNorm) from the method's defaults
    for every head key the partial config does not set."""
    return resolve_model_config({**METHODS[canonical_method_name(name)].model_defaults, **(partial or {})})


def build_method(name: str, model_cfg: dict | None = None, method_cfg: dict | None = None) -> Method:
    """Build the method ``name`` with a new descriptor network.

    ``model_cfg`` is a (partial) model config: pass the user's keys, not an already resolved
    config, so that the method's head defaults fill the rest (``model_config_for_method``).
    The resolved configs are ``method.model.config`` and ``method.config``.
    """
    key = canonical_method_name(name)
    hyper = resolve_method_config(key, method_cfg)
    model = build_model(model_config_for_method(key, model_cfg))
    return METHODS[key](model, **hyper)


__all__ = [
    "BYOL", "BarlowTwins", "METHODS", "METHOD_ALIASES", "Method", "MoCoV2", "MomentumMethod", "SSL_METHODS",
    "SimCLR", "SimSiam", "TripletBaseline", "VICReg", "build_method", "canonical_method_name",
    "default_method_config", "model_config_for_method", "resolve_method_config",
]
