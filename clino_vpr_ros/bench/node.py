"""``clino-vpr bench node``: the ROS 2 node measured over real DDS, node in its own process.

Measures, on generated drives (``clino_vpr_ros.synth``):

1. end-to-end latency: image publish -> ``gate_mask`` publish (every encoded frame) and image
   publish -> ``loop_closures`` publish (frames that close a loop; a second session replayed
   against the first one's saved map, so closures come at a steady pace);
2. node overhead: end-to-end latency minus the encoder time the node reports (/diagnostics);
3. the highest input rate sustained without drops, worst case: every frame far enough apart in
   time to be encoded (a camera at that rate with real stamps is cheaper: frames closer than the
   keyframe interval are skipped before encoding);
4. drop behaviour at 30 Hz, 640x480, real 30 Hz stamps and worst case;
5. resident memory of the node process over a long sped-up replay (keyframes keep growing).

Prints one table. Run: ``clino-vpr bench node [--model M] [--long-frames 3000]``.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[2]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _frames(size_hw: tuple[int, int], n: int, seed: int, condition: str = "day"):
    from clino_vpr_ros.synth import CONDITIONS, SessionConfig, generate_session, generate_town

    town = generate_town(seed)
    cfg = SessionConfig(n_frames=n, rate_hz=2.0, image_size=size_hw, start_time_s=1000.0)
    session = generate_session(town, f"bench{seed}", seed, CONDITIONS[condition], cfg)
    images = [cv2.cvtColor(session.render(i).rgb, cv2.COLOR_RGB2BGR) for i in tqdm(range(n), desc=f"render {n} frames")]
    return session, images


class _Bench:
    def __init__(self, model: Path, workdir: Path) -> None:
        from clino_vpr_ros.ros.harness import fresh_domain_id

        self.model, self.workdir = model, workdir
        self.domain = fresh_domain_id()

    def start(self, name: str, **params):
        from clino_vpr_ros.ros.harness import NodeClient, NodeProcess

        base = {"model_path": str(self.model), "session_id": name, "map_path": str(self.workdir / f"{name}.npz"),
                "diagnostics_period_s": 0.1, "autosave_period_s": 0.0}
        node = NodeProcess(self.domain, self.workdir / f"{name}.log", params={**base, **params})
        client = NodeClient(self.domain, depth=10)
        client.wait_for_node(node)
        return node, client

    @staticmethod
    def stop(node, client) -> None:
        client.close()
        node.stop(signal.SIGINT)


def _latency(bench: _Bench, session, images, results: dict) -> None:
    """Session replayed twice: the second run (against the saved first) yields closures."""
    n = len(images)
    node, client = bench.start("lat_a")
    for i in tqdm(range(n), desc="latency: first session"):
        _publish(client, session, images, i, 0.0)
        client.wait_until(lambda: client.handled() >= i + 1, 60, f"frame {i}", node)
    client.call("/clino_vpr/save_map")
    bench.stop(node, client)

    node, client = bench.start("lat_b", prior_maps=[str(bench.workdir / "lat_a.npz")], publish_gate_mask=True)
    sent: dict[float, float] = {}  # stamp -> publish time (time.monotonic)
    encode = []
    for i in tqdm(range(n), desc="latency: second session"):
        n_masks = len(client.received.masks)
        sent[round(session.frames[i].stamp + 86400.0, 6)] = _publish(client, session, images, i, 86400.0)
        client.wait_until(lambda: client.handled() >= i + 1 and len(client.received.masks) > n_masks, 60,
                          f"frame {i} and its gate mask", node)
        encode.append(float(client.last_diagnostics().get("encode_ms_mean", "nan")))
    mask_lat = _latencies(client.received.masks, sent)
    closure_lat = _latencies(client.received.closures, sent)
    bench.stop(node, client)
    enc = float(np.median([e for e in encode if e > 0])) if any(e > 0 for e in encode) else float("nan")
    results["latency publish->gate_mask (ms, median / p95)"] = _pct(mask_lat)
    results["latency publish->loop_closures (ms, median / p95)"] = _pct(closure_lat) + f" ({len(closure_lat)} closures)"
    results["encoder time in node (ms, median)"] = f"{enc:.1f}"
    if mask_lat:
        results["node overhead = latency - encoder (ms, median)"] = f"{np.median(mask_lat) - enc:.1f}"


def _latencies(received: list, sent: dict[float, float]) -> list[float]:
    """(receive time, stamped message) pairs -> latencies in ms for messages whose stamp was sent."""
    out = []
    for t_recv, msg in received:
        stamp = round(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9, 6)
        if stamp in sent:
            out.append((t_recv - sent[stamp]) * 1e3)
    return out


def _publish(client, session, images, i: int, offset: float, stamp: float | None = None) -> float:
    stamp = session.frames[i].stamp + offset if stamp is None else stamp
    client.publish_camera_info(session.K, session.image_size)
    client.publish_odom(stamp, session.frames[i].odom_T_base)
    t = time.monotonic()
    client.publish_image(stamp, images[i], "bgr8")
    return t


def _pct(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{np.median(values):.1f} / {np.percentile(values, 95):.1f}"


def _rate_run(bench: _Bench, images, rate_hz: float, duration_s: float, stamp_step: float, name: str) -> dict:
    """Publish at ``rate_hz`` for ``duration_s``; returns received / processed / dropped."""
    node, client = bench.start(name, use_odom=False, use_camera_info=False, engine_preset="no_odometry")
    n = int(rate_hz * duration_s)
    t0 = time.monotonic()
    for k in range(n):
        target = t0 + k / rate_hz
        while time.monotonic() < target:
            time.sleep(min(0.001, max(0.0, target - time.monotonic())))
        client.publish_image(5000.0 + k * stamp_step, images[k % len(images)], "bgr8")
    client.wait_until(lambda: client.counter("frames_received") >= n and client.handled() >= client.counter("frames_received"),
                      60, "the node to drain", node)
    time.sleep(0.3)
    d = client.last_diagnostics()
    out = {"sent": n, "received": client.counter("frames_received"), "processed": client.counter("frames_processed"),
           "dropped": client.counter("frames_dropped"), "rss": _rss_mib(node.pid),
           "achieved_hz": n / max(time.monotonic() - t0, 1e-9), "latency_max": float(d.get("latency_ms_max", "nan"))}
    bench.stop(node, client)
    return out


def _memory(bench: _Bench, session, images, n_frames: int, results: dict) -> None:
    """Long sped-up replay: images cycled, odometry keeps advancing so every frame is a new keyframe."""
    node, client = bench.start("mem", use_camera_info=True)
    samples = []
    step = 3.5  # metres per frame along x: every frame is a keyframe (min_distance_m 1 m)
    for k in tqdm(range(n_frames), desc="memory: long replay"):
        i = k % len(images)
        stamp = 10000.0 + k * 0.5
        T = np.eye(4)
        T[0, 3] = k * step
        client.publish_camera_info(session.K, session.image_size)
        client.publish_odom(stamp, T)
        client.publish_image(stamp, images[i], "bgr8")
        client.wait_until(lambda: client.handled() >= k + 1, 60, f"frame {k}", node)
        if k % max(1, n_frames // 10) == 0 or k == n_frames - 1:
            samples.append((k + 1, client.counter("engine_keyframes"), _rss_mib(node.pid)))
    bench.stop(node, client)
    (k0, kf0, r0), (k1, kf1, r1) = samples[1] if len(samples) > 1 else samples[0], samples[-1]
    growth = (r1 - r0) / max(kf1 - kf0, 1) * 1000.0
    results[f"RSS over {n_frames}-frame replay (MiB, first sample -> end)"] = f"{samples[0][2]:.0f} -> {r1:.0f}"
    results["RSS growth per 1000 keyframes (MiB)"] = f"{growth:.1f} ({kf1} keyframes at the end)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="clino-vpr bench node", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=REPO / "models" / "clino-vpr-tiny.onnx", help="ONNX encoder")
    ap.add_argument("--latency-frames", type=int, default=60, help="frames per session of the latency run")
    ap.add_argument("--rates", type=str, default="2,5,10,15,20,30", help="input rates (Hz) tried for the no-drop test")
    ap.add_argument("--rate-seconds", type=float, default=4.0, help="seconds per rate")
    ap.add_argument("--long-frames", type=int, default=1500, help="frames of the memory replay")
    ap.add_argument("--workdir", type=Path, default=None, help="where logs and maps go (default: a temp dir)")
    args = ap.parse_args(argv)
    if not args.model.exists():
        print(f"model {args.model} not found: pass --model (an ONNX file from `clino-vpr export`)")
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="clino_vpr_bench_node_"))
    workdir.mkdir(parents=True, exist_ok=True)
    bench = _Bench(args.model, workdir)
    results: dict[str, str] = {}

    session, images = _frames((480, 640), args.latency_frames, seed=11)
    _latency(bench, session, images, results)

    rates = [float(r) for r in args.rates.split(",")]
    best = 0.0
    for rate in rates:
        r = _rate_run(bench, images, rate, args.rate_seconds, stamp_step=1.0, name=f"rate{int(rate)}")
        results[f"worst case {rate:g} Hz: received / processed / dropped"] = (
            f"{r['received']}/{r['sent']} / {r['processed']} / {r['dropped']}")
        if r["dropped"] == 0 and r["received"] == r["sent"]:
            best = max(best, rate)
    results["highest worst-case rate without drops (Hz, 640x480)"] = f"{best:g}"
    for label, step in (("real 30 Hz stamps", 1.0 / 30.0), ("worst case", 1.0)):
        r = _rate_run(bench, images, 30.0, 5.0, stamp_step=step, name="drop30")
        results[f"30 Hz 640x480, {label}: recv / processed / dropped / max latency ms"] = (
            f"{r['received']}/{r['sent']} / {r['processed']} / {r['dropped']} / {r['latency_max']:.0f}")

    mem_session, mem_images = _frames((240, 320), 100, seed=12)
    _memory(bench, mem_session, mem_images, args.long_frames, results)

    width = max(len(k) for k in results)
    print(f"\nclino-vpr bench node  (model {args.model.name}, logs in {workdir})")
    print("-" * (width + 30))
    for k, v in results.items():
        print(f"{k:<{width}}  {v}")
    return 0
