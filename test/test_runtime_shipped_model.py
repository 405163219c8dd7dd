"""The robot's encoder path with nothing but the runtime installed: the shipped ONNX model through
onnxruntime, providers named as the node's YAML and docs write them (also run on the Humble-pinned
environment, scripts/test_humble.sh)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clino_vpr_ros.runtime import PROVIDERS, RuntimeEncoder, select_providers

pytestmark = pytest.mark.runtime


def test_providers_by_onnxruntime_names_and_short_names() -> None:
    cpu = PROVIDERS["cpu"]
    assert select_providers(["CPUExecutionProvider"]) == [cpu]
    assert select_providers(["cpu"]) == select_providers(["CPU"]) == [cpu]
    assert select_providers(["CPUExecutionProvider", "cpu"]) == [cpu]  # one provider, named twice
    with pytest.raises(ValueError, match="unknown execution provider 'warp'"):
        select_providers(["warp"])
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():  # a CPU build: say what to install
        with pytest.raises(ValueError, match="not available in this onnxruntime build.*onnxruntime-gpu"):
            select_providers(["CUDAExecutionProvider", "CPUExecutionProvider"])
    else:
        assert select_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CUDAExecutionProvider", cpu]


def test_shipped_model_encodes_camera_frames(shipped_model: Path) -> None:
    enc = RuntimeEncoder(shipped_model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    b = np.ascontiguousarray(a[:, ::-1])  # the same scene mirrored: another view
    da, mask = enc.encode_one(a)
    assert da.dtype == np.float32 and da.shape == (enc.metadata.descriptor_dim,)
    assert abs(float(np.linalg.norm(da)) - 1.0) < 1e-4 and mask.ndim == 3 and 0.0 <= mask.min() <= mask.max() <= 1.0
    batch = enc.encode([a, b]).descriptors
    np.testing.assert_allclose(batch[0], da, atol=1e-5)  # alone or in a batch: the same descriptor
    assert float(batch[0] @ batch[1]) < 0.9999
