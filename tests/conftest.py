"""Fixtures shared by the core and ROS suites: small geo-tagged datasets and a tiny trained model."""

from __future__ import annotations

from pathlib import Path

import pytest
from testkit import TinyModel, make_dataset, train_tiny


@pytest.fixture
def street_dataset(tmp_path: Path) -> Path:
    """A 300 m straight street: database every 5 m, queries every 20 m offset by 2 m."""
    db = [(x, 0.0) for x in range(0, 300, 5)]
    q = [(x + 2.0, 1.0) for x in range(0, 300, 20)]
    return make_dataset(tmp_path / "street", db, q, split="train")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """The ``tiny`` synthetic world, generated once per test session."""
    from vgssl_core.synth import generate_world

    root = tmp_path_factory.mktemp("worlds") / "tiny"
    generate_world(root, preset="tiny", seed=0, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_model(tiny_world, tmp_path_factory):
    """``tiny_model(height=64, width=96)`` -> ``TinyModel``: a 2-step SimCLR checkpoint on the tiny world
    at that input size and the database of its test split, made once per size and session.

    Shared by every test that needs one: read it, never change it (copy the database first).
    """
    made: dict[tuple[int, int], TinyModel] = {}

    def get(height: int = 64, width: int = 96) -> TinyModel:
        if (height, width) not in made:
            made[height, width] = train_tiny(tiny_world, tmp_path_factory.mktemp(f"tiny_{height}x{width}"),
                                             (height, width))
        return made[height, width]

    return get
