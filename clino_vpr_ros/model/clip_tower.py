"""CLIP vision tower (HF ``CLIPVisionModelWithProjection``): projected image embedding for the gate.

The tower stays in eval mode whatever the parent module's mode (``train()`` is overridden), so a
training loop calling ``encoder.train()`` never switches it; with ``ClipConfig.trainable=False``
(the design card) its parameters are also frozen.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from clino_vpr_ros.config import ClipConfig
from clino_vpr_ros.model._hf import load_pretrained


def clip_hf_config(cfg: ClipConfig) -> CLIPVisionConfig:
    """A ``CLIPVisionConfig`` with the shape of ``cfg`` (used for random initialisation)."""
    return CLIPVisionConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        projection_dim=cfg.projection_dim,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_act=cfg.hidden_act,
        layer_norm_eps=cfg.layer_norm_eps,
        attn_implementation=cfg.attn_implementation,
    )


class ClipTower(nn.Module):
    """Frozen (by default) CLIP image encoder.

    Args:
        cfg: tower shape.
        weights: HF-format folder or hub id (local cache only); a full CLIP checkpoint is accepted.
            None = random init.

    Attributes:
        out_dim: size of the projected embedding (``projection_dim``).
        image_size: the tower's square input size.
    """

    def __init__(self, cfg: ClipConfig, weights: str | Path | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        if weights is None:
            self.model = CLIPVisionModelWithProjection(clip_hf_config(cfg))
        else:
            self.model = load_pretrained(CLIPVisionModelWithProjection, weights, "CLIP", cfg.attn_implementation)
            _check_shape(self.model.config, cfg)
        self.out_dim = cfg.projection_dim
        self.image_size = cfg.image_size
        self.model.requires_grad_(cfg.trainable)
        self.model.eval()

    def train(self, mode: bool = True) -> ClipTower:
        # CLIP is used as a fixed feature extractor: never switch it to training mode
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Args: pixels float (B,3,S,S), CLIP-normalised, S = ``image_size``.

        Returns: image embedding float32 (B, projection_dim), not normalised.
        """
        dtype = self.model.visual_projection.weight.dtype
        return self.model(pixel_values=pixels.to(dtype)).image_embeds.float()


def _check_shape(hf: CLIPVisionConfig, cfg: ClipConfig) -> None:
    got = {
        "hidden_size": hf.hidden_size,
        "num_layers": hf.num_hidden_layers,
        "num_heads": hf.num_attention_heads,
        "patch_size": hf.patch_size,
        "image_size": hf.image_size,
        "projection_dim": hf.projection_dim,
        "hidden_act": hf.hidden_act,
    }
    want = {k: getattr(cfg, k) for k in got}
    if got != want:
        diff = {k: (got[k], want[k]) for k in got if got[k] != want[k]}
        raise ValueError(f"CLIP weights do not match the preset (field: (weights, preset)): {diff}")
