"""Fixtures shared by the core and ROS suites: small hand-made geo-tagged datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
from testkit import make_dataset


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
