"""Gate-only training on top of an imported DINOv2-SALAD checkpoint (``train --init-from --gate-only``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clino_vpr_ros.checkpoint import load_encoder
from clino_vpr_ros.evaluate import encode_paths
from clino_vpr_ros.export import export_onnx
from clino_vpr_ros.import_salad import load_salad_encoder
from clino_vpr_ros.runtime import RuntimeEncoder
from clino_vpr_ros.synth import write_downloader_sets, write_gsv_dataset
from clino_vpr_ros.train import TrainConfig, train

from test_import_salad import CKPT, HEADS

SIZE = (112, 112)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gate_only")
    gsv = write_gsv_dataset(root / "gsv", town_seeds=(11,), places_per_town=12, img_per_place=4, image_size=SIZE,
                            progress=False)
    val = write_downloader_sets(root / "val", town_seed=13, n_places=8, image_size=SIZE, progress=False)["cross"]
    return gsv, val


def test_gate_only_training_changes_the_gate_alone(data, tmp_path) -> None:
    gsv, val = data
    cfg = TrainConfig(data=gsv, val=val, out=tmp_path / "run", init_from=CKPT, num_heads=HEADS, image_size=SIZE,
                      gate_clip="tiny", gate_only=True, epochs=1, iters_per_epoch=3, batch_places=6, lr=3e-2,
                      progress=False)
    result = train(cfg)
    imported = load_salad_encoder(CKPT, SIZE, num_heads=HEADS)
    paths = sorted((val / "images" / "test" / "queries").glob("*.jpg"))
    plain = encode_paths(imported, paths, progress=False)
    # epoch 0 is the imported model: the gate starts open (mask sigmoid(10) everywhere)
    start = load_salad_encoder(CKPT, SIZE, num_heads=HEADS, gate_clip=_tiny_clip(), gate_hidden=128)
    assert np.min(np.sum(encode_paths(start, paths, progress=False) * plain, axis=1)) > 0.9999
    assert result.history[0]["recall"] == _recall_of(imported, val)

    trained = load_encoder(result.last_checkpoint)
    assert trained.config.gate.use_gate and trained.config.resize == "pil_bilinear"
    before, after = imported.state_dict(), trained.state_dict()
    for key, value in before.items():  # backbone and SALAD untouched
        assert torch.equal(after[key], value), key
    assert not torch.equal(trained.gate.mlp[-1].weight, torch.zeros_like(trained.gate.mlp[-1].weight))
    # the trained gated model exports and runs like any other
    onnx_path = export_onnx(trained, tmp_path / "gated.onnx")
    enc = RuntimeEncoder(onnx_path)
    assert enc.metadata.resize == "pil_bilinear" and enc.metadata.mask_size == (8, 8)
    desc, mask = enc.encode_one(np.zeros((240, 320, 3), np.uint8))
    assert desc.shape == (trained.descriptor_dim,) and mask.shape == (1, 8, 8) and 0 < mask.min() <= mask.max() < 1


def test_gate_only_needs_a_gate(data, tmp_path) -> None:
    gsv, val = data
    with pytest.raises(ValueError, match="drop --no-gate"):
        TrainConfig(data=gsv, out=tmp_path, init_from=CKPT, use_gate=False)
    with pytest.raises(ValueError, match="--init-from only"):
        TrainConfig(data=gsv, out=tmp_path, image_size=SIZE)


def _tiny_clip():
    from clino_vpr_ros.config import get_model_config

    return get_model_config("tiny").clip


def _recall_of(model, val: Path) -> dict[str, float]:
    from clino_vpr_ros.evaluate import evaluate_folder

    res = evaluate_folder(model, val, progress=False)
    return {str(k): v for k, v in res["recall"].items()}
