"""``clino-vpr bench node``: the ROS 2 node measured over real DDS, node in its own process.

Measures, on generated drives (``clino_vpr_ros.synth``):

1. end-to-end latency: image publish -> ``gate_mask`` publish (every encoded frame) and image
   publish -> ``loop_closures`` publish (frames that close a loop; a second session replayed
   against the first one's saved map, so closures come at a steady pace);
2. node overhead: end-to-end latency minus the encoder time the node reports (/diagnostics);
3. the highest input rate sustained without drops, "worst case": stamps 1 s apart so every frame
   is encoded (``no_odometry`` preset: keyframes, which also pay local features, come from its
   time / novelty triggers); a camera at that rate with real stamps is cheaper: frames closer than
   the keyframe interval are skipped before encoding;
4. drop behaviour at 30 Hz, 640x480, real 30 Hz stamps and worst case;
5. keeping up with a 30 Hz camera: images + odometry at 30 Hz, real stamps, a robot at 3 m/s, so
   the default preset makes 1-2 keyframes per second; frames received / processed / dropped; then
   the same during a revisit without depth (day 2 against day 1's map, 2 keyframes per second, each
   closing a loop with a triangulated metric pose): keyframes per second and closures published;
6. the cost per stage of a keyframe (encode, local features, retrieval or sequence scoring,
   re-ranking, verification, pose = triangulation + PnP, the rest): median and p90 ms over the
   keyframes of a day-2 drive against day 1's map, measured in-process with the pipeline the node
   runs (``LoopClosurePipeline.stages``), re-ranking on when the model has the local outputs;
7. resident memory of the node process over a long sped-up replay (keyframes keep growing).

Prints the tables and the load average (the machine may be shared). Run:
``clino-vpr bench node [--model M] [--long-frames 3000] [--memory-only] [--stages-only]``.
"""

from __future__ import annotations

import argparse
import functools
import signal
import tempfile
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from clino_vpr_ros.assets import default_model_path


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


