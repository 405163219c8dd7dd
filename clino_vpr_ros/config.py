"""Model presets for the CLINO-VPR gated encoder: frozen dataclasses, no torch.

A :class:`ModelConfig` fully describes the network shape (backbone, CLIP tower, adapter + gate,
SALAD aggregator) and the input size. Checkpoints and exported ONNX models carry it as JSON
(:meth:`ModelConfig.to_dict` / :meth:`ModelConfig.from_dict`), so a model can always be rebuilt.

Presets (``MODEL_PRESETS``):

* ``large``: the design card. DINOv2-L/14 + CLIP ViT-L/14-336 at 336x336 -> 24x24 grid,
  SALAD 64 clusters x 8 -> 512-d. Weights: ``facebook/dinov2-large``,
  ``openai/clip-vit-large-patch14-336`` (HF format, loaded from a local folder or the local HF cache).
* ``small``: DINOv2-S/14 + CLIP ViT-B/32 shaped, 224x224 -> 16x16 grid; CPU-benchmarkable.
* ``dinov2_salad``: the published DINOv2-B/14 + SALAD (Izquierdo & Civera, CVPR 2024) at the authors'
  evaluation size 322x322 -> 23x23 grid, SALAD 64 x 128 + 256-d token -> 8448-d in SALAD's own order
  (``layout="channel_major"``), no channel adapter, gate off, PIL-bilinear resize (``resize``).
  Weights come from the released checkpoint through ``clino-vpr import salad``
  (:mod:`clino_vpr_ros.import_salad`), never from this preset alone.
* ``tiny``: the shipped default, trained from scratch on synthetic towns on a CPU: 112x112 -> 8x8
  grid, 4-layer ViT (hidden 192), 2-layer CLIP-shaped tower (hidden 128, projection 128, trained
  jointly since no pretrained weights exist for it),
  SALAD 32 clusters x 16 -> 512-d (an 8x8 grid has 64 features; the optimal-transport dustbin
  needs more features than clusters, so 64 clusters cannot be used there).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: bumped when the meaning of a serialised ModelConfig changes
CONFIG_SCHEMA_VERSION = 1

#: attention kernels that export to plain ONNX ops (no xFormers / flash attention)
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: how a camera frame is resized to the model input (``preprocess.to_model_input``):
#: "area" = OpenCV INTER_AREA when shrinking, INTER_LINEAR when growing (models trained here);
#: "pil_bilinear" = PIL ``Image.resize(BILINEAR)``, antialiased when shrinking (torchvision's
#: ``T.Resize`` on PIL images: what the SALAD authors evaluate with)
RESIZE_POLICIES = ("area", "pil_bilinear")
#: order of the cluster part of a SALAD descriptor: "cluster_major" = index k*l+d (models trained
#: here), "channel_major" = index d*m+k (the SALAD authors' flatten order, for imported weights)
SALAD_LAYOUTS = ("cluster_major", "channel_major")


@dataclass(frozen=True)
class BackboneConfig:
    """DINOv2 ViT shape (HF ``Dinov2Config`` fields) and which blocks train.

    ``trainable_blocks``: the last N transformer blocks (plus the final LayerNorm) are trained,
    the rest frozen; ``-1`` trains everything including the patch/position embeddings (needed to
    train a preset from scratch); ``0`` freezes the whole backbone.
    ``weights``: default weight source (HF hub id or folder), a hint for CLIs; ``build_encoder``
    only loads weights it is explicitly given.
    """

    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    patch_size: int = 14
    mlp_ratio: int = 4
    layerscale_value: float = 1.0
    layer_norm_eps: float = 1e-6
    trainable_blocks: int = 4
    attn_implementation: str = "sdpa"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    weights: str | None = "facebook/dinov2-large"


@dataclass(frozen=True)
class ClipConfig:
    """CLIP vision tower shape (HF ``CLIPVisionConfig`` fields).

    The tower always runs in eval mode. ``trainable=False`` (the design card) freezes it; only a
    preset trained from scratch with no pretrained CLIP (``tiny``) sets it True, because a frozen
    randomly initialised tower would feed the gate fixed random features.
    ``image_size`` is the tower's own square input size; the encoder resizes (bilinear, inside the
    graph) only when it differs from the model input size.
    """

    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    patch_size: int = 14
    image_size: int = 336
    projection_dim: int = 768
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attn_implementation: str = "sdpa"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    trainable: bool = False
    weights: str | None = "openai/clip-vit-large-patch14-336"


@dataclass(frozen=True)
class GateConfig:
    """Channel adapter (1x1 conv C->adapter_dim, BN, ReLU) and semantic gate MLP.

    ``adapter_dim=None``: no adapter, the gate and SALAD see the backbone's patch features directly
    (imported SALAD weights expect them).

    Gate: Linear(projection_dim -> hidden_dim), ReLU, Linear(hidden_dim -> h*w), sigmoid,
    reshaped to (B,1,h,w). ``use_gate=False`` fixes the mask to 1 (ablation) and drops the CLIP
    tower, whose only consumer is the gate.
    """

    adapter_dim: int | None = 512
    hidden_dim: int = 512
    use_gate: bool = True


@dataclass(frozen=True)
class SaladConfig:
    """SALAD aggregator (Izquierdo & Civera, CVPR 2024).

    Output size ``num_clusters * cluster_dim + token_dim`` unless ``descriptor_dim`` is set, in
    which case a final linear projection (as MegaLoc) maps it to ``descriptor_dim``.
    The published setting is ``num_clusters=64, cluster_dim=128, token_dim=256`` (8448-d).
    ``layout``: order of the cluster part (``SALAD_LAYOUTS``); only imported weights use "channel_major".
    """

    num_clusters: int = 64
    cluster_dim: int = 8
    token_dim: int = 0
    hidden_dim: int = 512
    dropout: float = 0.3
    sinkhorn_iters: int = 3
    descriptor_dim: int | None = None
    layout: str = "cluster_major"


@dataclass(frozen=True)
class ModelConfig:
    """Complete gated-encoder description. ``image_size`` is (height, width) of the model input;
    ``resize`` the policy that brings a camera frame to it (``RESIZE_POLICIES``)."""

    preset: str = "large"
    image_size: tuple[int, int] = (336, 336)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    salad: SaladConfig = field(default_factory=SaladConfig)
    resize: str = "area"

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def grid_size(self) -> tuple[int, int]:
        """(h, w) of the patch grid, which is also the gate-mask size."""
        p = self.backbone.patch_size
        return (self.image_size[0] // p, self.image_size[1] // p)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def aggregated_dim(self) -> int:
        """SALAD output size before the optional projection."""
        s = self.salad
        return s.num_clusters * s.cluster_dim + s.token_dim

    @property
    def descriptor_dim(self) -> int:
        return self.salad.descriptor_dim or self.aggregated_dim

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with top-level fields changed (configs are frozen; callers' configs are never mutated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples become lists) with the config schema version."""
        d = dataclasses.asdict(self)
        d["schema_version"] = CONFIG_SCHEMA_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; ValueError on an unknown schema version or unknown fields."""
        d = dict(d)
        version = d.pop("schema_version", None)
        if version != CONFIG_SCHEMA_VERSION:
            raise ValueError(
                f"model config schema version {version!r} is not supported (expected {CONFIG_SCHEMA_VERSION}); "
                "re-export or re-train with this package version"
            )
        subs = {"backbone": BackboneConfig, "clip": ClipConfig, "gate": GateConfig, "salad": SaladConfig}
        kwargs: dict[str, Any] = {}
        for name, value in d.items():
            if name in subs:
                kwargs[name] = _sub_from_dict(subs[name], value)
            elif name == "image_size":
                kwargs[name] = tuple(int(v) for v in value)
            elif name in {f.name for f in dataclasses.fields(cls)}:
                kwargs[name] = value
            else:
                raise ValueError(f"unknown ModelConfig field {name!r}")
        return cls(**kwargs)


def _sub_from_dict(cls: type, value: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(value) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; valid: {sorted(known)}")
    # JSON turns tuples into lists; frozen configs keep tuples so they stay hashable
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})


def _validate(cfg: ModelConfig) -> None:
    h, w = cfg.image_size
    p = cfg.backbone.patch_size
    if h <= 0 or w <= 0 or h % p or w % p:
        raise ValueError(f"image_size {cfg.image_size} must be positive multiples of the patch size {p}")
    b = cfg.backbone
    if b.hidden_size % b.num_heads:
        raise ValueError(f"backbone hidden_size {b.hidden_size} is not divisible by num_heads {b.num_heads}")
    if not (b.trainable_blocks == -1 or 0 <= b.trainable_blocks <= b.num_layers):
        raise ValueError(f"trainable_blocks must be -1 (all) or in [0, {b.num_layers}], got {b.trainable_blocks}")
    for name, impl in (("backbone", b.attn_implementation), ("clip", cfg.clip.attn_implementation)):
        if impl not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"{name} attn_implementation {impl!r} unknown; valid: {ATTENTION_IMPLEMENTATIONS}")
    if cfg.clip.image_size % cfg.clip.patch_size:
        raise ValueError(f"clip image_size {cfg.clip.image_size} is not a multiple of patch {cfg.clip.patch_size}")
    s = cfg.salad
    n = (h // p) * (w // p)
    if not 0 < s.num_clusters < n:
        # the dustbin marginal is n - m: it must be positive
        raise ValueError(f"SALAD needs 0 < num_clusters < number of patches ({n}), got {s.num_clusters}")
    if s.cluster_dim <= 0 or s.token_dim < 0 or s.sinkhorn_iters <= 0:
        raise ValueError(f"invalid SALAD sizes: {s}")
    if s.descriptor_dim is not None and s.descriptor_dim <= 0:
        raise ValueError(f"descriptor_dim must be positive or None, got {s.descriptor_dim}")
    if s.layout not in SALAD_LAYOUTS:
        raise ValueError(f"SALAD layout {s.layout!r} unknown; valid: {SALAD_LAYOUTS}")
    if cfg.resize not in RESIZE_POLICIES:
        raise ValueError(f"resize policy {cfg.resize!r} unknown; valid: {RESIZE_POLICIES}")
    if cfg.gate.adapter_dim is not None and cfg.gate.adapter_dim <= 0:
        raise ValueError(f"adapter_dim must be positive or None (no adapter), got {cfg.gate.adapter_dim}")


def _large() -> ModelConfig:
    return ModelConfig()


def _small() -> ModelConfig:
    return ModelConfig(
        preset="small",
        image_size=(224, 224),
        backbone=BackboneConfig(hidden_size=384, num_layers=12, num_heads=6, weights="facebook/dinov2-small"),
        clip=ClipConfig(
            hidden_size=768,
            num_layers=12,
            num_heads=12,
            intermediate_size=3072,
            patch_size=32,
            image_size=224,
            projection_dim=512,
            weights="openai/clip-vit-base-patch32",
        ),
    )


def _tiny() -> ModelConfig:
    return ModelConfig(
        preset="tiny",
        image_size=(112, 112),
        backbone=BackboneConfig(
            hidden_size=192, num_layers=4, num_heads=3, layerscale_value=0.1, trainable_blocks=-1, weights=None
        ),
        clip=ClipConfig(
            hidden_size=128,
            num_layers=2,
            num_heads=2,
            intermediate_size=512,
            patch_size=16,
            image_size=112,
            projection_dim=128,
            trainable=True,
            weights=None,
        ),
        gate=GateConfig(adapter_dim=256, hidden_dim=128),
        salad=SaladConfig(num_clusters=32, cluster_dim=16, hidden_dim=256),
    )


def _dinov2_salad() -> ModelConfig:
    return ModelConfig(
        preset="dinov2_salad",
        image_size=(322, 322),
        backbone=BackboneConfig(hidden_size=768, num_layers=12, num_heads=12, trainable_blocks=0, weights=None),
        # the CLIP tower the semantic gate uses when one is trained on top (train --init-from)
        clip=ClipConfig(),
        gate=GateConfig(adapter_dim=None, hidden_dim=512, use_gate=False),
        salad=SaladConfig(num_clusters=64, cluster_dim=128, token_dim=256, hidden_dim=512, layout="channel_major"),
        resize="pil_bilinear",
    )


#: named presets; get_model_config returns them
MODEL_PRESETS: dict[str, ModelConfig] = {
    "tiny": _tiny(),
    "small": _small(),
    "large": _large(),
    "dinov2_salad": _dinov2_salad(),
}


def get_model_config(name: str) -> ModelConfig:
    """The preset called ``name``; ValueError listing the valid names otherwise."""
    try:
        return MODEL_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; valid: {', '.join(sorted(MODEL_PRESETS))}") from None
