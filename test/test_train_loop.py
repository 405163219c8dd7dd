"""`clino-vpr train` on a small generated GSV-Cities-format set: it learns, resumes exactly, and
rejects a wrong folder with a clear message. Tiny images and the `tiny` preset keep it under 2 min."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clino_vpr_ros.checkpoint import load_encoder
from clino_vpr_ros.datasets import GSVCities, read_downloader_set
from clino_vpr_ros.evaluate import main as eval_main
from clino_vpr_ros.export import export_onnx
from clino_vpr_ros.synth import write_downloader_sets, write_gsv_dataset
from clino_vpr_ros.train import TrainConfig, epoch_batches, main, train

IMAGE_SIZE = (112, 112)  # the tiny preset's input size: the resize is then a no-op


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train_data")
    gsv = write_gsv_dataset(root / "gsv", town_seeds=(11, 12), places_per_town=40, img_per_place=4,
                            image_size=IMAGE_SIZE)
    val = write_downloader_sets(root / "val", town_seed=13, n_places=40, image_size=IMAGE_SIZE)["same"]
    return gsv, val


def _cfg(data: tuple[Path, Path], out: Path, **changes) -> TrainConfig:
    base = TrainConfig(data=data[0], val=data[1], out=out, preset="tiny", epochs=3, iters_per_epoch=8,
                       batch_places=12, img_per_place=4, lr=1e-3, lr_decay_iters=200, threads=2, seed=3,
                       progress=False)
    return dataclasses.replace(base, **changes)


def test_gsv_reader_groups_images_by_place(data) -> None:
    ds = GSVCities(data[0], img_per_place=4)
    assert len(ds) == 80  # 2 towns x 40 places, labels global across towns
    assert sorted(p.label for p in ds.places) == list(range(80))
    assert all(len(p.images) >= 4 for p in ds.places)
    first = ds.places[0]
    with open(data[0] / "Dataframes" / f"{first.city}.csv", newline="") as f:
        n_rows = sum(1 for r in csv.DictReader(f) if int(r["place_id"]) == first.place_id)
    assert len(first.images) == n_rows
    images, label = ds.load_place(0, IMAGE_SIZE, np.random.default_rng(0))
    assert images.shape == (4, *IMAGE_SIZE, 3) and images.dtype == np.uint8 and label == 0
    assert len(read_downloader_set(data[1]).query_paths) > 0


def test_batches_hold_distinct_places_and_are_reproducible() -> None:
    b = epoch_batches(50, 12, iters=10, seed=1, epoch=2)
    assert b.shape == (10, 12)
    assert all(len(set(row)) == 12 for row in b)
    np.testing.assert_array_equal(b, epoch_batches(50, 12, iters=10, seed=1, epoch=2))
    assert not np.array_equal(b, epoch_batches(50, 12, iters=10, seed=1, epoch=3))


def test_training_lowers_the_loss_and_raises_recall(data, tmp_path) -> None:
    result = train(_cfg(data, tmp_path / "run"))
    h = result.history
    assert h[0]["epoch"] == 0 and h[0]["loss"] is None  # recall before any training step
    assert h[-1]["loss"] < h[1]["loss"], [e["loss"] for e in h[1:]]
    assert h[-1]["recall"]["1"] > h[0]["recall"]["1"], [e["recall"] for e in h]
    assert result.best_checkpoint.is_file() and result.curves_png.read_bytes()[:4] == b"\x89PNG"
    assert result.metrics_json.is_file()
    # the eval CLI scores the best checkpoint exactly as validation during training did
    best = max(h[1:], key=lambda e: e["recall"]["1"])["recall"]
    out = tmp_path / "recall.json"
    assert eval_main(["recall", "--model", str(result.best_checkpoint), "--data", str(data[1]), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["recall"]["1"] == pytest.approx(best["1"])
    # ... and so does the torch-free ONNX runtime, through the same preprocessing (one rank flip allowed)
    onnx_path = export_onnx(load_encoder(result.best_checkpoint), tmp_path / "best.onnx", check=False)
    assert eval_main(["recall", "--model", str(onnx_path), "--data", str(data[1]), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["recall"]["1"] == pytest.approx(best["1"], abs=1.01 / 40)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(data, tmp_path) -> None:
    fast = dict(val=None, iters_per_epoch=2, epochs=2, batch_places=8)
    train(_cfg(data, tmp_path / "straight", **fast, keep_epochs=True))
    train(_cfg(data, tmp_path / "resumed", **{**fast, "epochs": 1}))
    after_one = load_file(tmp_path / "resumed" / "last.safetensors")
    train(_cfg(data, tmp_path / "resumed", **fast, resume=True))
    # --keep-epochs kept each epoch's weights (to choose an epoch afterwards on other validation sets)
    kept = [load_file(tmp_path / "straight" / f"epoch_{e:03d}.safetensors") for e in (1, 2)]
    assert all(torch.equal(kept[0][k], after_one[k]) for k in after_one)
    assert not (tmp_path / "resumed" / "epoch_001.safetensors").exists()
    a = load_file(tmp_path / "straight" / "last.safetensors")
    b = load_file(tmp_path / "resumed" / "last.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(kept[1][k], a[k]) for k in a)
    state = torch.load(tmp_path / "resumed" / "train_state.pt", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 4


def test_resume_refuses_a_different_configuration(data, tmp_path) -> None:
    train(_cfg(data, tmp_path / "run", val=None, iters_per_epoch=1, epochs=1))
    with pytest.raises(ValueError, match="lr"):
        train(_cfg(data, tmp_path / "run", val=None, iters_per_epoch=1, epochs=2, lr=5e-4, resume=True))


def test_a_wrong_dataset_folder_gives_a_clear_error(tmp_path, capsys) -> None:
    (tmp_path / "photos").mkdir()
    with pytest.raises(FileNotFoundError, match="Dataframes"):
        GSVCities(tmp_path / "photos")
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(tmp_path / "photos"), "--out", str(tmp_path / "out"), "--no-progress"])
    assert exc.value.code == 2
    assert "not a GSV-Cities-format folder" in capsys.readouterr().err
