"""Loop-closure precision/recall and ATE of engine presets on generated towns, from stored keyframes.

Replays the keyframes that ``clino-vpr bag --save-map`` stored (descriptors, odometry poses, K, SIFT
features: no images, no encoder) through the engine with each preset, as ``clino-vpr merge`` does:
session 1 alone, then session 2 against session 1's map. Scores the closures against the
generator's ground truth like ``clino-vpr bag`` (recall over the keyframes) and gives the ATE of
the odometry and of the pose graph with the closures (session 1, session 2, merged).

Layout expected under DATA for each town T (what the README's reproduction commands write):
``seqT/s1``, ``seqT/s2`` (``clino-vpr synth sessions``) and ``seqT/s1.map.npz``, ``seqT/s2.map.npz``.

    python scripts/loop_presets.py --data /work/data --towns 961 962 --presets default sequence
    python scripts/loop_presets.py --data /work/data --towns 961 962 --presets default --without consistency
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not an installed one

import numpy as np  # noqa: E402

from clino_vpr_ros.engine import ENGINE_PRESETS, EngineConfig, LoopClosure, LoopClosureEngine  # noqa: E402
from clino_vpr_ros.evaluate import evaluate_closures  # noqa: E402
from clino_vpr_ros.session_map import SessionMap  # noqa: E402
from clino_vpr_ros.synth import read_session_groundtruth  # noqa: E402
from clino_vpr_ros.trajectory import evaluate_ate, session_trajectory  # noqa: E402


#: stages ``--without`` switches off
WITHOUT = {
    "consistency": lambda cfg: replace(cfg, consistency=replace(cfg.consistency, enabled=False)),
    "backfill": lambda cfg: replace(cfg, sequence=replace(cfg.sequence, backfill=False)),
    "follow": lambda cfg: replace(cfg, sequence=replace(cfg.sequence, follow=False)),
}


def replay(cfg: EngineConfig, live: SessionMap, priors: Sequence[SessionMap]) -> list[LoopClosure]:
    """Every closure the engine publishes while ``live``'s keyframes arrive in time order."""
    engine = LoopClosureEngine(cfg, live.descriptor_dim, live.fingerprint, live.session_id,
                               live.base_T_camera(0) if len(live) else None)
    for prior in priors:
        engine.add_prior_map(prior)
    closures: list[LoopClosure] = []
    for row in np.argsort(live.stamps, kind="stable"):
        closures += engine.replay_keyframe(live, int(row)).closures
    return closures


def table_of(closures: Sequence[LoopClosure]) -> dict[str, np.ndarray]:
    """The closures in :func:`clino_vpr_ros.evaluate.read_closures_csv`'s table form."""
    return {
        "query_stamp": np.array([c.query_stamp for c in closures], np.float64),
        "match_stamp": np.array([c.match_stamp for c in closures], np.float64),
        "query_session": np.array([c.query_session for c in closures], object),
        "match_session": np.array([c.match_session for c in closures], object),
        "score": np.array([c.score for c in closures], np.float64),
        "verified": np.array([c.verified for c in closures], bool),
    }


def evaluate_town(town_dir: Path, cfg: EngineConfig) -> dict[str, dict]:
    """{"s1": {...}, "s2": {...}, "ate": {...}} for one town: precision, recall, closures, wrong."""
    m1, m2 = SessionMap.load(town_dir / "s1.map.npz"), SessionMap.load(town_dir / "s2.map.npz")
    gt_dirs = [town_dir / "s1", town_dir / "s2"]
    out: dict[str, dict] = {}
    all_closures: list[LoopClosure] = []
    for name, live, priors, gts in (("s1", m1, [], gt_dirs[:1]), ("s2", m2, [m1], gt_dirs)):
        closures = replay(cfg, live, priors)
        all_closures += closures
        pr = evaluate_closures(table_of(closures), gts, queried={live.session_id: live.stamps})
        out[name] = {"precision": pr.precision, "recall": pr.recall, "closures": pr.n_closures,
                     "wrong": pr.n_closures - pr.n_correct, "gt_queries": pr.n_gt_queries,
                     "metric": sum(c.metric for c in closures)}
    gt = {}
    for d in gt_dirs:
        stamps, poses, _, meta = read_session_groundtruth(d)
        order = np.argsort(stamps)
        gt[meta.get("session_id", d.name)] = (stamps[order], poses[order])
    ate = evaluate_ate([session_trajectory(m1), session_trajectory(m2)], all_closures, gt)
    out["ate"] = {"odom": ate.odom, "closed": ate.closed, "merged_odom": ate.merged_odom,
                  "merged_closed": ate.merged_closed, "used": ate.closures_used}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="folder holding seq<TOWN>/ (see the docstring)")
    p.add_argument("--towns", type=int, nargs="+", required=True)
    p.add_argument("--presets", nargs="+", default=["default", "sequence"], choices=sorted(ENGINE_PRESETS))
    p.add_argument("--without", nargs="+", default=[], choices=sorted(WITHOUT),
                   help="switch these stages off in every preset (to see what each adds)")
    args = p.parse_args(argv)
    print("| town | preset | s1 P / R (closures, wrong) | s2 vs s1 P / R (closures, wrong) | "
          "ATE s1 odom -> closed | ATE s2 | ATE merged | metric closures |")
    print("|---|---|---|---|---|---|---|---|")
    for town in args.towns:
        for preset in args.presets:
            cfg = ENGINE_PRESETS[preset]
            for stage in args.without:
                cfg = WITHOUT[stage](cfg)
            r = evaluate_town(args.data / f"seq{town}", cfg)
            s1, s2, a = r["s1"], r["s2"], r["ate"]
            cell = lambda s: f"{s['precision']:.3f} / {s['recall']:.3f} ({s['closures']}, {s['wrong']})"  # noqa: E731
            name = " ".join([preset] + [f"-{s}" for s in args.without])
            print(f"| {town} | {name} | {cell(s1)} | {cell(s2)} | {a['odom']['s1']:.2f} -> {a['closed']['s1']:.2f} | "
                  f"{a['odom']['s2']:.2f} -> {a['closed']['s2']:.2f} | {a['merged_odom']:.2f} -> {a['merged_closed']:.2f} | "
                  f"{s1['metric'] + s2['metric']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
