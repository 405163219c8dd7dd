"""Import the published DINOv2 + SALAD weights (Izquierdo & Civera, CVPR 2024) into the encoder.

``clino-vpr import salad dino_salad.ckpt --out models/dinov2_salad.onnx [--fp16] [--image-size H W]``

The released checkpoint is a plain PyTorch state dict (``backbone.model.*``: a DINOv2 ViT as built by
torch hub; ``aggregator.*``: SALAD). It is read with ``torch.load(weights_only=True)``, so no object is
ever unpickled. The architecture is read from the tensor shapes (width, depth, patch, MLP size,
clusters, cluster and token sizes); the number of attention heads is not in the shapes and follows
DINOv2's head width of 64 unless given. Every key is mapped (none left over, none missing) into the
``dinov2_salad`` layout of :class:`~clino_vpr_ros.model.GatedEncoder` (no adapter, gate off), every
loaded tensor is compared with the file by value, and the model is exported to ONNX with the usual
metadata, fingerprint and parity check.

What makes the descriptors the authors' own, element by element:

* position embeddings: DINOv2's ``interpolate_pos_encoding`` (bicubic, no antialiasing, sampling set
  by ``scale_factor = (grid + 0.1) / 37`` rather than by the output size; skipped for a square 37x37
  grid), computed once here and baked in at the fixed input size;
* the descriptor order: global token first, then the clusters channel-major (``SaladConfig.layout``);
* preprocessing: the model's ``resize`` policy is PIL bilinear (``config.RESIZE_POLICIES``), ImageNet
  mean/std inside the graph.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from clino_vpr_ros.config import ClipConfig, GateConfig, ModelConfig, get_model_config

LOG = logging.getLogger(__name__)

#: DINOv2's own head width: the released ViTs have width / 64 heads (S 6, B 12, L 16, g 24)
DINOV2_HEAD_DIM = 64
#: DINOv2's interpolate_pos_encoding offset, added to the target grid before dividing (avoids
#: floating-point off-by-one in the output size; it also shifts the sampling positions)
_POS_OFFSET = 0.1
_BB = "backbone.model."
_AG = "aggregator."


@dataclass(frozen=True)
class SaladLayout:
    """What the tensor shapes of a DINOv2-SALAD checkpoint say about its architecture."""

    width: int
    depth: int
    patch_size: int
    pos_grid: int
    mlp_ratio: int
    num_clusters: int
    cluster_dim: int
    token_dim: int
    hidden_dim: int


def read_salad_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, loaded without unpickling objects (float32, CPU).

    A PyTorch Lightning checkpoint of a SALAD training run (the same keys under ``state_dict``) is
    accepted too. Raises FileNotFoundError / ValueError (not a weights-only PyTorch file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SALAD checkpoint {str(path)!r} does not exist (download dino_salad.ckpt by hand)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ValueError(
            f"{str(path)!r} is not a weights-only PyTorch state dict (corrupt, or it holds Python objects "
            f"that are never unpickled here): {exc}"
        ) from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict (name -> tensor)")
    return {k: v.detach().float() for k, v in obj.items()}


def infer_layout(sd: dict[str, torch.Tensor]) -> SaladLayout:
    """Read the architecture from the shapes, then require exactly the keys/shapes it implies.

    Raises ValueError naming what was expected: a checkpoint of another layout (registers, another
    aggregator, a missing or extra tensor, an inconsistent shape) is refused.
    """
    need = [f"{_BB}pos_embed", f"{_BB}patch_embed.proj.weight", f"{_AG}score.3.weight",
            f"{_AG}cluster_features.3.weight", f"{_AG}token_features.2.weight", f"{_AG}token_features.0.weight",
            f"{_BB}blocks.0.mlp.fc1.weight"]
    absent = [k for k in need if k not in sd]
    if absent:
        raise ValueError(
            f"not a DINOv2-SALAD checkpoint: missing {absent}; expected the released dino_salad.ckpt layout "
            f"({_BB}{{cls_token,pos_embed,mask_token,patch_embed,blocks.N,norm}}, {_AG}{{token_features,"
            f"cluster_features,score,dust_bin}})"
        )
    width, _, patch, _ = sd[f"{_BB}patch_embed.proj.weight"].shape
    n_pos = sd[f"{_BB}pos_embed"].shape[1] - 1
    grid = int(round(n_pos**0.5))
    blocks = {int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(_BB)}blocks\.(\d+)\.", k))}
    mlp_hidden = sd[f"{_BB}blocks.0.mlp.fc1.weight"].shape[0]
    layout = SaladLayout(
        width=int(width), depth=len(blocks), patch_size=int(patch), pos_grid=grid,
        mlp_ratio=int(mlp_hidden // width), num_clusters=int(sd[f"{_AG}score.3.weight"].shape[0]),
        cluster_dim=int(sd[f"{_AG}cluster_features.3.weight"].shape[0]),
        token_dim=int(sd[f"{_AG}token_features.2.weight"].shape[0]),
        hidden_dim=int(sd[f"{_AG}token_features.0.weight"].shape[0]),
    )
    problems = []
    if grid * grid != n_pos or blocks != set(range(len(blocks))) or mlp_hidden != layout.mlp_ratio * width:
        problems.append(f"pos_embed {n_pos} patches (square grid), blocks {sorted(blocks)} (0..N-1), "
                        f"MLP {mlp_hidden} (a multiple of {width})")
    expected = expected_shapes(layout)
    missing = sorted(set(expected) - set(sd))
    extra = sorted(set(sd) - set(expected))
    if missing:
        problems.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if extra:
        problems.append(f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''} (registers, another "
                        "aggregator or another backbone are not supported)")
    wrong = [f"{k} {tuple(sd[k].shape)} != {v}" for k, v in expected.items() if k in sd and tuple(sd[k].shape) != v]
    if wrong:
        problems.append(f"shapes {wrong[:5]}")
    if problems:
        raise ValueError(f"not the DINOv2-SALAD layout implied by its shapes ({layout}): " + "; ".join(problems))
    return layout


def expected_shapes(lay: SaladLayout) -> dict[str, tuple[int, ...]]:
    """Every key of a DINOv2-SALAD state dict with ``lay``'s architecture and its shape."""
    d, h, p = lay.width, lay.hidden_dim, lay.patch_size
    out: dict[str, tuple[int, ...]] = {
        f"{_BB}cls_token": (1, 1, d), f"{_BB}pos_embed": (1, 1 + lay.pos_grid**2, d), f"{_BB}mask_token": (1, d),
        f"{_BB}patch_embed.proj.weight": (d, 3, p, p), f"{_BB}patch_embed.proj.bias": (d,),
        f"{_BB}norm.weight": (d,), f"{_BB}norm.bias": (d,), f"{_AG}dust_bin": (),
        f"{_AG}token_features.0.weight": (h, d), f"{_AG}token_features.0.bias": (h,),
        f"{_AG}token_features.2.weight": (lay.token_dim, h), f"{_AG}token_features.2.bias": (lay.token_dim,),
    }
    for head, size in (("cluster_features", lay.cluster_dim), ("score", lay.num_clusters)):
        out.update({f"{_AG}{head}.0.weight": (h, d, 1, 1), f"{_AG}{head}.0.bias": (h,),
                    f"{_AG}{head}.3.weight": (size, h, 1, 1), f"{_AG}{head}.3.bias": (size,)})
    m = lay.mlp_ratio * d
    for i in range(lay.depth):
        b = f"{_BB}blocks.{i}."
        out.update({
            f"{b}norm1.weight": (d,), f"{b}norm1.bias": (d,), f"{b}norm2.weight": (d,), f"{b}norm2.bias": (d,),
            f"{b}attn.qkv.weight": (3 * d, d), f"{b}attn.qkv.bias": (3 * d,),
            f"{b}attn.proj.weight": (d, d), f"{b}attn.proj.bias": (d,), f"{b}ls1.gamma": (d,), f"{b}ls2.gamma": (d,),
            f"{b}mlp.fc1.weight": (m, d), f"{b}mlp.fc1.bias": (m,), f"{b}mlp.fc2.weight": (d, m), f"{b}mlp.fc2.bias": (d,),
        })
    return out


