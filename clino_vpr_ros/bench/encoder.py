"""``clino-vpr bench encoder``: per-image latency of the gated encoder, PyTorch eager vs onnxruntime CPU.

For each preset (random weights: latency does not depend on their values) the model is built,
exported to a temporary ONNX (parity-checked like every export) and both run on the same uint8
batches at batch 1 and batch N with the same thread count. Reported: median and p90 milliseconds
per image. The last line is ``ort_vs_torch_speedup=<median torch / median ort>`` for the smallest
preset at batch 1.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

LOG = logging.getLogger(__name__)


def _time_per_image(run, batch: np.ndarray, repeats: int, warmup: int, bar: tqdm) -> np.ndarray:
    for _ in range(warmup):
        run(batch)
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        run(batch)
        times[i] = (time.perf_counter() - t0) * 1e3 / len(batch)
        bar.update(1)
    return times


def bench_preset(preset: str, batches: list[int], repeats: int, warmup: int, threads: int, bar: tqdm) -> list[dict]:
    """Rows {preset, backend, batch, median_ms, p90_ms} for one preset."""
    import onnxruntime as ort
    import torch

    from clino_vpr_ros.config import get_model_config
    from clino_vpr_ros.export import export_onnx, parity_images
    from clino_vpr_ros.model import build_encoder

    torch.set_num_threads(threads)
    cfg = get_model_config(preset)
    bar.set_description(f"{preset}: build+export")
    model = build_encoder(cfg).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / f"{preset}.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

        def run_torch(x: np.ndarray) -> None:
            with torch.inference_mode():
                model(torch.from_numpy(x))

        def run_ort(x: np.ndarray) -> None:
            session.run(None, {"images": x})

        for b in batches:
            images = parity_images(cfg.image_size, n=b, seed=b)
            for backend, fn in (("torch", run_torch), ("ort", run_ort)):
                bar.set_description(f"{preset}: {backend} batch {b}")
                t = _time_per_image(fn, images, repeats, warmup, bar)
                rows.append(
                    {"preset": preset, "backend": backend, "batch": b,
                     "median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90))}
                )
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'preset':<7} {'backend':<8} {'batch':>5} {'median ms/img':>14} {'p90 ms/img':>11} {'img/s':>8}"]
    for r in rows:
        lines.append(
            f"{r['preset']:<7} {r['backend']:<8} {r['batch']:>5} {r['median_ms']:>14.2f} {r['p90_ms']:>11.2f} "
            f"{1e3 / r['median_ms']:>8.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clino-vpr bench encoder", description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"], help="presets, smallest first")
    parser.add_argument("--batch", type=int, default=8, help="the larger batch size (batch 1 is always run)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per (preset, backend, batch)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for both backends")
    args = parser.parse_args(argv)
    from clino_vpr_ros.config import get_model_config

    for p in args.presets:
        get_model_config(p)  # ValueError listing valid names before any work
    batches = sorted({1, args.batch})
    total = len(args.presets) * len(batches) * 2 * args.repeats
    rows: list[dict] = []
    with tqdm(total=total, unit="call") as bar:
        for preset in args.presets:
            rows += bench_preset(preset, batches, args.repeats, args.warmup, args.threads, bar)
    print(f"gated encoder latency, CPU, {args.threads} thread(s), {args.repeats} timed calls each")
    print(format_table(rows))
    first = args.presets[0]
    med = {(r["backend"]): r["median_ms"] for r in rows if r["preset"] == first and r["batch"] == 1}
    print(f"ort_vs_torch_speedup={med['torch'] / med['ort']:.3f}")
    return 0
