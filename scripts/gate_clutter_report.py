"""Where does a trained semantic gate look? Mean gate mask on clutter vs structure (issue 11).

    python scripts/gate_clutter_report.py GATED.safetensors|GATED.onnx --towns 900 902 --views 60 --out DIR

Renders held-out generated towns with per-pixel labels at the model's input size (so no resize
blurs the labels), runs the gated encoder (torch checkpoint, or an exported .onnx through
onnxruntime), and assigns each patch of the gate's grid the
label group covering most of its pixels: clutter (sky, vegetation, vehicle, pedestrian), structure
(building, sign), ground (road, sidewalk). Writes gate_clutter.json (mean mask per group and per
label) and gate_masks.png (images, labels, masks).

A gate computed from one global embedding can lower the whole upper half of every frame (where sky
and trees are) without telling clutter from structure; ``position_matched`` separates the two: per
grid cell, the mean mask on clutter patches minus that on structure patches at that same cell,
averaged over cells (weighted by the smaller count). Negative = clutter suppressed beyond a fixed
spatial prior.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from clino_vpr_ros.checkpoint import load_encoder
from clino_vpr_ros.evaluate import pyplot_agg, save_figure, write_json_atomic
from clino_vpr_ros.synth import CONDITIONS, LABELS, Renderer
from clino_vpr_ros.synth.session import make_base_T_camera, pose2d
from clino_vpr_ros.synth.writers import town_with_capacity

GROUPS = {"clutter": ("sky", "vegetation", "vehicle", "pedestrian"), "structure": ("building", "sign"),
          "ground": ("road", "sidewalk")}
VIEW_CONDITIONS = ("day", "dusk", "night", "overcast_fog", "autumn_rain", "winter")


def render_views(town_seed: int, n: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n,H,W,3) RGB and uint8 (n,H,W) label images of one town under varied conditions."""
    town, places = town_with_capacity(town_seed, 30.0, n)
    renderer = Renderer(town, size)
    rgb, lab = [], []
    for i, (x, y, yaw) in enumerate(places[:n]):
        cond = CONDITIONS[VIEW_CONDITIONS[i % len(VIEW_CONDITIONS)]].with_clutter(7000 + i)
        out = renderer.render(pose2d(x, y, yaw) @ make_base_T_camera(), cond, 300.0 + i)
        rgb.append(out.rgb)
        lab.append(out.labels)
    return np.stack(rgb), np.stack(lab)


