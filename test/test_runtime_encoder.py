"""Torch-free runtime encoder: parity with PyTorch, batching, metadata validation, input errors."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest
import torch

from clino_vpr_ros.config import get_model_config
from clino_vpr_ros.export import export_onnx
from clino_vpr_ros.model import build_encoder
from clino_vpr_ros.preprocess import to_model_input
from clino_vpr_ros.runtime import PROVIDERS, RuntimeEncoder, select_providers

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return build_encoder(get_model_config("tiny")).eval()


@pytest.fixture(scope="module")
def onnx_path(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("rt") / "tiny.onnx")


def _camera_frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    frames = []
    for i in range(n):
        f = cv2.GaussianBlur(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), (0, 0), 1 + i % 3)
        cv2.rectangle(f, (20 * i, 30), (20 * i + 80, 150), (255, 255 - 20 * i, 0), -1)
        frames.append(f)
    return frames


def test_runtime_descriptors_equal_pytorch(model, onnx_path) -> None:
    frames = _camera_frames(6)
    enc = RuntimeEncoder(onnx_path, providers=["cpu"])
    out = enc.encode(frames)
    batch = np.stack([to_model_input(f, (112, 112)) for f in frames])
    with torch.no_grad():
        ref, ref_mask = model(torch.from_numpy(batch))
    assert out.descriptors.dtype == np.float32 and out.descriptors.flags["C_CONTIGUOUS"]
    assert out.descriptors.shape == (6, 512) and out.masks.shape == (6, 1, 8, 8)
    assert (np.sum(out.descriptors * ref.numpy(), axis=1) >= 0.9999).all()
    np.testing.assert_allclose(out.masks, ref_mask.numpy(), atol=1e-4)


def test_descriptor_is_the_same_alone_or_in_a_batch(onnx_path) -> None:
    frames = _camera_frames(8)
    batched = RuntimeEncoder(onnx_path, batch_size=8).encode(frames).descriptors
    chunked = RuntimeEncoder(onnx_path, batch_size=3).encode(frames).descriptors
    enc = RuntimeEncoder(onnx_path, batch_size=1)
    for i, frame in enumerate(frames):
        desc, mask = enc.encode_one(frame)
        assert desc.shape == (512,) and mask.shape == (1, 8, 8)
        assert float(desc @ batched[i]) >= 0.99999 and float(desc @ chunked[i]) >= 0.99999
    assert enc.encode([]).descriptors.shape == (0, 512)


def test_encodings_go_through_the_shared_policy(onnx_path) -> None:
    enc = RuntimeEncoder(onnx_path)
    frame = _camera_frames(1)[0]
    rgb = enc.encode_one(frame, "rgb8")[0]
    bgr = enc.encode_one(np.ascontiguousarray(frame[..., ::-1]), "bgr8")[0]
    assert float(rgb @ bgr) >= 0.99999
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    assert enc.encode_one(grey, "mono8")[0].shape == (512,)


def test_metadata_is_exposed(onnx_path, model) -> None:
    from clino_vpr_ros.checkpoint import weights_fingerprint

    meta = RuntimeEncoder(onnx_path).metadata
    assert meta.input_size == (112, 112) and meta.mask_size == (8, 8) and meta.descriptor_dim == 512
    assert meta.preset == "tiny" and not meta.fp16 and meta.fingerprint == weights_fingerprint(model)
    assert meta.config["salad"]["num_clusters"] == 32


def test_models_without_our_metadata_or_other_dims_are_rejected(onnx_path, tmp_path) -> None:
    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ValueError, match="has no clino_vpr_ros metadata"):
        RuntimeEncoder(bare)
    with pytest.raises(ValueError, match="produces 512-d descriptors, expected 256-d"):
        RuntimeEncoder(onnx_path, expected_dim=256)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RuntimeEncoder(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"definitely not protobuf" * 10)
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        RuntimeEncoder(garbage)


def test_bad_images_are_rejected_clearly(onnx_path) -> None:
    enc = RuntimeEncoder(onnx_path)
    with pytest.raises(ValueError, match=r"expects a uint8 array of shape \(H,W,3\), got float64"):
        enc.encode([np.zeros((240, 320, 3))])
    with pytest.raises(ValueError, match=r"got uint8 \(240, 320, 4\)"):
        enc.encode([np.zeros((240, 320, 4), np.uint8)], "rgb8")


def test_provider_selection() -> None:
    assert select_providers(["cpu"]) == [PROVIDERS["cpu"]]
    assert select_providers()[-1] == PROVIDERS["cpu"]
    with pytest.raises(ValueError, match="unknown execution provider 'warp'; valid: tensorrt, cuda, cpu"):
        select_providers(["warp"])
    import onnxruntime as ort

    if PROVIDERS["tensorrt"] not in ort.get_available_providers():  # the CPU build used in CI
        with pytest.raises(ValueError, match="not available in this onnxruntime build"):
            select_providers(["tensorrt"])


def test_runtime_does_not_import_torch() -> None:
    code = "import sys, clino_vpr_ros.runtime; print(any(m.split('.')[0] in ('torch', 'transformers') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
