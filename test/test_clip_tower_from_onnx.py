"""scripts/clip_tower_from_onnx.py: the shipped model's CLIP tower, recovered as an HF folder, is the same tower."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from clino_vpr_ros.config import get_model_config
from clino_vpr_ros.model.clip_tower import ClipTower
from clino_vpr_ros.runtime import parity_images

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "clino-vpr-tiny.onnx"


def _script():
    spec = importlib.util.spec_from_file_location("clip_tower_from_onnx", ROOT / "scripts" / "clip_tower_from_onnx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recovered_tower_reproduces_the_shipped_gate_mask_through_the_user_loader(tmp_path) -> None:
    script = _script()
    out = tmp_path / "clip_tiny"
    assert script.main([str(SHIPPED), "--out", str(out)]) == 0
    # the folder loads through the path a user's --clip takes (frozen tower of the tiny preset's shape)
    cfg = dataclasses.replace(get_model_config("tiny").clip, trainable=False)
    tower = ClipTower(cfg, weights=out)
    assert not any(p.requires_grad for p in tower.parameters())
    _, gate, model_cfg = script.recover(SHIPPED)
    images = parity_images(model_cfg.image_size, n=3, seed=5)
    want = ort.InferenceSession(str(SHIPPED), providers=["CPUExecutionProvider"]).run(["gate_mask"],
                                                                                      {"images": images})[0]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean, std = (torch.tensor(v).reshape(1, 3, 1, 1) for v in (cfg.mean, cfg.std))
    with torch.no_grad():
        got = gate(tower((x - mean) / std)).numpy()
    assert got.shape == want.shape == (3, 1, 8, 8)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # a trained tower, not a constant one: the masks differ between images
    assert np.abs(want[0] - want[1]).max() > 1e-3