def patch_groups(labels: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per patch: majority label id (n,h,w) and majority group index into GROUPS (-1: none)."""
    n, hh, ww = labels.shape
    ph, pw = hh // grid[0], ww // grid[1]
    cells = labels[:, : grid[0] * ph, : grid[1] * pw].reshape(n, grid[0], ph, grid[1], pw).transpose(0, 1, 3, 2, 4)
    cells = cells.reshape(n, grid[0], grid[1], ph * pw)
    counts = np.stack([(cells == v).sum(-1) for v in range(max(LABELS.values()) + 1)], axis=-1)
    major = counts.argmax(-1)
    group = np.full(major.shape, -1)
    for g, names in enumerate(GROUPS.values()):
        group[np.isin(major, [LABELS[x] for x in names])] = g
    return major, group


def position_matched(masks: np.ndarray, group: np.ndarray, a: int, b: int) -> float | None:
    """Mean over grid cells of (mean mask on group a - mean mask on group b) at that cell.

    Args: masks float (n,h,w); group int (n,h,w) group indices. Cells are weighted by the smaller of
    the two counts; None when no cell holds both groups.
    """
    diffs, weights = [], []
    for i in range(masks.shape[1]):
        for j in range(masks.shape[2]):
            in_a, in_b = group[:, i, j] == a, group[:, i, j] == b
            if in_a.any() and in_b.any():
                diffs.append(masks[in_a, i, j].mean() - masks[in_b, i, j].mean())
                weights.append(min(in_a.sum(), in_b.sum()))
    return float(np.average(diffs, weights=weights)) if diffs else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--towns", type=int, nargs="+", default=[900, 902])
    p.add_argument("--views", type=int, default=60, help="views per town")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    size, grid, gate_masks = _gate(a.checkpoint)
    rgb, lab = zip(*(render_views(t, a.views, size) for t in a.towns))
    rgb, lab = np.concatenate(rgb), np.concatenate(lab)
    masks = gate_masks(rgb)
    major, group = patch_groups(lab, grid)
    res = {"checkpoint": str(a.checkpoint), "towns": a.towns, "views": int(len(rgb)), "grid": list(grid),
           "mean_mask": {g: float(masks[group == i].mean()) for i, g in enumerate(GROUPS) if (group == i).any()},
           "patches": {g: int((group == i).sum()) for i, g in enumerate(GROUPS)},
           "mean_mask_per_label": {k: float(masks[major == v].mean()) for k, v in LABELS.items() if (major == v).any()},
           "mask_range": [float(masks.min()), float(masks.max())],
           "position_matched_clutter_minus_structure": position_matched(masks, group, 0, 1)}
    a.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(res, a.out / "gate_clutter.json")
    # render_views cycles through VIEW_CONDITIONS: view i of a town is seen under condition i % 6
    cond = np.concatenate([np.arange(a.views) % len(VIEW_CONDITIONS)] * len(a.towns))
    _plot(rgb, lab, masks, cond, a.out / "gate_masks.png")
    print(json.dumps(res, indent=1))
    return 0


def _gate(path: Path) -> tuple[tuple[int, int], tuple[int, int], Callable[[np.ndarray], np.ndarray]]:
    """Input size, mask grid and a function uint8 (n,H,W,3) -> gate masks float32 (n,h,w) for a model file."""
    if path.suffix == ".onnx":
        from clino_vpr_ros.runtime import RuntimeEncoder

        enc = RuntimeEncoder(path, providers=["CPUExecutionProvider"])
        return enc.metadata.input_size, enc.metadata.mask_size, lambda rgb: enc.encode(list(rgb)).masks[:, 0]
    model = load_encoder(path).eval()

    def run(rgb: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([model(torch.from_numpy(rgb[i : i + 32]))[1][:, 0].numpy()
                                   for i in range(0, len(rgb), 32)])

    return tuple(model.config.image_size), model.mask_size, run


def _plot(rgb: np.ndarray, lab: np.ndarray, masks: np.ndarray, cond: np.ndarray, out: Path) -> None:
    """One view per condition of VIEW_CONDITIONS: the one with the most vegetation, vehicle and pedestrian pixels."""
    from clino_vpr_ros.synth.cli import _LABEL_COLOURS

    plt = pyplot_agg()
    objects = np.isin(lab, [LABELS[x] for x in ("vegetation", "vehicle", "pedestrian")]).mean((1, 2))
    views = np.arange(len(rgb))
    n = len(VIEW_CONDITIONS)
    idx = [int(views[cond == c][objects[cond == c].argmax()]) for c in range(n)]
    fig, axes = plt.subplots(3, n, figsize=(2.2 * n, 7), dpi=100)
    for c, i in enumerate(idx):
        h, w = rgb[i].shape[:2]
        axes[0, c].imshow(rgb[i])
        axes[1, c].imshow(_LABEL_COLOURS[lab[i]])
        axes[2, c].imshow(rgb[i])
        im = axes[2, c].imshow(masks[i], cmap="magma", vmin=0, vmax=1, alpha=0.7, extent=(0, w, h, 0),
                               interpolation="nearest")
        for r in range(3):
            axes[r, c].set_axis_off()
        axes[0, c].set_title(VIEW_CONDITIONS[c], fontsize=8)
    fig.suptitle("held-out views, one per condition (the one with the most vegetation, vehicles, pedestrians)",
                 fontsize=8)
    axes[1, 0].set_title("labels (sky blue, building brown, vegetation green, vehicle red, person yellow)",
                         fontsize=7, loc="left")
    axes[2, 0].set_title("gate mask (dark = suppressed)", fontsize=8, loc="left")
    fig.colorbar(im, ax=axes[2, -1], fraction=0.046, pad=0.04)
    save_figure(fig, out)


if __name__ == "__main__":
    raise SystemExit(main())
