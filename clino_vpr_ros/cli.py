"""The ``clino-vpr`` command: one subcommand per pipeline stage.

Each subcommand lives in its own module exposing ``main(argv: list[str] | None) -> int``;
modules are imported lazily so that ``clino-vpr bench index`` on a robot never imports torch.

Errors: a subcommand raises (``FileNotFoundError``/``ValueError`` with a message that says what to
do, or an error of a file reader such as rosbags or onnxruntime); this module turns it into one
line on stderr (exit 2 for bad input, 1 for anything else). ``--debug`` anywhere on the command
line shows the traceback instead.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import sys
import zipfile

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


#: exceptions that mean "your input is wrong" (a missing/corrupt/unreadable file, a bad value, a topic
#: that is not there), as raised by our code and by the readers of user files
USER_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError)
#: file-reader libraries whose own exception classes (not derived from the above) are about the file
USER_ERROR_MODULES = ("rosbags", "onnxruntime", "onnx", "yaml", "google.protobuf", "safetensors")


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` reports bad input (exit 2) rather than a defect (exit 1)."""
    module = type(exc).__module__ or ""
    return isinstance(exc, USER_ERRORS) or module.split(".")[0] in USER_ERROR_MODULES or module.startswith(USER_ERROR_MODULES)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    # our own errors say what to do; a library's error is named so the user can look it up
    return text if type(exc) in (ValueError, FileNotFoundError) else f"{type(exc).__name__}: {text}"


def run_command(name: str, rest: list[str], debug: bool = False) -> int:
    """Run one subcommand; an exception becomes one line on stderr unless ``debug``."""
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(rest) or 0)
    except SystemExit as exc:  # argparse: usage errors already printed as one line; --help
        if isinstance(exc.code, str):
            print(f"clino-vpr {name}: error: {exc.code}", file=sys.stderr)
            return 2
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print(f"clino-vpr {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the boundary between the user and the package
        if debug:
            raise
        user = is_user_error(exc)
        hint = "" if user else " (a defect: please report it with the output of --debug)"
        print(f"clino-vpr {name}: error: {_one_line(exc)}{hint}", file=sys.stderr)
        return 2 if user else 1


def _usage() -> str:
    lines = ["usage: clino-vpr <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`clino-vpr <command> --help` for the options of one command;",
              "`--debug` anywhere: show the Python traceback of an error instead of one line."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
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
    return run_command(name, rest, debug)


if __name__ == "__main__":
    sys.exit(main())
