"""Every `clino-vpr` command answers a user error (missing file, corrupt file, wrong topic) with one line
on stderr and exit code 2, no Python traceback; `--debug` shows the traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clino_vpr_ros.cli import main
from clino_vpr_ros.synth import SessionConfig, generate_session, generate_town, get_condition
from clino_vpr_ros.synth.writers import write_bag


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    noise = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    out = {"root": root}
    for name in ("map.npz", "model.onnx", "weights.safetensors", "closures.csv"):
        (root / name).write_bytes(noise)
        out[name] = root / name
    (root / "notabag").mkdir()
    (root / "notabag" / "metadata.yaml").write_bytes(noise)
    (root / "empty").mkdir()
    session = generate_session(generate_town(950), "s1", 1, get_condition("day"),
                               SessionConfig(n_frames=60, rate_hz=1.25, image_size=(24, 32)))
    out["bag"] = write_bag(session, root / "s1", progress=False)
    return out


def _cases(f: dict[str, Path]) -> list[tuple[list[str], str]]:
    r, missing = f["root"], str(f["root"] / "missing")
    return [
        (["bag", missing], "bag not found"),
        (["bag", str(r / "notabag")], "is not a readable ROS 2 bag"),
        (["bag", str(f["bag"]), "--image-topic", "/front/image"], "image topic '/front/image' not in the bag"),
        (["bag", str(f["bag"]), "--model", str(f["model.onnx"])], "is not a loadable ONNX model"),
        (["merge", missing + ".npz", "--out", str(r / "merged.npz")], "does not exist"),
        (["merge", str(f["map.npz"]), "--out", str(r / "merged.npz")], "is not a clino-vpr session map: not a .npz"),
        (["demo", "--model", str(f["model.onnx"]), "--out", str(r / "demo")], "is not a loadable ONNX model"),
        (["export", "--checkpoint", missing, "--out", str(r / "x.onnx")], "does not exist"),
        (["export", "--checkpoint", str(f["weights.safetensors"]), "--out", str(r / "x.onnx")], "not a readable safetensors"),
        (["eval", "loops", "--closures", missing, "--groundtruth", str(f["bag"]), "--out", str(r / "e")], "not found"),
        (["eval", "loops", "--closures", str(f["closures.csv"]), "--groundtruth", str(f["bag"]), "--out", str(r / "e")], "is not a closures CSV"),
        (["eval", "recall", "--data", str(r / "empty"), "--model", str(f["model.onnx"])], "is not a loadable ONNX model"),
        (["import", "salad", str(f["weights.safetensors"]), "--out", str(r / "i.onnx")], "SafetensorError"),
        (["synth", "sessions", "--out", str(r / "ss"), "--frames", "5"], "cannot lap even one block"),
        (["train", "--data", missing, "--out", str(r / "run")], "is not a GSV-Cities-format folder"),
        (["train", "--data", str(r / "empty"), "--out", str(r / "run")], "is not a GSV-Cities-format folder"),
    ]


def test_user_errors_are_one_line_with_exit_code_2(files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    for argv, says in _cases(files):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("INFO ")]
        assert "Traceback" not in "\n".join(err), argv
        assert len(err) == 1 and says in err[0], (argv, err)
        assert err[0].startswith(f"clino-vpr {argv[0]}") or err[0].startswith("demo:"), err[0]


def test_debug_shows_the_traceback(files: dict[str, Path]) -> None:
    argv = [sys.executable, "-m", "clino_vpr_ros.cli", "merge", str(files["map.npz"]), "--out", str(files["root"] / "m.npz")]
    plain = subprocess.run(argv, capture_output=True, text=True)
    debug = subprocess.run([*argv, "--debug"], capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and plain.stderr.count("\n") == 1
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr
    assert "not a clino-vpr session map" in debug.stderr
