"""Gated encoder (torch side): weight loading, freezing, shapes, SALAD sizes, input validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionModelWithProjection, Dinov2Model

from clino_vpr_ros.config import MODEL_PRESETS, ModelConfig, get_model_config
from clino_vpr_ros.model import GatedEncoder, build_encoder
from clino_vpr_ros.model.backbone import dinov2_hf_config
from clino_vpr_ros.model.clip_tower import clip_hf_config

torch.set_num_threads(1)


def tiny(**changes) -> ModelConfig:
    """The tiny preset with sub-config fields changed, e.g. tiny(backbone={"trainable_blocks": 2})."""
    cfg = get_model_config("tiny")
    subs = {k: dataclasses.replace(getattr(cfg, k), **v) for k, v in changes.items() if isinstance(v, dict)}
    top = {k: v for k, v in changes.items() if not isinstance(v, dict)}
    return cfg.replace(**subs, **top)


def images(n: int, cfg: ModelConfig, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *cfg.image_size, 3), dtype=torch.uint8, generator=g)


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory) -> tuple[Path, Path, Dinov2Model]:
    """Tiny DINOv2 (native 16x16 position grid, like hub checkpoints at another size) and CLIP, in HF format."""
    root = tmp_path_factory.mktemp("hf")
    cfg = get_model_config("tiny")
    torch.manual_seed(0)
    dino = Dinov2Model(dinov2_hf_config(cfg.backbone, (224, 224))).eval()
    dino.save_pretrained(root / "dinov2")
    CLIPVisionModelWithProjection(clip_hf_config(cfg.clip)).save_pretrained(root / "clip")
    return root / "dinov2", root / "clip", dino


def test_hf_folders_load_through_the_real_weight_loader(hf_folders) -> None:
    dino_dir, clip_dir, dino = hf_folders
    model = build_encoder(tiny(clip={"trainable": False}), dinov2=dino_dir, clip=clip_dir).eval()
    saved_clip = CLIPVisionModelWithProjection.from_pretrained(clip_dir)
    assert torch.equal(model.clip.model.visual_projection.weight, saved_clip.visual_projection.weight)
    # the 16x16 position embedding is baked to the 8x8 grid exactly as HF interpolates it on the fly
    pixels = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        ref = dino(pixel_values=pixels).last_hidden_state
        feats, cls = model.backbone(pixels)
    assert feats.shape == (2, 192, 8, 8)
    torch.testing.assert_close(cls, ref[:, 0])
    torch.testing.assert_close(feats.flatten(2).transpose(1, 2), ref[:, 1:])
    assert model.backbone.out_channels == 192


def test_weights_errors_say_what_is_wrong(hf_folders, tmp_path) -> None:
    dino_dir, clip_dir, _ = hf_folders
    cfg = get_model_config("tiny")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_encoder(cfg, dinov2=tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        build_encoder(cfg, dinov2="facebook/not-a-cached-model")
    with pytest.raises(ValueError, match="expected DINOv2"):
        build_encoder(cfg, dinov2=clip_dir)
    with pytest.raises(ValueError, match="CLIP weights do not match the preset"):
        build_encoder(get_model_config("small"), clip=clip_dir)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((dino_dir / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"\x00not a safetensors file" * 8)
    with pytest.raises(ValueError, match="corrupt or incomplete"):
        build_encoder(cfg, dinov2=corrupt)
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_encoder(cfg, dinov2=no_config)


def test_last_blocks_train_and_the_rest_stay_frozen() -> None:
    cfg = tiny(backbone={"trainable_blocks": 2}, clip={"trainable": False})
    model = build_encoder(cfg).train()
    layers = model.backbone.model.encoder.layer
    assert [all(p.requires_grad for p in layer.parameters()) for layer in layers] == [False, False, True, True]
    assert not model.backbone.model.embeddings.patch_embeddings.projection.weight.requires_grad
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    desc, _ = model(images(4, cfg))
    (desc @ desc.T).sum().backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("backbone.model.encoder.layer.3.") for k in changed)
    assert not any(k.startswith(("backbone.model.encoder.layer.0.", "backbone.model.embeddings")) for k in changed)
    assert not any(k.startswith("clip.") for k in changed)


def test_all_blocks_train_with_minus_one() -> None:
    model = build_encoder(tiny(backbone={"trainable_blocks": -1}))
    trainable = [p.requires_grad for n, p in model.backbone.named_parameters() if not n.endswith("mask_token")]
    assert all(trainable)


def test_clip_stays_frozen_and_in_eval_when_parent_trains() -> None:
    model = build_encoder(tiny(clip={"trainable": False})).train()
    assert model.backbone.training and model.adapter.training
    assert not model.clip.model.training
    assert not any(p.requires_grad for p in model.clip.parameters())
    model.eval().train()
    assert not model.clip.model.training


def test_descriptor_is_l2_normalised_and_mask_in_unit_range() -> None:
    cfg = get_model_config("tiny")
    model = build_encoder(cfg).eval()
    with torch.no_grad():
        desc, mask = model(images(3, cfg))
    assert desc.shape == (3, 512) and desc.dtype == torch.float32
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(3))
    assert mask.shape == (3, 1, 8, 8) and mask.dtype == torch.float32
    assert 0.0 <= mask.min() and mask.max() <= 1.0
    assert model.descriptor_dim == 512 and model.mask_size == (8, 8)
    # different images, different descriptors (the network is not degenerate)
    assert float(desc[0] @ desc[1]) < 0.99999


def test_published_salad_size_8448_and_projection() -> None:
    cfg = tiny(image_size=(224, 224), salad={"num_clusters": 64, "cluster_dim": 128, "token_dim": 256})
    assert cfg.descriptor_dim == 8448
    model = build_encoder(cfg).eval()
    with torch.no_grad():
        desc, mask = model(images(2, cfg))
    assert desc.shape == (2, 8448) and mask.shape == (2, 1, 16, 16)
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(2))
    projected = build_encoder(cfg.replace(salad=dataclasses.replace(cfg.salad, descriptor_dim=256))).eval()
    with torch.no_grad():
        desc, _ = projected(images(2, cfg))
    assert desc.shape == (2, 256)
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(2))


def test_gate_ablation_gives_all_ones_mask_and_no_clip() -> None:
    cfg = tiny(gate={"use_gate": False})
    model = build_encoder(cfg).eval()
    with torch.no_grad():
        desc, mask = model(images(2, cfg))
    assert model.clip is None and model.gate is None
    assert torch.equal(mask, torch.ones(2, 1, 8, 8))
    assert desc.shape == (2, 512)


def test_non_square_input_and_separate_clip_size() -> None:
    cfg = tiny(image_size=(112, 140), clip={"image_size": 96})
    model = build_encoder(cfg).eval()
    with torch.no_grad():
        desc, mask = model(images(2, cfg))
    assert desc.shape == (2, 512) and mask.shape == (2, 1, 8, 10)


def test_wrong_input_is_rejected_with_the_expected_format() -> None:
    cfg = get_model_config("tiny")
    model = build_encoder(cfg).eval()
    with pytest.raises(ValueError, match=r"uint8 RGB images of shape \(B,112,112,3\)"):
        model(images(1, cfg).float())
    with pytest.raises(ValueError, match="got torch.uint8 \\(1, 3, 112, 112\\)"):
        model(images(1, cfg).permute(0, 3, 1, 2).contiguous())


def test_presets_and_design_card() -> None:
    assert {"tiny", "small", "large"} <= set(MODEL_PRESETS)
    with pytest.raises(ValueError, match="valid: dinov2_salad, large, small, tiny"):
        get_model_config("huge")
    large = get_model_config("large")
    assert large.image_size == (336, 336) and large.grid_size == (24, 24)
    assert (large.backbone.hidden_size, large.backbone.num_layers, large.backbone.trainable_blocks) == (1024, 24, 4)
    c = large.clip
    assert (c.hidden_size, c.num_layers, c.hidden_act, c.projection_dim, c.image_size) == (1024, 24, "quick_gelu", 768, 336)
    assert not c.trainable
    assert (large.gate.adapter_dim, large.salad.num_clusters, large.descriptor_dim) == (512, 64, 512)
    assert large.backbone.weights == "facebook/dinov2-large"
    assert large.clip.weights == "openai/clip-vit-large-patch14-336"
    assert get_model_config("small").image_size == (224, 224)
    for cfg in MODEL_PRESETS.values():
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="num_clusters < number of patches"):
        tiny(salad={"num_clusters": 64})
    with pytest.raises(ValueError, match="multiples of the patch size"):
        tiny(image_size=(100, 112))


def test_build_encoder_returns_a_gated_encoder_with_its_config() -> None:
    cfg = get_model_config("tiny")
    model = build_encoder(cfg)
    assert isinstance(model, GatedEncoder) and model.config == cfg
