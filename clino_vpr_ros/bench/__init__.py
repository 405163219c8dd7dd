"""``clino-vpr bench <name>``: benchmarks, one module per subject, each with ``main(argv) -> int``.

Modules are imported lazily so ``clino-vpr bench index`` never imports torch.
"""

from __future__ import annotations

import importlib
import sys

#: benchmark name -> (module, one-line help)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "encoder": ("clino_vpr_ros.bench.encoder", "per-image latency: PyTorch eager vs onnxruntime CPU"),
    "index": ("clino_vpr_ros.bench.index", "keyframe index add/search latency and recall"),
    "node": ("clino_vpr_ros.ros.bench_node", "end-to-end node latency over DDS (ROS side: lives in clino_vpr_ros.ros)"),
    "fleet": ("clino_vpr_ros.bench.fleet", "robots streaming keyframes into Milvus while querying it, vs faiss"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: clino-vpr bench <benchmark> [options]\n\nbenchmarks:")
        for name, (_, help_) in BENCHMARKS.items():
            print(f"  {name:<8} {help_}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"clino-vpr bench: unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[name][0])
    return int(module.main(rest) or 0)
