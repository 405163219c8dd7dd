"""ONNX export: interface, metadata, fp16 parity, the parity guard itself, and the CLI."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from clino_vpr_ros.checkpoint import save_checkpoint, weights_fingerprint
from clino_vpr_ros.config import get_model_config
from clino_vpr_ros.export import ExportParityError, check_parity, export_onnx, main, parity_images
from clino_vpr_ros.model import build_encoder

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(2)
    return build_encoder(get_model_config("tiny")).eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> Path:
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def test_interface_is_nhwc_uint8_with_dynamic_batch(exported) -> None:
    proto = onnx.load(str(exported))
    (inp,) = proto.graph.input
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [112, 112, 3]
    # the local re-ranking outputs (block 2 of 4 by default) follow the two the node always reads
    assert [o.name for o in proto.graph.output] == ["descriptor", "gate_mask", "local_values", "local_attention"]
    ops = {n.op_type for n in proto.graph.node}
    # fixed size: no position-embedding interpolation and no resize in the graph
    assert "Resize" not in ops and "LayerNormalization" in ops
    assert sorted(p.name for p in exported.parent.iterdir()) == ["tiny.onnx"]  # atomic: no leftovers


def test_metadata_describes_the_model(exported, model) -> None:
    props = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert props["schema_version"] == "1" and props["channel_order"] == "RGB"
    assert props["input_layout"] == "NHWC" and props["input_dtype"] == "uint8"
    assert props["input_size"] == "112x112" and props["mask_size"] == "8x8"
    assert props["descriptor_dim"] == "512" and props["preset"] == "tiny" and props["precision"] == "fp32"
    assert props["weights_fingerprint"] == weights_fingerprint(model)
    assert props["package_version"]


def test_any_batch_size_matches_pytorch(exported, model) -> None:
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    images = parity_images((112, 112), n=5, seed=7)
    desc, mask = session.run(["descriptor", "gate_mask"], {"images": images})
    with torch.no_grad():
        ref_desc, ref_mask = model(torch.from_numpy(images))
    assert desc.shape == (5, 512) and mask.shape == (5, 1, 8, 8)
    assert (np.sum(desc * ref_desc.numpy(), axis=1) >= 0.9999).all()
    np.testing.assert_allclose(mask, ref_mask.numpy(), atol=1e-4)


def test_fp16_export_passes_parity_with_fp32_layernorm(model, tmp_path) -> None:
    path = export_onnx(model, tmp_path / "tiny_fp16.onnx", fp16=True)
    proto = onnx.load(str(path))
    types = {i.name: i.data_type for i in proto.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types.values()
    assert {p.key: p.value for p in proto.metadata_props}["precision"] == "fp16"
    # every LayerNormalization runs on fp32 weights (fp16 LayerNorm overflows in TensorRT)
    for node in proto.graph.node:
        if node.op_type == "LayerNormalization" and node.input[1] in types:
            assert types[node.input[1]] == onnx.TensorProto.FLOAT
    stats = check_parity(model, path, fp16=True)
    assert stats["min_cosine"] >= 0.999


def test_parity_guard_catches_a_graph_from_other_weights(exported) -> None:
    other = build_encoder(get_model_config("tiny")).eval()
    with pytest.raises(ExportParityError, match="does not match PyTorch: min cosine"):
        check_parity(other, exported, fp16=False)


def test_gate_ablation_and_resized_clip_input_export(tmp_path) -> None:
    cfg = get_model_config("tiny")
    no_gate = build_encoder(cfg.replace(gate=dataclasses.replace(cfg.gate, use_gate=False))).eval()
    session = ort.InferenceSession(str(export_onnx(no_gate, tmp_path / "nogate.onnx")), providers=["CPUExecutionProvider"])
    _, mask = session.run(["descriptor", "gate_mask"], {"images": parity_images((112, 112), n=2)})
    assert (mask == 1.0).all()
    other_clip = build_encoder(cfg.replace(clip=dataclasses.replace(cfg.clip, image_size=96))).eval()
    export_onnx(other_clip, tmp_path / "clip96.onnx")  # parity-checked with the in-graph bilinear resize


def test_cli_exports_from_checkpoint_and_preset(model, tmp_path, capsys) -> None:
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", model)
    assert main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "a.onnx")]) == 0
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "a.onnx")).metadata_props}
    assert props["weights_fingerprint"] == weights_fingerprint(model)
    assert main(["--preset", "tiny", "--out", str(tmp_path / "b.onnx"), "--fp16"]) == 0
    assert "parity checked" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--preset", "nope", "--out", str(tmp_path / "c.onnx")])
    with pytest.raises(ValueError, match="opset 16 < 17"):
        export_onnx(model, tmp_path / "d.onnx", opset=16)
