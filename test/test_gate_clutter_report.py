"""scripts/gate_clutter_report.py: the same-cell statistic tells semantics from a fixed spatial prior."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("gate_clutter_report", ROOT / "scripts" / "gate_clutter_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_position_matched_difference_ignores_a_spatial_prior_and_sees_semantics() -> None:
    report = _script()
    rng = np.random.default_rng(0)
    group = rng.integers(0, 2, size=(50, 4, 4))  # 0 clutter, 1 structure, anywhere in the frame
    group[:, :2][rng.random((50, 2, 4)) < 0.5] = 0  # more clutter in the upper half, as sky and trees
    prior = np.broadcast_to(np.where(np.arange(4) < 2, 0.3, 1.0)[:, None], (50, 4, 4)).astype(np.float32)
    # a mask that only closes the upper half: clutter looks suppressed overall, not at the same cell
    assert prior[group == 0].mean() < prior[group == 1].mean() - 0.05
    assert abs(report.position_matched(prior, group, 0, 1)) < 1e-6
    # a mask that closes clutter wherever it is
    semantic = np.where(group == 0, 0.2, 0.9).astype(np.float32)
    assert np.isclose(report.position_matched(semantic, group, 0, 1), -0.7)
    assert report.position_matched(prior, np.zeros_like(group), 0, 1) is None
