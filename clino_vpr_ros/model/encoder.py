"""The CLINO-VPR gated encoder: uint8 RGB images -> (L2-normalised descriptor, gate mask).

    images uint8 (B,H,W,3) RGB
      -> /255, ImageNet mean/std -> DINOv2 -> patch features (B,C,h,w) + CLS (B,C)
      -> channel adapter (1x1 conv, BN, ReLU) -> (B,A,h,w)   (none for imported SALAD weights)
      -> x gate mask (B,1,h,w) from CLIP image embedding (CLIP mean/std, own input size)
      -> SALAD (+ CLS global token) -> descriptor (B,D), L2-normalised

Casting and normalisation live inside the network so the exported ONNX takes camera pixels and
the robot does no normalisation maths.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clino_vpr_ros.config import ModelConfig
from clino_vpr_ros.model.backbone import DinoV2Backbone
from clino_vpr_ros.model.clip_tower import ClipTower
from clino_vpr_ros.model.gate import ChannelAdapter, SemanticGate
from clino_vpr_ros.model.salad import Salad

LOG = logging.getLogger(__name__)


class GatedEncoder(nn.Module):
    """DINOv2 x CLIP semantic gate -> SALAD. Build with :func:`build_encoder`.

    Attributes:
        config: the ModelConfig it was built from.
        descriptor_dim: D. mask_size: (h, w) of the gate mask (= the patch grid).
    """

    def __init__(
        self,
        config: ModelConfig,
        backbone: DinoV2Backbone,
        clip: ClipTower | None,
        adapter: ChannelAdapter | nn.Identity,
        gate: SemanticGate | None,
        aggregator: Salad,
    ) -> None:
        super().__init__()
        if (clip is None) != (gate is None):
            raise ValueError("the CLIP tower and the gate come together (both or neither)")
        self.config = config
        self.backbone = backbone
        self.clip = clip
        self.adapter = adapter
        self.gate = gate
        self.aggregator = aggregator
        self.descriptor_dim = aggregator.out_dim
        self.mask_size = backbone.grid_size
        # normalisation constants come from the config, so they are buffers outside the state dict
        self.register_buffer("dino_mean", _chan(config.backbone.mean), persistent=False)
        self.register_buffer("dino_std", _chan(config.backbone.std), persistent=False)
        self.register_buffer("clip_mean", _chan(config.clip.mean), persistent=False)
        self.register_buffer("clip_std", _chan(config.clip.std), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: images uint8 (B,H,W,3) RGB at ``config.image_size`` (see ``preprocess.to_model_input``).

        Returns:
            descriptor float32 (B,D), L2-normalised;
            gate mask float32 (B,1,h,w) in [0,1] (all ones when ``use_gate`` is False).
        """
        self._check_input(images)
        x = images.permute(0, 3, 1, 2).float() / 255.0
        feats, cls = self.backbone((x - self.dino_mean) / self.dino_std)
        adapted = self.adapter(feats)
        if self.gate is None:
            mask = torch.ones_like(adapted[:, :1])
        else:
            mask = self.gate(self.clip(self._clip_pixels(x)))
        return self.aggregator(adapted * mask, cls), mask

    def _clip_pixels(self, x: torch.Tensor) -> torch.Tensor:
        size = self.clip.image_size
        if tuple(x.shape[-2:]) != (size, size):
            # fixed-size bilinear resize (exports as one ONNX Resize); only when the tower's size differs
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return (x - self.clip_mean) / self.clip_std

    def _check_input(self, images: torch.Tensor) -> None:
        h, w = self.config.image_size
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (h, w, 3):
            raise ValueError(
                f"GatedEncoder expects uint8 RGB images of shape (B,{h},{w},3) "
                f"(use preprocess.to_model_input), got {images.dtype} {tuple(images.shape)}"
            )


def build_encoder(
    cfg: ModelConfig, dinov2: str | Path | None = None, clip: str | Path | None = None
) -> GatedEncoder:
    """Build a gated encoder; the same code path for every preset.

    Args:
        cfg: model configuration (e.g. ``get_model_config("large")``).
        dinov2: HF-format DINOv2 folder or hub id in the local HF cache (never downloaded);
            None = random init from the preset's shape.
        clip: same for the CLIP vision tower (ignored when ``cfg.gate.use_gate`` is False).
    Raises:
        FileNotFoundError / ValueError: missing, corrupt or mismatching weights.
    """
    backbone = DinoV2Backbone(cfg.backbone, cfg.image_size, weights=dinov2)
    if cfg.gate.adapter_dim is None:
        adapter, features = nn.Identity(), backbone.out_channels
    else:
        adapter = ChannelAdapter(backbone.out_channels, cfg.gate.adapter_dim)
        features = adapter.out_channels
    clip_tower = gate = None
    if cfg.gate.use_gate:
        clip_tower = ClipTower(cfg.clip, weights=clip)
        gate = SemanticGate(clip_tower.out_dim, cfg.gate.hidden_dim, backbone.grid_size)
    elif clip is not None:
        LOG.warning("use_gate is False: the CLIP weights %s are not used", clip)
    s = cfg.salad
    aggregator = Salad(
        in_channels=features,
        token_channels=backbone.out_channels,
        num_clusters=s.num_clusters,
        cluster_dim=s.cluster_dim,
        token_dim=s.token_dim,
        hidden_dim=s.hidden_dim,
        dropout=s.dropout,
        sinkhorn_iters=s.sinkhorn_iters,
        descriptor_dim=s.descriptor_dim,
        layout=s.layout,
    )
    return GatedEncoder(cfg, backbone, clip_tower, adapter, gate, aggregator)


def _chan(values: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(1, 3, 1, 1)
