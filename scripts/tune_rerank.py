"""Choose the local re-ranking settings (block, T1, max tokens, T2, K) on validation towns only.

For each town (``clino-vpr synth sessions`` folders, e.g. 961 and 962) every ``--stride``-th frame
of session 1 and 2 is encoded with the model (which must have the local outputs of every block to
try: pass one model per block, ``--model L=FILE``); then, per setting, Recall@1 of single-frame
retrieval is measured before and after re-ranking the top K by mutual nearest neighbours:
within session 1 (database = frames at least 20 s older) and session 2 against session 1.
A positive is a frame within 8 m and 30 deg of heading (the ground-truth loop definition).

Usage: python scripts/tune_rerank.py --towns DIR961 DIR962 --model 0=m0.onnx --model 1=m1.onnx ...
Prints one line per setting, sorted by mean re-ranked Recall@1, and the best setting last.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
from pathlib import Path

import numpy as np

from clino_vpr_ros.bag import _frames, _odometry
from clino_vpr_ros.rerank import RerankConfig, rerank, select_tokens
from clino_vpr_ros.runtime import RuntimeEncoder
from clino_vpr_ros.synth.writers import read_session_groundtruth


def session_frames(folder: Path, stride: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Stamps (N,) and RGB frames of every ``stride``-th image of a session folder's bag."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    stamps, images = [], []
    reader = AnyReader([folder / "bag"], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
    reader.open()
    with contextlib.closing(reader):
        image_topic = next(c.topic for c in reader.connections if c.msgtype.startswith("sensor_msgs/msg/") and "Image" in c.msgtype)
        odom, _ = _odometry(reader, next(c.topic for c in reader.connections if c.msgtype == "nav_msgs/msg/Odometry"))
        for i, (stamp, image, encoding, *_rest) in enumerate(_frames(reader, image_topic, None, odom, 0.05)):
            if i % stride == 0 and image is not None:
                stamps.append(stamp)
                images.append(image if encoding == "rgb8" else image[..., ::-1].copy())
    return np.asarray(stamps), images


def gt_at(folder: Path, stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth (x, y) (N,2) and yaw (N,) at ``stamps``."""
    gt_stamps, poses, _, _ = read_session_groundtruth(folder)
    idx = np.searchsorted(gt_stamps, stamps).clip(0, len(gt_stamps) - 1)
    return poses[idx, :2, 3], np.arctan2(poses[idx, 1, 0], poses[idx, 0, 0])


def positives(qxy, qyaw, dxy, dyaw, allowed) -> np.ndarray:
    """bool (Q,D): within 8 m and 30 deg, and allowed."""
    dist = np.linalg.norm(qxy[:, None] - dxy[None], axis=2)
    dyaw_ = np.abs((qyaw[:, None] - dyaw[None] + np.pi) % (2 * np.pi) - np.pi)
    return (dist <= 8.0) & (dyaw_ <= np.radians(30)) & allowed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--towns", type=Path, nargs="+", required=True)
    p.add_argument("--model", action="append", required=True, help="BLOCK=FILE (a model with that block's local outputs)")
    p.add_argument("--stride", type=int, default=3)
    p.add_argument("--t1", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 3.0, 4.0])
    p.add_argument("--t2", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    p.add_argument("--k", type=int, nargs="+", default=[2, 3, 5, 10])
    p.add_argument("--weight", type=float, nargs="+", default=[0.0],
                   help="0: order by the mutual-match count (EffoVPR); w > 0: by descriptor similarity + w * count")
    args = p.parse_args(argv)
    models = {int(k): Path(v) for k, v in (m.split("=", 1) for m in args.model)}
    cases = []  # per town and case: query (desc, values/attention per block), database (same), allowed, positives
    for town in args.towns:
        data = {}
        for s in ("s1", "s2"):
            stamps, images = session_frames(town / s, args.stride)
            xy, yaw = gt_at(town / s, stamps)
            enc = {block: RuntimeEncoder(path, providers=["cpu"]).encode(images) for block, path in models.items()}
            data[s] = (stamps, xy, yaw, enc)
        st1, xy1, yaw1, e1 = data["s1"]
        st2, xy2, yaw2, e2 = data["s2"]
        intra = positives(xy1, yaw1, xy1, yaw1, st1[None, :] <= st1[:, None] - 20.0)
        cases.append((f"{town.name} s1", e1, e1, intra, st1[None, :] <= st1[:, None] - 20.0))
        cross = positives(xy2, yaw2, xy1, yaw1, np.ones((len(st2), len(st1)), bool))
        cases.append((f"{town.name} s2->s1", e2, e1, cross, np.ones_like(cross)))
    blocks = sorted(models)
    grid = list(itertools.product(blocks, args.t1, (16,), args.t2, args.k, args.weight))
    results = []
    base = {}
    for block, t1, ntok, t2, k, weight in grid:
        cfg = RerankConfig(enabled=True, top_k=k, min_attention=t1, max_tokens=ntok, min_similarity=t2)
        r1s = []
        for name, eq, ed, pos, allowed in cases:
            q, d = eq[block], ed[block]
            qtok = [select_tokens(q.local_values[i], q.local_attention[i], cfg) for i in range(len(q.descriptors))]
            dtok = qtok if eq is ed else [select_tokens(d.local_values[i], d.local_attention[i], cfg) for i in range(len(d.descriptors))]
            sims = q.descriptors @ d.descriptors.T
            sims[~allowed] = -np.inf
            hit_desc = hit_rr = n = 0
            for i in np.flatnonzero(pos.any(axis=1)):
                top = np.argsort(-sims[i])[:k]
                top = top[np.isfinite(sims[i, top])]
                order, _ = rerank(qtok[i], [dtok[j] for j in top], sims[i, top], t2, weight)
                n += 1
                hit_desc += bool(pos[i, top[0]])
                hit_rr += bool(pos[i, top[order[0]]])
            base[name] = hit_desc / n
            r1s.append(hit_rr / n)
        results.append((float(np.mean(r1s)), (block, t1, ntok, t2, k, weight), r1s))
    names = [c[0] for c in cases]
    print("descriptor R@1: " + ", ".join(f"{n} {base[n]:.3f}" for n in names) + f" (mean {np.mean(list(base.values())):.3f})")
    results.sort(key=lambda r: r[0])
    best_of = {}
    for r in results:  # sorted ascending: the last one seen per key is its best
        best_of[("weight", r[1][5])] = r
        best_of[("block", r[1][0], r[1][5])] = r
    print("best per weight, and per block and weight:")
    for key in sorted(best_of, key=str):
        mean, setting, r1s = best_of[key]
        print(f"  {key}: {setting} mean {mean:.3f} (" + ", ".join(f"{r:.3f}" for r in r1s) + ")")
    for mean, (block, t1, ntok, t2, k, weight), r1s in results[-25:]:
        print(f"block={block} T1={t1} max_tokens={ntok} T2={t2} K={k} weight={weight}: re-ranked R@1 " +
              ", ".join(f"{n} {r:.3f}" for n, r in zip(names, r1s)) + f" (mean {mean:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