@functools.lru_cache(maxsize=4)
def _frames(size_hw: tuple[int, int], n: int, seed: int, shift_m: float = 0.0):
    """A generated drive: (session, BGR frames, odom poses), optionally driven ``shift_m`` further right.
    Cached: the per-stage run and the revisit keep-up run drive the same two days (read-only use)."""
    from clino_vpr_ros.synth import CONDITIONS, SessionConfig, generate_session, generate_town, pose2d

    town = generate_town(seed)
    # a route must lap its block; only the first n frames are rendered
    cfg = SessionConfig(n_frames=max(n, 128), rate_hz=2.0, image_size=size_hw, start_time_s=1000.0)
    session = generate_session(town, f"bench{seed}", seed, CONDITIONS["day"], cfg)
    right = pose2d(0.0, -shift_m, 0.0)
    images, odom = [], []
    for i in tqdm(range(n), desc=f"render {n} frames {size_hw[1]}x{size_hw[0]}"):
        world_T_camera = session.frames[i].world_T_base @ right @ session.base_T_camera
        rgb = session.renderer.render(world_T_camera, session.condition, session.frames[i].stamp).rgb
        images.append(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        odom.append(session.frames[i].odom_T_base @ right)
    return session, images, odom


class _Bench:
    def __init__(self, model: Path, workdir: Path, large_data: bool) -> None:
        from clino_vpr_ros.ros.harness import fresh_domain_id

        self.model, self.workdir, self.large_data = model, workdir, large_data
        self.domain = fresh_domain_id()

    def start(self, name: str, **params):
        from clino_vpr_ros.ros.harness import NodeClient, NodeProcess

        base = {"model_path": str(self.model), "session_id": name, "map_path": str(self.workdir / f"{name}.npz"),
                "diagnostics_period_s": 0.1, "autosave_period_s": 0.0}
        node = NodeProcess(self.domain, self.workdir / f"{name}.log", params={**base, **params},
                           large_data=self.large_data)
        client = NodeClient(self.domain, depth=10, session_id=name, large_data=self.large_data)
        client.wait_for_node(node, odom=params.get("use_odom", True), camera_info=params.get("use_camera_info", True))
        return node, client

    @staticmethod
    def stop(node, client) -> None:
        client.close()
        node.stop(signal.SIGINT)


def _latency(bench: _Bench, size_hw: tuple[int, int], n: int, results: dict) -> None:
    """A drive mapped on day 1, driven again 1 m further right on day 2 against day 1's map:
    day 2 closes loops at a steady pace, so closure latency is measured on many frames."""
    from clino_vpr_ros.ros.conversions import matrix_to_quaternion

    session, day1, odom1 = _frames(size_hw, n, seed=11)
    _, day2, odom2 = _frames(size_hw, n, seed=11, shift_m=1.0)
    mount = [*map(float, session.base_T_camera[:3, 3]), *matrix_to_quaternion(session.base_T_camera[:3, :3])]
    node, client = bench.start("lat_a", base_T_camera=mount)
    try:
        for i in tqdm(range(n), desc="latency: day 1"):
            _publish(client, session, day1[i], odom1[i], session.frames[i].stamp)
            client.wait_until(lambda: client.handled() >= i + 1, 60, f"frame {i}", node)
        client.call("/clino_vpr/save_map")
    finally:
        bench.stop(node, client)

    node, client = bench.start("lat_b", prior_maps=[str(bench.workdir / "lat_a.npz")], publish_gate_mask=True,
                               base_T_camera=mount)
    sent: dict[float, float] = {}  # stamp -> publish time (time.monotonic)
    encode, pipeline = [], []
    try:
        for i in tqdm(range(n), desc="latency: day 2"):
            n_masks = len(client.received.masks)
            stamp = session.frames[i].stamp + 86400.0
            sent[round(stamp, 6)] = _publish(client, session, day2[i], odom2[i], stamp)
            client.wait_until(lambda: client.handled() >= i + 1, 60, f"frame {i}", node)
            try:  # a frame skipped before the first odometry has no mask
                client.wait_until(lambda: len(client.received.masks) > n_masks, 2, f"the gate mask of frame {i}", node)
            except TimeoutError:
                pass
            d = client.last_diagnostics()
            encode.append(float(d.get("encode_ms_mean", "nan")))
            pipeline.append(float(d.get("pipeline_ms_mean", "nan")))
        mask_lat = _latencies(client.received.masks, sent)
        closure_lat = _latencies(client.received.closures, sent)
    finally:
        bench.stop(node, client)
    enc, pipe = _positive_median(encode), _positive_median(pipeline)
    label = f"{size_hw[1]}x{size_hw[0]}"
    results[f"latency publish->gate_mask, {label} (ms, median / p95)"] = _pct(mask_lat)
    results[f"latency publish->loop_closures, {label} (ms, median / p95)"] = (
        _pct(closure_lat) + f" ({len(closure_lat)} closures)")
    results["encoder time in the node (ms, median)"] = f"{enc:.1f}"
    results["pipeline time in the node: encoder + engine (ms, median)"] = f"{pipe:.1f}"
    if mask_lat:
        results["node overhead = latency - encoder (ms, median)"] = f"{np.median(mask_lat) - enc:.1f}"
        results["adapter + DDS = latency - pipeline (ms, median)"] = f"{np.median(mask_lat) - pipe:.1f}"


def _positive_median(values: list[float]) -> float:
    """Median of the diagnostics windows that held a sample (a window without frames reports 0)."""
    kept = [v for v in values if v > 0 and np.isfinite(v)]
    return float(np.median(kept)) if kept else float("nan")


def _latencies(received: list, sent: dict[float, float]) -> list[float]:
    """(receive time, stamped message) pairs -> latencies in ms for messages whose stamp was sent."""
    out = []
    for t_recv, msg in received:
        stamp = round(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9, 6)
        if stamp in sent:
            out.append((t_recv - sent[stamp]) * 1e3)
    return out


def _publish(client, session, image: np.ndarray, odom_T_base: np.ndarray, stamp: float) -> float:
    """camera_info + odometry + image; returns the image's publish time (time.monotonic)."""
    client.publish_camera_info(session.K, session.image_size)
    client.publish_odom(stamp, odom_T_base)
    t = time.monotonic()
    client.publish_image(stamp, image, "bgr8")
    return t


def _pct(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{np.median(values):.1f} / {np.percentile(values, 95):.1f}"


def _paced(n: int, rate_hz: float, publish: Callable[[int], None]) -> float:
    """Call ``publish(k)`` for k < n at ``rate_hz`` (wall clock: this is the input rate under test);
    returns the rate achieved (Hz)."""
    t0 = time.monotonic()
    for k in range(n):
        target = t0 + k / rate_hz
        while time.monotonic() < target:
            time.sleep(min(0.001, max(0.0, target - time.monotonic())))
        publish(k)
    return n / max(time.monotonic() - t0, 1e-9)


def _rate_run(bench: _Bench, images, rate_hz: float, duration_s: float, stamp_step: float, name: str) -> dict:
    """Publish at ``rate_hz`` for ``duration_s``: sent / received (DDS) / processed / dropped (node queue)."""
    node, client = bench.start(name, use_odom=False, use_camera_info=False, engine_preset="no_odometry")
    try:
        n = int(rate_hz * duration_s)
        achieved = _paced(n, rate_hz, lambda k: client.publish_image(5000.0 + k * stamp_step, images[k % len(images)], "bgr8"))
        client.wait_drained(node)
        time.sleep(0.2)
        d = client.last_diagnostics()
        return {"sent": n, "received": client.counter("frames_received"), "processed": client.counter("frames_processed"),
                "dropped": client.counter("frames_dropped"), "rss": _rss_mib(node.pid), "achieved_hz": achieved,
                "latency_max": float(d.get("latency_ms_max", "nan"))}
    finally:
        bench.stop(node, client)


def _keep_up(bench: _Bench, rate_hz: float, duration_s: float, speed_mps: float, results: dict) -> None:
    """Images + odometry + camera_info at ``rate_hz`` with real stamps, the robot moving at
    ``speed_mps``: the default preset's keyframe rules (>= 0.5 s apart, >= 1 m) give 1-2 keyframes/s."""
    session, images, _ = _frames((480, 640), 20, seed=13)
    node, client = bench.start("keepup")
    try:
        n = int(rate_hz * duration_s)

        def publish(k: int) -> None:
            T = np.eye(4)
            T[0, 3] = speed_mps * k / rate_hz
            _publish(client, session, images[k % len(images)], T, 20000.0 + k / rate_hz)

        achieved = _paced(n, rate_hz, publish)
        client.wait_drained(node)
        time.sleep(0.2)
        kf = client.counter("engine_keyframes")
        results[f"{rate_hz:g} Hz 640x480 + odometry at {speed_mps:g} m/s for {duration_s:g} s (achieved {achieved:.1f} Hz): "
                "received/sent, processed, dropped, keyframes (per s)"] = (
            f"{client.counter('frames_received')}/{n}, {client.counter('frames_processed')}, "
            f"{client.counter('frames_dropped')}, {kf} ({kf / duration_s:.1f}/s)")
    finally:
        bench.stop(node, client)


def _keep_up_revisit(bench: _Bench, rate_hz: float, n: int, day1_map: Path, results: dict) -> None:
    """Keeping up during a revisit without depth: day 2 of the per-stage run (``n`` views, 3.5 m apart)
    against day 1's map, RGB + odometry + camera_info at ``rate_hz``, each view held for 0.5 s, so the
    ``default`` preset makes a keyframe of every view (2 per second) and every one of them closes a
    loop with a triangulated metric pose; keyframes per second show whether the node keeps up."""
    from clino_vpr_ros.ros.conversions import matrix_to_quaternion

    session, _, _ = _frames((480, 640), n, seed=11)
    _, day2, odom2 = _frames((480, 640), n, seed=11, shift_m=1.0)
    mount = [*map(float, session.base_T_camera[:3, 3]), *matrix_to_quaternion(session.base_T_camera[:3, :3])]
    node, client = bench.start("keepup_revisit", prior_maps=[str(day1_map)], base_T_camera=mount)
    hold = int(round(rate_hz * 0.5))
    try:
        def publish(k: int) -> None:
            i = k // hold
            _publish(client, session, day2[i], odom2[i], session.frames[i].stamp + 86400.0 + (k % hold) / rate_hz)

        achieved = _paced(n * hold, rate_hz, publish)
        client.wait_drained(node)
        client.wait_for_results(node)
        kf, seconds = client.counter("engine_keyframes"), n * hold / rate_hz
        results[f"revisit without depth, {rate_hz:g} Hz 640x480 + odometry for {seconds:g} s against day 1's map "
                f"(achieved {achieved:.1f} Hz): received/sent, processed, dropped, keyframes (per s), closures"] = (
            f"{client.counter('frames_received')}/{n * hold}, {client.counter('frames_processed')}, "
            f"{client.counter('frames_dropped')}, {kf} ({kf / seconds:.1f}/s), {client.received_counts()[0]}")
    finally:
        bench.stop(node, client)


def _stages(model: Path, n: int, preset: str, day1_map: Path) -> dict[str, list[float]]:
    """Per-keyframe stage times (ms) of day 2 driven against day 1's map, in-process; day 1's map is
    saved to ``day1_map`` (the revisit keep-up run's prior map)."""
    import dataclasses

    from clino_vpr_ros.engine import get_engine_config
    from clino_vpr_ros.pipeline import LoopClosurePipeline

    session, day1, odom1 = _frames((480, 640), n, seed=11)
    _, day2, odom2 = _frames((480, 640), n, seed=11, shift_m=1.0)
    cfg = get_engine_config(preset)
    cfg = dataclasses.replace(cfg, rerank=dataclasses.replace(cfg.rerank, enabled=True))
    times: dict[str, list[float]] = {}
    first = LoopClosurePipeline.from_files(model, cfg, "day1", base_T_camera=session.base_T_camera)
    for i in tqdm(range(n), desc="stages: day 1"):
        first.process(session.frames[i].stamp, day1[i], "bgr8", K=session.K, odom_T_base=odom1[i])
    first.engine.save_map(day1_map)
    second = LoopClosurePipeline.from_files(model, cfg, "day2", base_T_camera=session.base_T_camera)
    second.engine.add_prior_map(first.engine.snapshot())
    for i in tqdm(range(n), desc="stages: day 2"):
        r = second.process(session.frames[i].stamp + 86400.0, day2[i], "bgr8", K=session.K, odom_T_base=odom2[i])
        if r.frame_result.is_keyframe:
            for stage in ("encode", "features", "retrieval", "sequence", "rerank", "verification", "pose", "other"):
                if stage in r.stages:
                    times.setdefault(stage, []).append(r.stages[stage])
            times.setdefault("total", []).append(r.total_ms)
    times["closures"] = [float(second.engine.stats()["published"])]
    return times


def _print_stages(times: dict[str, list[float]], preset: str, model: Path) -> None:
    n = len(times.get("total", []))
    print(f"\nper-stage cost per keyframe, {preset} preset + re-ranking, 640x480, model {model.name} "
          f"({n} keyframes of day 2 against day 1's map, {int(times['closures'][0])} closures; in-process)")
    print(f"{'stage':<14} {'keyframes':>9} {'median ms':>10} {'p90 ms':>8}")
    for stage, values in times.items():
        if stage == "closures":
            continue
        # a stage that did not run for a keyframe (e.g. pose without a candidate) is not counted as 0
        print(f"{stage:<14} {len(values):>9} {np.median(values):>10.2f} {np.percentile(values, 90):>8.2f}")


def _memory(bench: _Bench, n_frames: int, results: dict) -> None:
    """Long sped-up replay: 100 frames cycled while odometry keeps advancing, so every frame is a new keyframe."""
    session, images, _ = _frames((240, 320), 100, seed=12)
    node, client = bench.start("mem")
    samples = []
    try:
        for k in tqdm(range(n_frames), desc="memory: long replay"):
            T = np.eye(4)
            T[0, 3] = 3.5 * k  # metres: past min_distance_m, so every frame is a keyframe
            _publish(client, session, images[k % len(images)], T, 10000.0 + 0.5 * k)
            client.wait_until(lambda: client.handled() >= k + 1, 60, f"frame {k}", node)
            if k % max(1, n_frames // 10) == 0 or k == n_frames - 1:
                samples.append((client.counter("engine_keyframes"), _rss_mib(node.pid)))
    finally:
        bench.stop(node, client)
    (kf0, r0), (kf1, r1) = samples[1] if len(samples) > 1 else samples[0], samples[-1]
    results[f"RSS over a {n_frames}-frame replay (MiB: start, 10%, end)"] = f"{samples[0][1]:.0f}, {r0:.0f}, {r1:.0f}"
    growth = (r1 - r0) / max(kf1 - kf0, 1) * 1000.0
    results["RSS growth per 1000 keyframes (MiB)"] = f"{growth:.1f} ({kf1} keyframes at the end)"
    # the keyframe index (flat: one float32 descriptor per keyframe) is the part that must grow;
    # the descriptor size is read from the map the node saved at shutdown
    from clino_vpr_ros.session_map import SessionMap

    saved = bench.workdir / "mem.npz"
    if saved.is_file():
        index_mib = SessionMap.load(saved).descriptor_dim * 4 * 1000.0 / 2**20
        beyond = growth - index_mib
        results["  of which the index (flat, MiB per 1000 keyframes)"] = f"{index_mib:.1f}"
        results["RSS beyond the index per 1000 keyframes (MiB; target < 9.8 = 10 kB/keyframe)"] = (
            f"{beyond:.1f} ({beyond * 2**20 / 1000.0 / 1e3:.1f} kB/keyframe)")


def _throughput(bench: _Bench, args: argparse.Namespace, results: dict) -> None:
    """Latency, the highest rate without drops, and drop behaviour at 30 Hz."""
    _latency(bench, (480, 640), args.latency_frames, results)
    _, images, _ = _frames((480, 640), 10, seed=13)
    rates = [float(r) for r in args.rates.split(",")]
    best = 0.0
    for rate in rates:
        r = _rate_run(bench, images, rate, args.rate_seconds, stamp_step=1.0, name=f"rate{int(rate)}")
        results[f"worst case {rate:g} Hz: received/sent, processed, dropped"] = (
            f"{r['received']}/{r['sent']}, {r['processed']}, {r['dropped']}")
        if r["dropped"] == 0 and r["received"] == r["sent"]:
            best = max(best, rate)
    results["highest worst-case rate without drops (Hz, 640x480)"] = f"{best:g}"
    # one session (and map file) per run: a node never replaces a map it did not write itself
    for label, step, name in (("real 30 Hz stamps", 1.0 / 30.0, "drop30_real"), ("worst case", 1.0, "drop30_worst")):
        r = _rate_run(bench, images, 30.0, 5.0, stamp_step=step, name=name)
        results[f"30 Hz 640x480, {label}: received/sent, processed, dropped, RSS MiB"] = (
            f"{r['received']}/{r['sent']}, {r['processed']}, {r['dropped']}, {r['rss']:.0f}")
    _keep_up(bench, 30.0, args.keep_up_seconds, 3.0, results)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="clino-vpr bench node", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=default_model_path(), help="ONNX encoder (default: the shipped model)")
    ap.add_argument("--latency-frames", type=int, default=60, help="frames per session of the latency run")
    ap.add_argument("--rates", type=str, default="1,2,3,5,10,20,30", help="input rates (Hz) tried for the no-drop test")
    ap.add_argument("--rate-seconds", type=float, default=4.0, help="seconds per rate")
    ap.add_argument("--long-frames", type=int, default=1000, help="frames of the memory replay")
    ap.add_argument("--memory-only", action="store_true", help="only the long replay (resident memory)")
    ap.add_argument("--stages-only", action="store_true", help="only the per-stage cost table and the 30 Hz keep-up runs")
    ap.add_argument("--stage-frames", type=int, default=60, help="frames per day of the per-stage run")
    ap.add_argument("--stage-preset", default="default", help="engine preset of the per-stage run (re-ranking on)")
    ap.add_argument("--keep-up-seconds", type=float, default=10.0, help="seconds of the 30 Hz keep-up run")
    ap.add_argument("--workdir", type=Path, default=None, help="where logs and maps go (default: a temp dir)")
    ap.add_argument("--default-transports", action="store_true",
                    help="Fast DDS default transports instead of FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA (what a robot "
                         "streaming 640x480+ images should set; without it odometry next to the images gets lost)")
    args = ap.parse_args(argv)
    if not args.model.exists():
        print(f"model {args.model} not found: pass --model (an ONNX file from `clino-vpr export`)")
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="clino_vpr_bench_node_"))
    workdir.mkdir(parents=True, exist_ok=True)
    bench = _Bench(args.model, workdir, large_data=not args.default_transports)
    results: dict[str, str] = {}

    import os

    day1_map = workdir / "stages_day1.npz"
    stage_times = None if args.memory_only else _stages(args.model, args.stage_frames, args.stage_preset, day1_map)
    if args.stages_only:
        _keep_up(bench, 30.0, args.keep_up_seconds, 3.0, results)
    elif not args.memory_only:
        _throughput(bench, args, results)
    if not args.memory_only:
        _keep_up_revisit(bench, 30.0, args.stage_frames, day1_map, results)
    if not args.stages_only:
        _memory(bench, args.long_frames, results)

    width = max(len(k) for k in results)
    transports = "default" if args.default_transports else "LARGE_DATA"
    print(f"\nclino-vpr bench node  (model {args.model.name}, Fast DDS transports {transports}, logs in {workdir})")
    print("-" * (width + 30))
    for k, v in results.items():
        print(f"{k:<{width}}  {v}")
    if stage_times is not None:
        _print_stages(stage_times, args.stage_preset, args.model)
    print("load average (1, 5, 15 min) at the end: %.2f %.2f %.2f on %d CPUs" % (*os.getloadavg(), os.cpu_count() or 0))
    return 0
