"""A small stand-in for the published DINOv2-SALAD checkpoint, for CPU experiments (issue 11).

No DINOv2-SALAD weights can be downloaded here, so the gate-on-top experiment uses a tiny
DINOv2-SALAD (ViT 192-d x 4 blocks, 3 heads; SALAD 16 x 32 + 64-d token, hidden 512) trained
briefly on generated towns, written in the authors' checkpoint format (same keys as dino_salad.ckpt).

    python scripts/salad_standin.py init OUT.safetensors      # random model in the imported layout
    clino-vpr train --init OUT.safetensors --no-gate ...       # train it (all of it, from scratch)
    python scripts/salad_standin.py to-ckpt BEST.safetensors OUT.ckpt

A stronger stand-in in the same layout, for a backbone that has seen more than 300 iterations: the
ViT of an exported model of the same backbone shape (the shipped tiny model: 192-d x 4 blocks,
3 heads, trained 4,800 iterations on towns 0-29), read back from its ONNX initializers, frozen
(``trainable_blocks=0``), with a random SALAD on top to train with ``clino-vpr train --init``:

    python scripts/salad_standin.py init-from-onnx models/clino-vpr-tiny.onnx OUT.safetensors

The checkpoint's 37x37 position embedding is the minimum-norm one whose DINOv2 resize to the
trained grid gives back the trained embedding exactly (the resize is linear), so importing the .ckpt
at the training size reproduces the trained model.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch

from clino_vpr_ros.checkpoint import load_encoder, save_checkpoint
from clino_vpr_ros.config import BackboneConfig, GateConfig, SaladConfig, get_model_config
from clino_vpr_ros.import_salad import dinov2_position_embedding
from clino_vpr_ros.model import build_encoder

POS_GRID = 37


def standin_config():
    base = get_model_config("dinov2_salad")
    return base.replace(
        preset="dinov2_salad_standin", image_size=(112, 112),
        backbone=BackboneConfig(hidden_size=192, num_layers=4, num_heads=3, layerscale_value=0.1,
                                trainable_blocks=-1, weights=None),
        gate=GateConfig(adapter_dim=None, hidden_dim=128, use_gate=False),
        salad=SaladConfig(num_clusters=16, cluster_dim=32, token_dim=64, hidden_dim=512, layout="channel_major"),
    )


def pos_embed_37(baked: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, 1+h*w, D) -> (1, 1+37*37, D) with dinov2_position_embedding(result, grid) == baked."""
    n = POS_GRID * POS_GRID
    eye = torch.eye(n).reshape(n, POS_GRID, POS_GRID).permute(1, 2, 0).reshape(1, n, n)  # D = n basis images
    basis = torch.cat((torch.zeros(1, 1, n), eye), dim=1)
    a = dinov2_position_embedding(basis, grid)[0, 1:].double()  # (h*w, n): the resize as a matrix
    patch = torch.linalg.pinv(a) @ baked[0, 1:].double()  # min-norm solution, (n, D)
    out = torch.cat((baked[:, :1].double(), patch[None]), dim=1).float()
    err = (dinov2_position_embedding(out, grid) - baked).abs().max().item()
    assert err < 1e-5, f"position embedding not reproduced: {err}"
    return out


def init_from_onnx(onnx_path: str):
    """The stand-in with the (frozen) ViT of an exported model of the same backbone shape; SALAD random."""
    import json

    import onnx

    from clino_vpr_ros.config import ModelConfig

    sys.path.insert(0, str(Path(__file__).parent))
    from clip_tower_from_onnx import onnx_state_dict

    proto = onnx.load(onnx_path)
    src = ModelConfig.from_dict(json.loads({p.key: p.value for p in proto.metadata_props}["model_config"]))
    cfg = standin_config()
    cfg = cfg.replace(backbone=replace(cfg.backbone, trainable_blocks=0))
    if replace(src.backbone, trainable_blocks=0, weights=None) != cfg.backbone or src.image_size != cfg.image_size:
        raise ValueError(f"{onnx_path}: backbone {src.backbone} at {src.image_size} is not the stand-in's {cfg.backbone}")
    # the exporter names the encoder's blocks /backbone/layer.N/...
    state = {k.replace("backbone.layer.", "backbone.model.encoder.layer.", 1): v
             for k, v in onnx_state_dict(proto, ("backbone.",)).items()}
    torch.manual_seed(0)
    model = build_encoder(cfg)
    missing, unexpected = model.backbone.load_state_dict({k[len("backbone."):]: v for k, v in state.items()}, strict=False)
    if unexpected or set(missing) != {"model.embeddings.mask_token"}:
        raise ValueError(f"backbone weights incomplete: missing {missing}, unexpected {unexpected}")
    return model


def to_authors_state_dict(model) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    out = {}
    e = "backbone.model.embeddings."
    out["backbone.model.cls_token"] = sd[e + "cls_token"]
    out["backbone.model.pos_embed"] = pos_embed_37(sd[e + "position_embeddings"], model.config.grid_size)
    out["backbone.model.mask_token"] = sd[e + "mask_token"]
    out["backbone.model.patch_embed.proj.weight"] = sd[e + "patch_embeddings.projection.weight"]
    out["backbone.model.patch_embed.proj.bias"] = sd[e + "patch_embeddings.projection.bias"]
    for i in range(model.config.backbone.num_layers):
        s, d = f"backbone.model.encoder.layer.{i}.", f"backbone.model.blocks.{i}."
        for p in ("weight", "bias"):
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[f"{d}{name}.{p}"] = sd[f"{s}{name}.{p}"]
            out[f"{d}attn.qkv.{p}"] = torch.cat([sd[f"{s}attention.{x}_proj.{p}"] for x in "qkv"])
            out[f"{d}attn.proj.{p}"] = sd[f"{s}attention.o_proj.{p}"]
        out[f"{d}ls1.gamma"] = sd[f"{s}layer_scale1.lambda1"]
        out[f"{d}ls2.gamma"] = sd[f"{s}layer_scale2.lambda1"]
    out["backbone.model.norm.weight"] = sd["backbone.model.layernorm.weight"]
    out["backbone.model.norm.bias"] = sd["backbone.model.layernorm.bias"]
    for k, v in sd.items():
        if k.startswith("aggregator.") and k != "aggregator.dustbin":
            out[k] = v
    out["aggregator.dust_bin"] = sd["aggregator.dustbin"]
    return {k: v.detach().float().contiguous().clone() for k, v in out.items()}


def main(argv: list[str]) -> int:
    if argv[0] == "init":
        torch.manual_seed(0)
        save_checkpoint(argv[1], build_encoder(standin_config()))
    elif argv[0] == "init-from-onnx":
        save_checkpoint(argv[2], init_from_onnx(argv[1]))
    elif argv[0] == "to-ckpt":
        torch.save(to_authors_state_dict(load_encoder(argv[1])), argv[2])
    else:
        raise SystemExit(__doc__)
    print(f"wrote {argv[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
