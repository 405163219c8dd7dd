"""Shared fixtures. The shipped default model is part of the repository; tests use it as a robot would."""

from __future__ import annotations

from pathlib import Path

import pytest

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "clino-vpr-tiny.onnx"


@pytest.fixture(scope="session")
def shipped_model() -> Path:
    """models/clino-vpr-tiny.onnx, trained on synthetic towns (models/README.md)."""
    assert SHIPPED_MODEL.is_file(), f"the shipped model {SHIPPED_MODEL} is missing: see models/README.md to rebuild it"
    return SHIPPED_MODEL


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "runtime: the robot runtime (no torch, no ROS): also run by scripts/test_humble.sh on the oldest "
        "versions a supported distro ships (Python 3.10, Ubuntu 22.04's NumPy/SciPy/OpenCV)",
    )


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """A real Milvus standalone server (the `milvus` wheel) with its data under a pytest tmp dir;
    tests may stop and restart it (same URI)."""
    from clino_vpr_ros.fleet_server import EmbeddedMilvus

    server = EmbeddedMilvus(tmp_path_factory.mktemp("milvus"))
    server.start()
    yield server
    server.stop()
