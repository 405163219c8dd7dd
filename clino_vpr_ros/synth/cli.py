"""``clino-vpr synth``: synthetic towns -> training sets, eval sets, ROS 2 bags, previews, speed.

Seed conventions (keep training and evaluation towns apart):
  * training towns (``gsv``):            seeds 0..99      (default 0 1 2 3)
  * evaluation towns (``eval``):         seeds 900..949   (default 900)
  * bag / loop-closure towns (``sessions``, ``preview``): seeds 950..999 (default 950)
Session seeds pick the route rectangle, start point, weave and odometry noise; condition clutter seeds
pick vehicles, pedestrians and clouds. Everything is deterministic from these numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from clino_vpr_ros.atomic import atomic_write
from clino_vpr_ros.synth.conditions import CONDITIONS, get_condition
from clino_vpr_ros.synth.session import Session, SessionConfig, generate_session, gt_cross_session_pairs
from clino_vpr_ros.synth.town import generate_town

logger = logging.getLogger(__name__)

SESSION_TWO_ODOM_OFFSET = (4.0, -3.0, 7.0)  # metres, metres, degrees: session 2's odom frame in the world
DAY_S = 86_400.0
# bags carry camera-sized frames (the encoder resizes); at 240x320 ORB verification of day/dusk revisits
# succeeds about 60% of the time, at 224x224 with ORB's default 31 px patch far less often
SESSION_IMAGE_SIZE = (240, 320)


def _size(values: list[int]) -> tuple[int, int]:
    if len(values) != 2 or min(values) < 8:
        raise argparse.ArgumentTypeError("--size takes HEIGHT WIDTH (pixels, >= 8)")
    return int(values[0]), int(values[1])


def two_sessions(town_seed: int, seeds: tuple[int, int] = (1, 2), conditions: tuple[str, str] = ("day", "dusk"),
                 n_frames: int = 240, image_size: tuple[int, int] = SESSION_IMAGE_SIZE,
                 odom_offset: tuple[float, float, float] = SESSION_TWO_ODOM_OFFSET) -> tuple[Session, Session]:
    """The standard two-session pair of one town: different days, conditions, routes and odom origins.

    Session 1's odometry frame coincides with the world; session 2's is offset by ``odom_offset``
    (dx m, dy m, dyaw deg), which multi-session merging must recover.
    """
    town = generate_town(town_seed)
    base = SessionConfig(n_frames=n_frames, image_size=image_size)
    s1 = generate_session(town, "s1", seeds[0], get_condition(conditions[0]), base)
    s2 = generate_session(town, "s2", seeds[1], get_condition(conditions[1]),
                          replace(base, odom_offset=tuple(odom_offset), start_time_s=DAY_S))
    return s1, s2


def _cmd_gsv(a: argparse.Namespace) -> int:
    from clino_vpr_ros.synth.writers import write_gsv_dataset

    out = write_gsv_dataset(Path(a.out), a.towns, a.places, a.img_per_place, a.size)
    print(f"GSV-Cities-format set: {out} (towns {a.towns}, {a.places} places x {a.img_per_place} images)")
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from clino_vpr_ros.synth.writers import write_downloader_sets

    dirs = write_downloader_sets(Path(a.out), a.town, a.places, a.size, overwrite=a.overwrite)
    for k, v in dirs.items():
        print(f"{k}: {v}")
    return 0


def _cmd_sessions(a: argparse.Namespace) -> int:
    from clino_vpr_ros.synth.writers import write_bag

    s1, s2 = two_sessions(a.town, tuple(a.seeds), tuple(a.conditions), a.frames, a.size, tuple(a.odom_offset))
    out = Path(a.out)
    for s in (s1, s2):
        path = write_bag(s, out / s.session_id, a.storage, a.compressed, overwrite=a.overwrite)
        print(f"{s.session_id}: {path} ({len(s.frames)} frames, condition {s.condition.name}, "
              f"{len(s.gt_loop_pairs())} intra-session gt loop pairs)")
    print(f"inter-session gt pairs (s2 -> s1): {len(gt_cross_session_pairs(s2, s1))}")
    return 0


def _cmd_preview(a: argparse.Namespace) -> int:
    s1, s2 = two_sessions(a.town, tuple(a.seeds), tuple(a.conditions), a.frames, a.size)
    out = Path(a.out)
    if out.is_dir() or out.suffix.lower() != ".png":  # a folder was meant: put the sheet inside it
        out = out / "preview.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_preview([s1, s2], out, a.per_session)
    print(f"preview: {out}")
    return 0


_LABEL_COLOURS = np.array([[0, 0, 0], [120, 170, 240], [150, 90, 70], [80, 80, 80], [200, 190, 170],
                           [60, 160, 60], [230, 40, 40], [250, 210, 30], [240, 30, 200], [110, 80, 40]], np.uint8)


def write_preview(sessions: list[Session], out: Path, per_session: int = 6) -> Path:
    """PNG: a top-down town map with routes and gt loops, and a contact sheet (RGB, labels, depth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from tqdm import tqdm

    town = sessions[0].town
    rows = len(sessions) * 3
    fig = plt.figure(figsize=(3 + 2.0 * per_session + 6, max(2.0 * rows, 8)))
    gs = fig.add_gridspec(rows, per_session + 3)
    ax = fig.add_subplot(gs[:, per_session:])
    cmap = plt.get_cmap("tab20")
    for b, (x0, y0, _, x1, y1, h) in enumerate(town.buildings):
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, color=cmap(town.building_style[b] % 20), alpha=0.55))
    ax.scatter(town.trees[:, 0], town.trees[:, 1], s=3, c="green")
    colours = ["tab:blue", "tab:red", "tab:purple", "tab:orange"]
    for k, s in enumerate(sessions):
        p = s.world_T_base[:, :2, 3]
        ax.plot(p[:, 0], p[:, 1], "-", color=colours[k % 4], lw=1.2, label=f"{s.session_id} ({s.condition.name})")
        for q, m in s.gt_loop_pairs()[::7]:
            ax.plot([p[q, 0], p[m, 0]], [p[q, 1], p[m, 1]], "-", color="k", lw=0.4)
    if len(sessions) > 1:
        pq, pd = sessions[1].world_T_base[:, :2, 3], sessions[0].world_T_base[:, :2, 3]
        for q, m in gt_cross_session_pairs(sessions[1], sessions[0])[::15]:
            ax.plot([pq[q, 0], pd[m, 0]], [pq[q, 1], pd[m, 1]], ":", color="gray", lw=0.5)
    w, h = town.extent
    ax.set_xlim(0, w)
    ax.set_ylim(0, h)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title(f"town {town.seed}: aliasing {town.aliasing_fraction():.2f}; black: gt loops, dotted: cross-session")
    for k, s in tqdm(list(enumerate(sessions)), desc="preview", unit="session"):
        idx = np.linspace(0, len(s.frames) - 1, per_session).astype(int)
        for c, i in enumerate(idx):
            r = s.render(int(i))
            depth = np.where(np.isfinite(r.depth), r.depth, np.nan)
            for row, (img, kw) in enumerate(((r.rgb, {}), (_LABEL_COLOURS[r.labels], {}), (depth, {"cmap": "magma"}))):
                a = fig.add_subplot(gs[3 * k + row, c])
                a.imshow(img, **kw)
                a.set_axis_off()
                if row == 0:
                    a.set_title(f"{s.session_id} t={s.frames[i].stamp - s.frames[0].stamp:.0f}s", fontsize=7)
    fig.tight_layout()
    try:
        return atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=80))
    finally:
        plt.close(fig)


