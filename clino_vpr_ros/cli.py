"""The ``clino-vpr`` command: one subcommand per pipeline stage.

Each subcommand lives in its own module exposing ``main(argv: list[str] | None) -> int``;
modules are imported lazily so that ``clino-vpr bench index`` on a robot never imports torch.
"""

from __future__ import annotations

import importlib
import logging
import sys

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "export": ("clino_vpr_ros.export", "export a gated encoder to ONNX (+fp16) and check parity"),
    "import": ("clino_vpr_ros.import_salad", "import published weights (DINOv2-SALAD checkpoint) to ONNX"),
    "train": ("clino_vpr_ros.train", "train the gated encoder on a GSV-Cities-format folder"),
    "eval": ("clino_vpr_ros.evaluate", "Recall@K on downloader-format folders; loop-closure PR"),
    "synth": ("clino_vpr_ros.synth.cli", "generate synthetic towns, datasets and ROS 2 bags"),
    "bench": ("clino_vpr_ros.bench", "benchmarks: encoder, index, node"),
    "fleet": ("clino_vpr_ros.fleet_cli", "fleet index on Milvus: push maps, status, merge from it, serve"),
    "merge": ("clino_vpr_ros.merge", "align and merge session maps with a robust pose graph"),
    "bag": ("clino_vpr_ros.bag", "run the loop-closure pipeline over a ROS 2 bag"),
    "demo": ("clino_vpr_ros.ros.demo", "two-session loop-closure demo over real DDS"),
}


def _usage() -> str:
    lines = ["usage: clino-vpr <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`clino-vpr <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from clino_vpr_ros import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"clino-vpr: unknown command {name!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
