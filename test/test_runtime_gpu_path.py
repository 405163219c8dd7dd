"""The GPU path, checked on the CPU where it can be: TensorRT engine caches keyed by the weights,
the fp32 head kept out of TensorRT's fp16 mode, and the start-up parity check refusing a mismatch.

No GPU here: the TensorRT / CUDA session itself cannot run, so the parity test stands in for it with a
real onnxruntime session of another model that reports a GPU provider (what a broken engine looks like
from outside: a session that answers, wrongly).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from clino_vpr_ros.config import get_model_config
from clino_vpr_ros.export import export_onnx
from clino_vpr_ros.model import build_encoder
from clino_vpr_ros.runtime import (PROVIDERS, TRT_FP32_OP_TYPES, RuntimeEncoder, check_provider_parity,
                                   read_metadata, tensorrt_options, tensorrt_usable, trt_engine_cache_dir)

torch.set_num_threads(1)
TOWERS = ("/backbone/", "/clip/")


def _export(seed: int, path: Path, fp16: bool = False) -> Path:
    torch.manual_seed(seed)
    return export_onnx(build_encoder(get_model_config("tiny")).eval(), path, fp16=fp16)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gpu_path")
    return {"a": _export(1, root / "a.onnx"), "b": _export(2, root / "b.onnx"),
            "a16": _export(1, root / "a16.onnx", fp16=True)}


def test_a_retrained_model_at_the_same_path_gets_its_own_engine_cache(exports: dict[str, Path], tmp_path: Path) -> None:
    a, b = read_metadata(exports["a"]), read_metadata(exports["b"])
    assert a.fingerprint != b.fingerprint
    root = tmp_path / "model.onnx.trt_cache"
    folders = {trt_engine_cache_dir(root, m, 8) for m in (a, b, dataclasses.replace(a, fp16=True),
                                                          dataclasses.replace(a, input_size=(224, 224)))}
    assert len(folders) == 4, "weights, precision and input size each select another engine"
    assert trt_engine_cache_dir(root, a, 8) == trt_engine_cache_dir(root, read_metadata(exports["a"]), 8)
    assert trt_engine_cache_dir(root, a, 8) != trt_engine_cache_dir(root, a, 4)  # the optimisation profile
    opts_a, opts_b = tensorrt_options(a, root, 8), tensorrt_options(b, root, 8)
    assert opts_a["trt_engine_cache_path"] != opts_b["trt_engine_cache_path"]
    assert Path(opts_a["trt_engine_cache_path"]).is_dir() and opts_a["trt_timing_cache_path"] == opts_a["trt_engine_cache_path"]


def test_fp16_engines_keep_normalisation_sinkhorn_and_gate_out_of_tensorrt(exports: dict[str, Path], tmp_path: Path) -> None:
    fp32, fp16 = read_metadata(exports["a"]), read_metadata(exports["a16"])
    assert fp16.fp16 and not fp32.fp16
    o32, o16 = tensorrt_options(fp32, tmp_path, 8), tensorrt_options(fp16, tmp_path, 8)
    assert o32["trt_fp16_enable"] == "False" and "trt_op_types_to_exclude" not in o32  # an fp32 engine throughout
    assert o16["trt_fp16_enable"] == "True" and o16["trt_layer_norm_fp32_fallback"] == "True"
    assert o16["trt_op_types_to_exclude"].split(",") == list(TRT_FP32_OP_TYPES)
    for path in (exports["a"], exports["a16"]):
        graph = onnx.load(str(path)).graph
        tower_ops = {n.op_type for n in graph.node if n.name.startswith(TOWERS)}
        # the towers stay whole TensorRT engines: no excluded op type occurs in them
        assert not tower_ops & set(TRT_FP32_OP_TYPES), tower_ops & set(TRT_FP32_OP_TYPES)
        head = [n for n in graph.node if not n.name.startswith(TOWERS)]
        # every L2 norm, every Sinkhorn log-sum-exp and the gate MLP run outside TensorRT, in the graph's fp32
        for op in ("ReduceL2", "ReduceLogSumExp", "Gemm"):
            assert [n for n in head if n.op_type == op], f"{op} expected in the head of {path.name}"
        assert all(n.op_type in TRT_FP32_OP_TYPES for n in graph.node
                   if n.op_type in ("ReduceL2", "ReduceLogSumExp", "Exp", "Gemm"))


def test_old_onnxruntime_runs_an_fp16_model_on_cuda_rather_than_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = [PROVIDERS["tensorrt"], PROVIDERS["cuda"], PROVIDERS["cpu"]]
    assert tensorrt_usable(gpu, fp16_model=True) == gpu  # this onnxruntime can exclude op types
    monkeypatch.setattr("clino_vpr_ros.runtime._ort_version", lambda: (1, 18))
    assert tensorrt_usable(gpu, fp16_model=True) == gpu[1:]
    assert tensorrt_usable(gpu, fp16_model=False) == gpu  # an fp32 engine needs no exclusion


class _OffCpuSession:
    """A real onnxruntime session that reports itself as running on CUDA (no GPU here)."""

    def __init__(self, session) -> None:
        self._session = session

    def get_providers(self) -> list[str]:
        return [PROVIDERS["cuda"], PROVIDERS["cpu"]]

    def run(self, *args, **kwargs):
        return self._session.run(*args, **kwargs)


def test_start_up_parity_check_refuses_an_engine_that_differs_from_the_cpu(exports: dict[str, Path],
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    encoder = RuntimeEncoder(exports["a"], providers=["cpu"])
    assert check_provider_parity(encoder) is None  # on the CPU there is nothing to compare with

    encoder._session = _OffCpuSession(RuntimeEncoder(exports["a"], providers=["cpu"])._session)  # a faithful engine
    assert check_provider_parity(encoder) >= 0.9999

    encoder._session = _OffCpuSession(RuntimeEncoder(exports["b"], providers=["cpu"])._session)  # a broken one
    with pytest.raises(ValueError, match=r"refusing to start: CUDAExecutionProvider output differs from onnxruntime "
                                         r"CPU: min cosine .*parity_warn_only"):
        check_provider_parity(encoder)
    with caplog.at_level(logging.WARNING):
        assert check_provider_parity(encoder, warn_only=True) is None
    assert "RUNNING WITH A MISMATCHED ENGINE" in caplog.text
    np.testing.assert_equal(encoder.active_providers[0], PROVIDERS["cuda"])
