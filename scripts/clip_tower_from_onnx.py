"""Recover the CLIP tower of an exported gated model (e.g. the shipped tiny one) as an HF-format folder.

No pretrained CLIP can be downloaded on the development machine, so issue 11's gate-only experiment
had only a random frozen tower. The shipped ``models/clino-vpr-tiny.onnx`` holds a CLIP-shaped tower
(tiny preset) trained jointly with its gate on synthetic towns: this script reads its weights back
from the ONNX initializers and writes them with ``save_pretrained``, so that ``train --clip DIR``
loads them through the same loader as ``openai/clip-vit-large-patch14-336``.

Names: the exporter keeps parameter names for biases, norms and embeddings; a ``Linear`` weight is
stored transposed under an anonymous name (``onnx::MatMul_N``) and is found from the node that uses
it (``/clip/model/<module path>/MatMul`` -> ``<module path>.weight``).

Check: the recovered tower plus the model's own gate MLP must reproduce the ONNX graph's
``gate_mask`` output under onnxruntime (max abs difference printed; 1e-5 required).

Usage: python scripts/clip_tower_from_onnx.py models/clino-vpr-tiny.onnx --out runs/clip_tiny
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from clino_vpr_ros.config import ModelConfig
from clino_vpr_ros.model.clip_tower import ClipTower
from clino_vpr_ros.model.gate import SemanticGate
from clino_vpr_ros.runtime import parity_images

PREFIXES = ("clip.", "gate.")


def onnx_state_dict(model: onnx.ModelProto, prefixes: tuple[str, ...] = PREFIXES) -> dict[str, torch.Tensor]:
    """Parameters under ``prefixes`` (torch names, torch layouts, float32) from an exported graph."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    state = {k: torch.from_numpy(v.astype(np.float32).copy()) for k, v in inits.items() if k.startswith(prefixes)}
    for node in model.graph.node:
        if node.op_type != "MatMul" or not node.name.endswith("/MatMul"):
            continue
        weight = [x for x in node.input if x in inits and not x.startswith(prefixes)]
        name = node.name.strip("/").rsplit("/", 1)[0].replace("/", ".") + ".weight"
        if weight and name.startswith(prefixes):
            # torch Linear y = x W^T + b exports as MatMul(x, W^T)
            state[name] = torch.from_numpy(inits[weight[0]].astype(np.float32).T.copy())
    return state


def recover(onnx_path: Path) -> tuple[ClipTower, SemanticGate, ModelConfig]:
    """The exported model's CLIP tower and gate MLP, loaded strictly (every parameter present)."""
    proto = onnx.load(str(onnx_path))
    props = {p.key: p.value for p in proto.metadata_props}
    cfg = ModelConfig.from_dict(json.loads(props["model_config"]))
    if not cfg.gate.use_gate:
        raise ValueError(f"{onnx_path} has no semantic gate, hence no CLIP tower")
    state = onnx_state_dict(proto)
    tower = ClipTower(cfg.clip)
    h, w = int(props["mask_size"].split("x")[0]), int(props["mask_size"].split("x")[1])
    gate = SemanticGate(tower.out_dim, cfg.gate.hidden_dim, (h, w))
    tower.load_state_dict({k[len("clip."):]: v for k, v in state.items() if k.startswith("clip.")}, strict=True)
    gate.load_state_dict({k[len("gate."):]: v for k, v in state.items() if k.startswith("gate.")}, strict=True)
    return tower.eval(), gate.eval(), cfg


def mask_difference(onnx_path: Path, tower: ClipTower, gate: SemanticGate, cfg: ModelConfig, n: int = 4) -> float:
    """Max abs difference between the recovered gate mask and the ONNX graph's ``gate_mask``."""
    images = parity_images(cfg.image_size, n=n)  # uint8 (n,H,W,3)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    want = sess.run(["gate_mask"], {"images": images})[0]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    if tuple(x.shape[-2:]) != (tower.image_size, tower.image_size):
        x = torch.nn.functional.interpolate(x, size=(tower.image_size,) * 2, mode="bilinear", align_corners=False)
    mean = torch.tensor(cfg.clip.mean).reshape(1, 3, 1, 1)
    std = torch.tensor(cfg.clip.std).reshape(1, 3, 1, 1)
    with torch.no_grad():
        got = gate(tower((x - mean) / std)).numpy()
    return float(np.abs(got - want).max())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", type=Path, help="exported gated model (.onnx)")
    p.add_argument("--out", type=Path, required=True, help="HF-format folder to write")
    p.add_argument("--tol", type=float, default=1e-5)
    args = p.parse_args(argv)
    tower, gate, cfg = recover(args.model)
    diff = mask_difference(args.model, tower, gate, cfg)
    print(f"recovered tower + gate vs ONNX gate_mask: max abs diff {diff:.2e}")
    if diff > args.tol:
        print(f"error: difference above {args.tol}; not writing {args.out}", file=sys.stderr)
        return 1
    tower.model.save_pretrained(args.out)
    print(f"wrote {args.out} (CLIPVisionModelWithProjection, {cfg.preset} preset's tower shape)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
