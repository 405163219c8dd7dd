"""``clino-vpr demo`` as a user runs it: two RGB-only sessions through the node over real DDS.

What the user sees: a last line scripts can read, no wrong closure, the two sessions merged into one
map (RGB only: the closures' metric translation comes from triangulation), the trajectory error
with the closures at most half the odometry's, and the picture written.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from clino_vpr_ros.session_map import SessionMap

ROOT = Path(__file__).resolve().parents[1]


def _fields(line: str) -> dict[str, float]:
    assert line.startswith("demo: "), line
    return {k: float(v) for k, v in (kv.split("=") for kv in line.removeprefix("demo: ").split())}


def test_demo_merges_rgb_only_sessions_and_halves_the_trajectory_error(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "clino_vpr_ros.cli", "demo", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = proc.stdout.strip().splitlines()
    f = _fields(lines[-1])
    print("\n" + "\n".join(line for line in lines if line.startswith(("ATE", "merged", "demo:"))))
    assert set(f) == {"loop_closures", "precision", "recall", "ate_odom", "ate_closed", "merged_ate_odom",
                      "merged_ate_closed"}
    assert f["loop_closures"] >= 1 and f["precision"] == 1.0, "a wrong closure was published"
    assert f["recall"] >= 0.5, "the demo's target: at least half the revisiting keyframes get a closure"
    # the sessions are RGB only (the demo publishes no depth): merging needs metric closures
    merged = SessionMap.load(out / "merged.npz")
    assert sorted(merged.session_ids) == ["s1", "s2"]
    assert f["ate_closed"] <= 0.5 * f["ate_odom"], "the closures did not halve the worse session's trajectory error"
    # the sessions start in different odometry frames: only the closures bring them into one
    assert f["merged_ate_closed"] <= 0.5 * f["merged_ate_odom"]
    assert (out / "trajectories.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert SessionMap.load(out / "s1.npz").session_ids == ["s1"] and SessionMap.load(out / "s2.npz").session_ids == ["s2"]