def salad_model_config(
    lay: SaladLayout, image_size: tuple[int, int] = (322, 322), num_heads: int | None = None,
    gate_clip: ClipConfig | None = None, gate_hidden: int = 512,
) -> ModelConfig:
    """The ``dinov2_salad`` preset resized to ``lay``; ``gate_clip`` adds a semantic gate (frozen CLIP tower)."""
    heads = num_heads or max(1, lay.width // DINOV2_HEAD_DIM)
    if lay.width % heads:
        raise ValueError(f"--num-heads {heads} does not divide the ViT width {lay.width}")
    base = get_model_config("dinov2_salad")
    backbone = dataclasses.replace(base.backbone, hidden_size=lay.width, num_layers=lay.depth, num_heads=heads,
                                   patch_size=lay.patch_size, mlp_ratio=lay.mlp_ratio, layerscale_value=1.0)
    salad = dataclasses.replace(base.salad, num_clusters=lay.num_clusters, cluster_dim=lay.cluster_dim,
                                token_dim=lay.token_dim, hidden_dim=lay.hidden_dim)
    gate = GateConfig(adapter_dim=None, hidden_dim=gate_hidden, use_gate=gate_clip is not None)
    clip = dataclasses.replace(gate_clip, trainable=False) if gate_clip is not None else base.clip
    return base.replace(image_size=tuple(int(v) for v in image_size), backbone=backbone, salad=salad, gate=gate,
                        clip=clip)


def dinov2_position_embedding(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """DINOv2's position-embedding resize for a (h, w) patch grid, as its hub models compute it.

    pos: float (1, 1+G*G, D) (CLS row + square G x G grid). Returns float32 (1, 1+h*w, D). The grid
    part is resized bicubically (align_corners False, no antialiasing) with scale factors
    ((h + 0.1)/G, (w + 0.1)/G): the sampling positions follow those factors, so the result differs
    from a resize to ``size=(h, w)``. A square G x G target is returned unchanged, as DINOv2 does.
    """
    h, w = grid
    n = pos.shape[1] - 1
    side = int(round(n**0.5))
    if (h, w) == (side, side):
        return pos.float().clone()
    dim = pos.shape[-1]
    patch = pos[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    scale = ((h + _POS_OFFSET) / side, (w + _POS_OFFSET) / side)
    patch = F.interpolate(patch, scale_factor=scale, mode="bicubic", align_corners=False, antialias=False)
    if tuple(patch.shape[-2:]) != (h, w):
        raise ValueError(f"position-embedding resize gave {tuple(patch.shape[-2:])}, expected {(h, w)}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, h * w, dim)
    return torch.cat((pos[:, :1].float(), patch), dim=1)


def _hf_attention_names(model_keys: set[str]) -> dict[str, str]:
    """Names of the q/k/v/output projections in this transformers version's Dinov2Layer."""
    for names in ({"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"},
                  {"q": "attention.query", "k": "attention.key", "v": "attention.value", "o": "output.dense"}):
        if f"backbone.model.encoder.layer.0.attention.{names['q']}.weight" in model_keys:
            return names
    raise ValueError("this transformers version names the Dinov2 attention projections in an unknown way")


def map_state_dict(
    sd: dict[str, torch.Tensor], lay: SaladLayout, grid: tuple[int, int], model_keys: set[str]
) -> dict[str, torch.Tensor]:
    """The authors' keys -> the encoder's (``model_keys``: its state-dict names). Every key is used once.

    qkv (3D, D) is split row-wise into query, key, value; LayerScale ``ls{1,2}.gamma`` becomes
    ``layer_scale{1,2}.lambda1``; the position embedding is resized to ``grid`` (see
    :func:`dinov2_position_embedding`); ``dust_bin`` becomes ``dustbin``.
    """
    att = _hf_attention_names(model_keys)
    e, a = "backbone.model.embeddings.", "aggregator."
    out = {
        f"{e}cls_token": sd[f"{_BB}cls_token"], f"{e}mask_token": sd[f"{_BB}mask_token"],
        f"{e}position_embeddings": dinov2_position_embedding(sd[f"{_BB}pos_embed"], grid),
        f"{e}patch_embeddings.projection.weight": sd[f"{_BB}patch_embed.proj.weight"],
        f"{e}patch_embeddings.projection.bias": sd[f"{_BB}patch_embed.proj.bias"],
        "backbone.model.layernorm.weight": sd[f"{_BB}norm.weight"],
        "backbone.model.layernorm.bias": sd[f"{_BB}norm.bias"],
        f"{a}dustbin": sd[f"{_AG}dust_bin"],
    }
    for key in sd:
        if key.startswith(_AG) and key != f"{_AG}dust_bin":
            out[a + key[len(_AG):]] = sd[key]  # same Sequential indices (0 and 2 or 3) on both sides
    for i in range(lay.depth):
        src, dst = f"{_BB}blocks.{i}.", f"backbone.model.encoder.layer.{i}."
        for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
            for p in ("weight", "bias"):
                out[f"{dst}{name}.{p}"] = sd[f"{src}{name}.{p}"]
        out[f"{dst}layer_scale1.lambda1"] = sd[f"{src}ls1.gamma"]
        out[f"{dst}layer_scale2.lambda1"] = sd[f"{src}ls2.gamma"]
        for p in ("weight", "bias"):
            q, k, v = sd[f"{src}attn.qkv.{p}"].chunk(3, dim=0)
            out.update({f"{dst}attention.{att['q']}.{p}": q, f"{dst}attention.{att['k']}.{p}": k,
                        f"{dst}attention.{att['v']}.{p}": v})
            out[f"{dst}attention.{att['o']}.{p}"] = sd[f"{src}attn.proj.{p}"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def load_salad_encoder(
    path: str | Path, image_size: tuple[int, int] = (322, 322), num_heads: int | None = None,
    gate_clip: ClipConfig | None = None, gate_hidden: int = 512, clip_weights: str | Path | None = None,
):
    """Build the encoder from a released DINOv2-SALAD checkpoint (eval mode), every tensor checked.

    ``gate_clip``: add the semantic gate (CLIP tower of that shape, frozen; ``clip_weights`` an HF
    folder, else random), opened so the mask starts at ~1 (:meth:`SemanticGate.open_`).
    Returns a :class:`~clino_vpr_ros.model.GatedEncoder`.
    Raises FileNotFoundError / ValueError (foreign file, other layout, bad size or heads).
    """
    from clino_vpr_ros.model import build_encoder

    sd = read_salad_state_dict(path)
    lay = infer_layout(sd)
    cfg = salad_model_config(lay, image_size, num_heads, gate_clip, gate_hidden)
    model = build_encoder(cfg, clip=clip_weights if gate_clip is not None else None)
    own = model.state_dict()
    mapped = map_state_dict(sd, lay, cfg.grid_size, set(own))
    # the gate and CLIP tower are not in a SALAD checkpoint: they keep their own initialisation
    extra_own = {k: v for k, v in own.items() if k.startswith(("gate.", "clip.")) and k not in mapped}
    try:
        model.load_state_dict({**mapped, **extra_own}, strict=True)
    except RuntimeError as exc:  # a key or shape the mapping did not produce
        raise ValueError(f"{path}: the mapped tensors do not fit the encoder: {exc}") from exc
    check_loaded(model, sd, lay)
    if model.gate is not None:
        model.gate.open_()
    LOG.info("imported %s: ViT %d-d x %d blocks (%d heads), SALAD %d x %d + %d -> %d-d, input %dx%d",
             path, lay.width, lay.depth, cfg.backbone.num_heads, lay.num_clusters, lay.cluster_dim,
             lay.token_dim, model.descriptor_dim, *cfg.image_size)
    return model.eval()


def check_loaded(model, sd: dict[str, torch.Tensor], lay: SaladLayout) -> None:
    """Every tensor of ``sd`` against what ``model`` holds, by value (ValueError on any difference).

    Catches the tensors the descriptors cannot reveal (mask_token, dust_bin, score.3.bias).
    """
    got = model.state_dict()
    mapped = map_state_dict(sd, lay, model.config.grid_size, set(got))
    not_from_file = sorted(k for k in set(got) - set(mapped) if not k.startswith(("gate.", "clip.")))
    if not_from_file:
        raise ValueError(f"encoder tensors the checkpoint does not provide: {not_from_file[:5]}")
    bad = [k for k, v in mapped.items() if not torch.equal(got[k].float(), v)]
    if bad:
        raise ValueError(f"loaded tensors differ from the checkpoint: {bad[:5]}")


def import_salad(
    path: str | Path, out: str | Path, fp16: bool = False, num_heads: int | None = None,
    image_size: tuple[int, int] = (322, 322),
) -> Path:
    """Checkpoint -> parity-checked ONNX model the node runs (see module docstring). Returns ``out``."""
    from clino_vpr_ros.export import export_onnx

    model = load_salad_encoder(path, image_size, num_heads)
    return export_onnx(model, Path(out), fp16=fp16, check=True)


def main(argv: list[str] | None = None) -> int:
    """``clino-vpr import salad CKPT --out MODEL.onnx [--fp16] [--num-heads N] [--image-size H W]``."""
    parser = argparse.ArgumentParser(prog="clino-vpr import", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    s = sub.add_parser("salad", help="the released DINOv2-SALAD checkpoint (dino_salad.ckpt)")
    s.add_argument("checkpoint", type=Path, help="dino_salad.ckpt (a plain state dict), downloaded by hand")
    s.add_argument("--out", type=Path, required=True, help="output .onnx file")
    s.add_argument("--fp16", action="store_true", help="fp16 ViT, fp32 LayerNorm/normalisation/SALAD")
    s.add_argument("--num-heads", type=int, default=None, help="attention heads (default: ViT width / 64)")
    s.add_argument("--image-size", type=int, nargs=2, default=(322, 322), metavar=("H", "W"),
                   help="fixed input size, multiples of the patch size (default: the authors' 322 322)")
    args = parser.parse_args(argv)
    try:
        path = import_salad(args.checkpoint, args.out, args.fp16, args.num_heads, tuple(args.image_size))
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"clino-vpr import: error: {err}\n")
    print(f"wrote {path} ({'fp16' if args.fp16 else 'fp32'}, parity checked); run it with "
          f"`ros2 launch clino_vpr_ros clino_vpr.launch.py model_path:={path}`")
    return 0
