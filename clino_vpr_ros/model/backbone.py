"""DINOv2 backbone (HF ``transformers.Dinov2Model``): patch tokens + CLS, fixed input size.

The position embedding is resized ONCE, when the backbone is built, to the grid of the model's
input size (bicubic, as DINOv2 / HF do it on the fly). The forward pass therefore never
interpolates: training, PyTorch inference and the exported ONNX graph all use the same baked
embedding (bicubic interpolation inside an ONNX graph diverges in onnxruntime/TensorRT).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from transformers import Dinov2Config, Dinov2Model

from clino_vpr_ros.config import BackboneConfig
from clino_vpr_ros.model._hf import load_pretrained

LOG = logging.getLogger(__name__)


def dinov2_hf_config(cfg: BackboneConfig, image_size: tuple[int, int]) -> Dinov2Config:
    """A ``Dinov2Config`` with the shape of ``cfg`` (used for random initialisation)."""
    return Dinov2Config(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        patch_size=cfg.patch_size,
        image_size=max(image_size),
        layerscale_value=cfg.layerscale_value,
        layer_norm_eps=cfg.layer_norm_eps,
        attn_implementation=cfg.attn_implementation,
    )


class DinoV2Backbone(nn.Module):
    """DINOv2 ViT returning patch tokens as a feature map and the CLS token.

    Args:
        cfg: backbone shape and trainable blocks.
        image_size: (H, W) of the normalised input; the grid is (H/patch, W/patch).
        weights: HF-format folder or hub id (local cache only, never downloaded); None = random init.

    Attributes:
        out_channels: channels C of the patch feature map and of the CLS token.
        grid_size: (h, w) of the patch grid.
    """

    def __init__(self, cfg: BackboneConfig, image_size: tuple[int, int], weights: str | Path | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid_size = (image_size[0] // cfg.patch_size, image_size[1] // cfg.patch_size)
        if weights is None:
            self.model = Dinov2Model(dinov2_hf_config(cfg, image_size))
        else:
            self.model = load_pretrained(Dinov2Model, weights, "DINOv2", cfg.attn_implementation)
            _check_shape(self.model.config, cfg)
        self.out_channels = cfg.hidden_size
        _bake_position_embeddings(self.model, self.grid_size)
        self.set_trainable(cfg.trainable_blocks)

    def set_trainable(self, trainable_blocks: int) -> None:
        """Train the last ``trainable_blocks`` blocks (+ final LayerNorm); -1 = everything."""
        layers = self.model.encoder.layer
        n = len(layers) if trainable_blocks == -1 else trainable_blocks
        for p in self.model.parameters():
            p.requires_grad_(trainable_blocks == -1)
        for layer in layers[len(layers) - n :]:
            layer.requires_grad_(True)
        self.model.layernorm.requires_grad_(n > 0)
        if self.model.embeddings.mask_token is not None:
            # masked-image-modelling token: never used for retrieval
            self.model.embeddings.mask_token.requires_grad_(False)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: pixels float (B,3,H,W), ImageNet-normalised, at the build-time size.

        Returns: (features float32 (B,C,h,w), cls float32 (B,C)).
        """
        emb = self.model.embeddings
        dtype = emb.patch_embeddings.projection.weight.dtype
        x = emb.patch_embeddings(pixels.to(dtype))  # (B, h*w, C)
        cls = emb.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + emb.position_embeddings
        for layer in self.model.encoder.layer:
            x = layer(x)
        x = self.model.layernorm(x).float()
        b, n, c = x.shape
        h, w = self.grid_size
        feats = x[:, 1:].transpose(1, 2).reshape(b, c, h, w)
        return feats, x[:, 0]

    def local_tokens(self, pixels: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The re-ranking outputs of block ``layer`` (0-based), the PyTorch reference of the ONNX
        ``local_values`` / ``local_attention`` outputs (``export.add_local_outputs``).

        Args: pixels float (B,3,H,W) as for :meth:`forward`; layer in [0, num_layers).
        Returns: (values float32 (B,P,C): the value projections of the P patch tokens at that block's
        input; cls_attention float32 (B,P): the CLS query's softmax attention to each patch,
        mean over heads; a row sums to below 1, the rest goes to the CLS key itself).
        """
        layers = self.model.encoder.layer
        if not 0 <= layer < len(layers):
            raise ValueError(f"layer {layer} outside the backbone's {len(layers)} blocks")
        emb = self.model.embeddings
        dtype = emb.patch_embeddings.projection.weight.dtype
        x = emb.patch_embeddings(pixels.to(dtype))
        x = torch.cat((emb.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + emb.position_embeddings
        for block in layers[:layer]:
            x = block(x)
        block = layers[layer]
        attn = block.attention
        hn = block.norm1(x)
        heads = self.cfg.num_heads
        b, n, c = hn.shape
        q = attn.q_proj(hn[:, :1]).reshape(b, 1, heads, c // heads).transpose(1, 2)
        k = attn.k_proj(hn).reshape(b, n, heads, c // heads).transpose(1, 2)
        weights = torch.softmax((q @ k.transpose(-1, -2)).float() * (c // heads) ** -0.5, dim=-1)  # (B,heads,1,n)
        return attn.v_proj(hn)[:, 1:].float(), weights[:, :, 0, 1:].mean(dim=1)


def _check_shape(hf: Dinov2Config, cfg: BackboneConfig) -> None:
    got = {
        "hidden_size": hf.hidden_size,
        "num_layers": hf.num_hidden_layers,
        "num_heads": hf.num_attention_heads,
        "patch_size": hf.patch_size,
    }
    want = {k: getattr(cfg, k) for k in got}
    if got != want:
        diff = {k: (got[k], want[k]) for k in got if got[k] != want[k]}
        raise ValueError(f"DINOv2 weights do not match the preset (field: (weights, preset)): {diff}")


def _bake_position_embeddings(model: Dinov2Model, grid: tuple[int, int]) -> None:
    """Replace the (square) position embedding by its bicubic resize to ``grid`` (no-op if equal)."""
    emb = model.embeddings
    pos = emb.position_embeddings.data
    n_old = pos.shape[1] - 1
    side = int(round(n_old**0.5))
    if side * side != n_old:
        # already baked to a non-square grid by an earlier build; only equal grids are valid then
        if n_old != grid[0] * grid[1]:
            raise ValueError(f"cannot resize a non-square position embedding ({n_old} patches) to grid {grid}")
        return
    if (side, side) == tuple(grid):
        return
    cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
    dim = pos.shape[-1]
    patch_pos = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    patch_pos = nn.functional.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
    patch_pos = patch_pos.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)
    emb.position_embeddings = nn.Parameter(torch.cat((cls_pos, patch_pos), dim=1))
    emb.patch_embeddings.num_patches = grid[0] * grid[1]
    LOG.debug("baked DINOv2 position embedding %dx%d -> %dx%d", side, side, *grid)