def _cmd_bench(a: argparse.Namespace) -> int:
    """Renderer frames/s on exactly one core (the process is pinned to one CPU while it measures)."""
    pinned = hasattr(os, "sched_setaffinity")
    before = os.sched_getaffinity(0) if pinned else None
    try:
        if pinned:
            os.sched_setaffinity(0, {min(before)})
        result = bench_renderer(a.town, a.size, a.frames, a.condition)
    finally:
        if pinned:
            os.sched_setaffinity(0, before)
    result["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    result["cores_used"] = 1 if pinned else None
    print(json.dumps(result))
    return 0


def bench_renderer(town_seed: int, size: tuple[int, int], frames: int, condition: str) -> dict:
    """Render ``frames`` frames of a session drive; returns frames/s and the settings used."""
    from clino_vpr_ros.synth.render import Renderer

    town = generate_town(town_seed)
    s = generate_session(town, "bench", 1, get_condition(condition), SessionConfig(n_frames=max(frames, 150), image_size=size))
    r = Renderer(town, size)
    r.render(s.world_T_camera(0), s.condition, 0.0)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(frames):
        r.render(s.world_T_camera(i), s.condition, s.frames[i].stamp)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    # frames per CPU-second is the one-core throughput even when other processes share the core
    return {"frames_per_s": frames / dt, "frames_per_cpu_s": frames / dc, "frames": frames, "image_size": list(size), "condition": condition,
            "town": town_seed, "cpu_count": os.cpu_count()}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clino-vpr synth", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    size = {"nargs": 2, "type": int, "default": [224, 224], "metavar": ("HEIGHT", "WIDTH")}

    g = sub.add_parser("gsv", help="GSV-Cities-format training set (one city per town seed)")
    g.add_argument("--out", required=True)
    g.add_argument("--towns", nargs="+", type=int, default=[0, 1, 2, 3], help="training town seeds (0..99)")
    g.add_argument("--places", type=int, default=200, help="places per town")
    g.add_argument("--img-per-place", type=int, default=4)
    g.add_argument("--size", **size)
    g.set_defaults(func=_cmd_gsv)

    e = sub.add_parser("eval", help="downloader-format database/queries, same- and cross-condition")
    e.add_argument("--out", required=True)
    e.add_argument("--town", type=int, default=900, help="evaluation town seed (900..949)")
    e.add_argument("--places", type=int, default=150)
    e.add_argument("--size", **size)
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=_cmd_eval)

    for name, helptext in (("sessions", "two sessions of one town on different days -> ROS 2 bags + ground truth"),
                           ("preview", "PNG: town map with routes and gt loops + contact sheet")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--out", required=True, help="output directory" if name == "sessions" else "output PNG (or a folder: <folder>/preview.png)")
        s.add_argument("--town", type=int, default=950, help="town seed (950..999)")
        s.add_argument("--seeds", nargs=2, type=int, default=[1, 2], help="session seeds")
        s.add_argument("--conditions", nargs=2, default=["day", "dusk"], choices=list(CONDITIONS))
        s.add_argument("--frames", type=int, default=240, help="frames per session (5 Hz)")
        s.add_argument("--size", **{**size, "default": list(SESSION_IMAGE_SIZE)})
        if name == "sessions":
            s.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
            s.add_argument("--compressed", action="store_true", help="CompressedImage (jpeg) instead of raw rgb8")
            s.add_argument("--odom-offset", nargs=3, type=float, default=list(SESSION_TWO_ODOM_OFFSET),
                           metavar=("DX", "DY", "DYAW_DEG"), help="session 2's odom frame in the world")
            s.add_argument("--overwrite", action="store_true")
            s.set_defaults(func=_cmd_sessions)
        else:
            s.add_argument("--per-session", type=int, default=6)
            s.set_defaults(func=_cmd_preview)

    b = sub.add_parser("bench", help="renderer frames/s (run with OMP_NUM_THREADS=1 for one core)")
    b.add_argument("--frames", type=int, default=200)
    b.add_argument("--size", **size)
    b.add_argument("--town", type=int, default=950)
    b.add_argument("--condition", default="day", choices=list(CONDITIONS))
    b.set_defaults(func=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if hasattr(args, "size"):
        args.size = _size(args.size)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
