"""Importing the published DINOv2-SALAD checkpoint, checked against the authors' own outputs.

The oracle is ../shared/fixtures/salad-reference (or $CLINO_SALAD_FIXTURE): a tiny random checkpoint in
the released format and the descriptors the authors' code computes for its images (README there).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clino_vpr_ros import evaluate, import_salad
from clino_vpr_ros.import_salad import infer_layout, load_salad_encoder, salad_model_config
from clino_vpr_ros.preprocess import to_model_input
from clino_vpr_ros.runtime import RuntimeEncoder

# the fixture lives beside the repository (../shared in the development tree)
FIXTURE = Path(os.environ.get("CLINO_SALAD_FIXTURE",
                              Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "salad-reference"))
CKPT = FIXTURE / "checkpoint.ckpt"
HEADS = 4  # the fixture's ViT has 16-d heads (config.json), not DINOv2's 64: --num-heads is needed
TOL = 1e-5


@pytest.fixture(scope="module")
def fixture_config() -> dict:
    assert CKPT.is_file(), f"SALAD reference fixture missing at {FIXTURE}"
    return json.loads((FIXTURE / "config.json").read_text())


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "expected.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory) -> dict[tuple[int, int], Path]:
    """The fixture imported through the CLI at the authors' 322x322 and at img3_street's native size."""
    out = tmp_path_factory.mktemp("import")
    models = {}
    for size in ((322, 322), (322, 434)):
        path = out / f"salad_{size[0]}x{size[1]}.onnx"
        rc = import_salad.main(["salad", str(CKPT), "--out", str(path), "--num-heads", str(HEADS),
                                "--image-size", str(size[0]), str(size[1])])
        assert rc == 0 and path.is_file()
        models[size] = path
    return models


def _png(name: str) -> np.ndarray:
    return np.array(Image.open(FIXTURE / f"{name}.png"))  # RGB, as the authors read it


def test_onnx_reproduces_the_authors_descriptors(onnx_models, expected) -> None:
    square = RuntimeEncoder(onnx_models[(322, 322)])
    native = RuntimeEncoder(onnx_models[(322, 434)])
    assert square.metadata.resize == "pil_bilinear" and square.metadata.descriptor_dim == 136
    assert square.metadata.preset == "dinov2_salad" and square.metadata.fingerprint
    inputs = {  # prefix -> (model, image as a camera would deliver it)
        "img0_checker": (square, _png("img0_checker")),
        "img1_rings": (square, _png("img1_rings")),
        "img2_shapes": (square, _png("img2_shapes")),
        "img3_street": (native, _png("img3_street")),  # 23x31 grid: non-square position embedding
        "img3_street_resize322": (square, _png("img3_street")),  # 322x434 frame resized by the runtime
    }
    assert set(inputs) == set(expected["image_names"].tolist())
    for prefix, (encoder, image) in inputs.items():
        desc = encoder.encode_one(image)[0]
        diff = np.abs(desc - expected[f"{prefix}.descriptor"]).max()
        assert diff <= TOL, f"{prefix}: max abs diff {diff:.2e}"
    # a BGR camera frame gives the same descriptor once its encoding is declared
    bgr = np.ascontiguousarray(_png("img3_street")[..., ::-1])
    desc = square.encode_one(bgr, encoding="bgr8")[0]
    assert np.abs(desc - expected["img3_street_resize322.descriptor"]).max() <= TOL


def test_backbone_tokens_match_the_authors(expected) -> None:
    model = load_salad_encoder(CKPT, (322, 434), num_heads=HEADS)
    x = torch.from_numpy(_png("img3_street")).permute(2, 0, 1)[None].float() / 255.0
    x = (x - model.dino_mean) / model.dino_std
    assert np.abs(x[0, :, 0].numpy() - expected["img3_street.input_row0"]).max() <= 1e-6
    with torch.no_grad():
        feats, cls = model.backbone(x)
    assert np.abs(cls[0].numpy() - expected["img3_street.cls_token"]).max() <= TOL
    assert np.abs(feats[0].numpy() - expected["img3_street.patch_tokens"]).max() <= TOL


@pytest.mark.parametrize("size", [(322, 434), (518, 518)])
def test_every_checkpoint_tensor_is_loaded_by_value(size) -> None:
    sd = torch.load(CKPT, map_location="cpu", weights_only=True)
    model = load_salad_encoder(CKPT, size, num_heads=HEADS)
    got = model.state_dict()
    e = "backbone.model.embeddings."
    grid = (size[0] // 14, size[1] // 14)
    pos = sd["backbone.model.pos_embed"]
    if grid == (37, 37):  # DINOv2 does not resize at its native grid
        want_pos = pos
    else:  # DINOv2's own rule, written out independently of the import code
        patch = pos[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, scale_factor=((grid[0] + 0.1) / 37, (grid[1] + 0.1) / 37), mode="bicubic",
                              align_corners=False, antialias=False)
        want_pos = torch.cat((pos[:, :1], patch.flatten(2).transpose(1, 2)), dim=1)
    assert torch.equal(got[e + "position_embeddings"], want_pos)
    checked = {"backbone.model.pos_embed"}
    for key, value in sd.items():
        if key in checked:
            continue
        parts = key.split(".")
        if key.startswith("backbone.model.blocks."):
            i, rest = parts[3], ".".join(parts[4:])
            layer = f"backbone.model.encoder.layer.{i}."
            if rest.startswith("attn.qkv."):
                p = parts[-1]
                loaded = torch.cat([got[f"{layer}attention.{x}_proj.{p}"] for x in "qkv"])
            else:
                name = {"attn.proj": "attention.o_proj", "ls1.gamma": "layer_scale1.lambda1",
                        "ls2.gamma": "layer_scale2.lambda1"}
                stem = rest.rsplit(".", 1)[0] if not rest.startswith("ls") else rest
                loaded = got[layer + (name[stem] + rest[len(stem):] if stem in name else rest)]
        else:
            loaded = got[{
                "backbone.model.cls_token": e + "cls_token", "backbone.model.mask_token": e + "mask_token",
                "backbone.model.patch_embed.proj.weight": e + "patch_embeddings.projection.weight",
                "backbone.model.patch_embed.proj.bias": e + "patch_embeddings.projection.bias",
                "backbone.model.norm.weight": "backbone.model.layernorm.weight",
                "backbone.model.norm.bias": "backbone.model.layernorm.bias",
                "aggregator.dust_bin": "aggregator.dustbin",
            }.get(key, key)]
        assert torch.equal(loaded, value), key
        checked.add(key)
    assert checked == set(sd) and len(sd) == 48
    # the three tensors the descriptors cannot reveal
    for key in ("backbone.model.mask_token", "aggregator.dust_bin", "aggregator.score.3.bias"):
        assert key in checked


def test_published_layout_is_read_from_the_shapes(fixture_config) -> None:
    shapes = fixture_config["published_architecture"]["state_dict"]
    sd = {name: torch.empty(shape, device="meta") for name, shape, _ in shapes}  # no 350 MB allocation
    lay = infer_layout(sd)
    assert (lay.width, lay.depth, lay.patch_size, lay.pos_grid) == (768, 12, 14, 37)
    assert (lay.num_clusters, lay.cluster_dim, lay.token_dim, lay.hidden_dim) == (64, 128, 256, 512)
    cfg = salad_model_config(lay)
    assert cfg.backbone.num_heads == 12 and cfg.image_size == (322, 322) and cfg.descriptor_dim == 8448
    assert cfg.resize == "pil_bilinear" and cfg.salad.layout == "channel_major"
    assert cfg.gate.adapter_dim is None and not cfg.gate.use_gate


def test_other_layouts_are_refused_with_what_was_expected(tmp_path) -> None:
    sd = torch.load(CKPT, map_location="cpu", weights_only=True)
    with_registers = dict(sd, **{"backbone.model.register_tokens": torch.zeros(1, 4, 64)})
    torch.save(with_registers, tmp_path / "reg.ckpt")
    with pytest.raises(ValueError, match="register_tokens"):
        load_salad_encoder(tmp_path / "reg.ckpt", num_heads=HEADS)
    no_dustbin = {k: v for k, v in sd.items() if k != "aggregator.dust_bin"}
    torch.save(no_dustbin, tmp_path / "nodust.ckpt")
    with pytest.raises(ValueError, match="aggregator.dust_bin"):
        load_salad_encoder(tmp_path / "nodust.ckpt", num_heads=HEADS)
    torch.save({"backbone.model.cls_token": torch.zeros(1, 1, 8)}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="expected the released dino_salad.ckpt layout"):
        load_salad_encoder(tmp_path / "other.ckpt")
    torch.save({"model": argparse.Namespace(a=1)}, tmp_path / "pickled.ckpt")  # needs unpickling: refused
    with pytest.raises(ValueError, match="weights-only"):
        load_salad_encoder(tmp_path / "pickled.ckpt")
    with pytest.raises(ValueError, match="does not divide"):
        load_salad_encoder(CKPT, num_heads=5)
    out = tmp_path / "never.onnx"
    with pytest.raises(SystemExit):
        import_salad.main(["salad", str(tmp_path / "reg.ckpt"), "--out", str(out), "--num-heads", "4"])
    assert not out.exists()


def test_pil_bilinear_policy_is_pil_and_old_models_keep_area(shipped_model) -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    want = np.asarray(Image.fromarray(frame).resize((112, 98), Image.BILINEAR))
    assert np.array_equal(to_model_input(frame, (98, 112), resize="pil_bilinear"), want)
    assert not np.array_equal(to_model_input(frame, (98, 112)), want)  # the "area" policy differs
    with pytest.raises(ValueError, match="resize policy"):
        to_model_input(frame, (98, 112), resize="nearest")
    # the shipped model predates the resize_policy metadata: it keeps the policy it was trained with
    assert RuntimeEncoder(shipped_model).metadata.resize == "area"


def test_eval_recall_works_unchanged_on_an_imported_model(tmp_path) -> None:
    from clino_vpr_ros.synth import write_downloader_sets

    data = write_downloader_sets(tmp_path / "val", town_seed=13, n_places=6, image_size=(120, 160),
                                 progress=False)["cross"]
    model = tmp_path / "salad112.onnx"
    assert import_salad.main(["salad", str(CKPT), "--out", str(model), "--num-heads", str(HEADS),
                              "--image-size", "112", "112"]) == 0
    report = tmp_path / "recall.json"
    assert evaluate.main(["recall", "--model", str(model), "--data", str(data), "--out", str(report)]) == 0
    res = json.loads(report.read_text())
    assert res["n_queries"] == 6 and res["n_database"] == 6
    assert set(res["recall"]) == {"1", "5", "10"} and res["recall"]["10"] == 1.0  # 6 candidates: all found
