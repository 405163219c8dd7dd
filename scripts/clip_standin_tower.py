"""A stand-in for CLIP's semantics: the gate's CLIP-shaped tower pre-trained on the generator's labels (issue 11).

The semantic gate reads one frozen CLIP image embedding and turns it into a mask over the patch grid.
Real CLIP (ViT-L/14-336) brings semantic knowledge into that embedding; no pretrained CLIP can be
downloaded on the development machine, and a random tower (or one trained for place recognition)
carries none, so the gate had only a fixed spatial prior to learn. This script gives a small
CLIP-layout tower (HF ``CLIPVisionModelWithProjection``, the ``tiny`` preset's shape) semantic
knowledge of the generated world instead, honestly a stand-in: it renders views of the TRAINING towns
with the renderer's per-pixel labels (sky, building, road, sidewalk, vegetation, vehicle, pedestrian,
sign) and trains the tower so that a linear probe on its projected embedding (exactly what the gate
sees) predicts, for every cell of the gate's grid, the fraction of each label in that cell. The probe
is discarded; the tower is written with ``save_pretrained`` and loaded by ``clino-vpr train --clip DIR``
through the same loader as ``openai/clip-vit-large-patch14-336``.

A user with real CLIP does not need any of this, which is why it is a script and not a package option.

Check (validation town, never trained on): per-cell majority label accuracy of the probe against the
best fixed map (the training set's mean label map: a pure spatial prior), and the correlation of the
predicted and true clutter fraction per image (does the embedding separate clutter-heavy from
clutter-free views?). Writes DIR/ (HF folder), DIR/tower_probe.json and DIR/tower_probe.png.

Usage: python scripts/clip_standin_tower.py --towns 0 1 2 3 4 5 --val-town 901 --out runs/clip_labels
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from clino_vpr_ros.config import get_model_config
from clino_vpr_ros.evaluate import pyplot_agg, save_figure, write_json_atomic
from clino_vpr_ros.model.clip_tower import ClipTower
from clino_vpr_ros.synth import LABELS, Renderer, sample_condition
from clino_vpr_ros.synth.writers import _camera_pose, _jitter, town_with_capacity

N_LABELS = max(LABELS.values()) + 1
CLUTTER = [LABELS[k] for k in ("sky", "vegetation", "vehicle", "pedestrian")]


def render_labelled(town_seed: int, n: int, size: tuple[int, int], places: int = 120,
                    progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """n views of one town as the GSV writer samples them (places 15 m apart, jitter, random conditions).

    Returns: rgb uint8 (n,H,W,3), labels uint8 (n,H,W) (ids of ``LABELS``).
    """
    town, spots = town_with_capacity(town_seed, 15.0, places)
    renderer = Renderer(town, size)
    rng = np.random.default_rng([town_seed, 0x7A6])
    rgb, lab = [], []
    for _ in tqdm(range(n), desc=f"town {town_seed}", unit="view", disable=not progress):
        cond = sample_condition(int(rng.integers(0, 2**31 - 1)))
        x, y, yaw = _jitter(rng, spots[int(rng.integers(0, places))], 3.0, 1.5, 12.0)
        out = renderer.render(_camera_pose(x, y, yaw), cond, float(rng.uniform(0, 3600)))
        rgb.append(out.rgb)
        lab.append(out.labels)
    return np.stack(rgb), np.stack(lab)


def cell_fractions(labels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Per-cell label fractions: uint8 (n,H,W) -> float32 (n, N_LABELS, gh, gw), summing to 1 per cell."""
    onehot = F.one_hot(torch.from_numpy(labels.astype(np.int64)), N_LABELS).permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(onehot, grid).numpy()


def clip_pixels(rgb: np.ndarray, tower: ClipTower, mean: tuple, std: tuple) -> torch.Tensor:
    """uint8 (n,H,W,3) -> float (n,3,S,S) as ``GatedEncoder._clip_pixels`` feeds the tower."""
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0
    s = tower.image_size
    if tuple(x.shape[-2:]) != (s, s):
        x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
    return (x - torch.tensor(mean).reshape(1, 3, 1, 1)) / torch.tensor(std).reshape(1, 3, 1, 1)


def soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against per-cell label fractions; logits and target (B, N_LABELS, gh, gw)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


def predict(tower: ClipTower, probe: torch.nn.Linear, rgb: np.ndarray, grid: tuple[int, int], mean: tuple,
            std: tuple, batch: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings float32 (n, D) and probe label fractions float32 (n, N_LABELS, gh, gw) of uint8 (n,H,W,3)."""
    emb, frac = [], []
    with torch.no_grad():
        for i in range(0, len(rgb), batch):
            e = tower(clip_pixels(rgb[i : i + batch], tower, mean, std))
            emb.append(e.numpy())
            frac.append(F.softmax(probe(e).reshape(-1, N_LABELS, *grid), dim=1).numpy())
    return np.concatenate(emb), np.concatenate(frac)


def probe_metrics(pred: np.ndarray, true: np.ndarray, prior: np.ndarray) -> dict:
    """Probe vs the best fixed map (training mean), on per-cell majority label and per-image clutter fraction."""
    major = true.argmax(1)
    clutter_true = true[:, CLUTTER].sum(1)  # (n, gh, gw)
    clutter_pred = pred[:, CLUTTER].sum(1)
    img_true, img_pred = clutter_true.mean((1, 2)), clutter_pred.mean((1, 2))
    return {
        "cell_accuracy_probe": float((pred.argmax(1) == major).mean()),
        "cell_accuracy_spatial_prior": float((prior.argmax(0)[None] == major).mean()),
        "cell_clutter_mae_probe": float(np.abs(clutter_pred - clutter_true).mean()),
        "cell_clutter_mae_spatial_prior": float(np.abs(prior[CLUTTER].sum(0)[None] - clutter_true).mean()),
        "cell_fraction_mae_probe_vs_prior": {
            k: [float(np.abs(pred[:, v] - true[:, v]).mean()), float(np.abs(prior[v][None] - true[:, v]).mean())]
            for k, v in LABELS.items() if k != "void"},
        # None when the probe predicts one clutter fraction for every image (no correlation defined)
        "image_clutter_fraction_corr": float(np.corrcoef(img_pred, img_true)[0, 1]) if img_pred.std() > 0 else None,
        "image_clutter_fraction_range": [float(img_true.min()), float(img_true.max())],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--towns", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5], help="training towns only")
    p.add_argument("--views", type=int, default=600, help="rendered views per training town")
    p.add_argument("--val-town", type=int, default=901)
    p.add_argument("--val-views", type=int, default=300)
    p.add_argument("--preset", default="tiny", help="preset whose CLIP tower shape to train (its gate grid too)")
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    p.add_argument("--out", type=Path, required=True, help="HF-format folder to write")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cfg = get_model_config(a.preset)
    size = tuple(cfg.image_size)
    grid = (size[0] // cfg.backbone.patch_size, size[1] // cfg.backbone.patch_size)  # the gate's mask grid
    t0 = time.perf_counter()
    cache = a.out.with_name(a.out.name + "_views.npz")  # renders are deterministic: keep them for a rerun
    if cache.is_file():
        with np.load(cache) as z:
            rgb, lab, vrgb, vlab = z["rgb"], z["lab"], z["vrgb"], z["vlab"]
    else:
        rgb, lab = zip(*(render_labelled(t, a.views, size) for t in a.towns))
        rgb, lab = np.concatenate(rgb), np.concatenate(lab)
        vrgb, vlab = render_labelled(a.val_town, a.val_views, size)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez(tmp, rgb=rgb, lab=lab, vrgb=vrgb, vlab=vlab)
        os.replace(tmp, cache)  # a cut-off run leaves no half-written cache
    t_render = time.perf_counter() - t0
    tower = ClipTower(dataclasses.replace(cfg.clip, trainable=True))
    probe = torch.nn.Linear(tower.out_dim, N_LABELS * grid[0] * grid[1])
    target = torch.from_numpy(cell_fractions(lab, grid))
    vtarget = cell_fractions(vlab, grid)
    prior = target.numpy().mean(0)
    params = list(tower.model.parameters()) + list(probe.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(a.seed)
    t1 = time.perf_counter()
    losses = []
    bar = tqdm(range(a.steps), desc="tower", unit="step")
    for step in bar:
        idx = torch.randint(0, len(rgb), (a.batch,), generator=gen)
        x, y = clip_pixels(rgb[idx.numpy()], tower, cfg.clip.mean, cfg.clip.std), target[idx]
        # horizontal flips: the labels flip with the image, so the tower cannot learn a left/right prior
        flip = torch.rand(a.batch, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = torch.where(flip[:, None, None, None], y.flip(-1), y)
        logits = probe(tower(x)).reshape(-1, N_LABELS, *grid)
        loss = soft_ce(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    t_train = time.perf_counter() - t1
    tower.eval()
    _, vpred = predict(tower, probe, vrgb, grid, cfg.clip.mean, cfg.clip.std)
    prior_loss = float(soft_ce(torch.log(torch.from_numpy(prior) + 1e-8)[None].expand(len(vtarget), -1, -1, -1),
                               torch.from_numpy(vtarget)))
    probe_loss = float(soft_ce(torch.log(torch.from_numpy(vpred) + 1e-8), torch.from_numpy(vtarget)))
    res = {"training_towns": a.towns, "views": int(len(rgb)), "val_town": a.val_town, "val_views": int(len(vrgb)),
           "grid": list(grid), "steps": a.steps, "batch": a.batch, "lr": a.lr, "seed": a.seed,
           "train_loss_last100": float(np.mean(losses[-100:])),
           "val_loss_probe": probe_loss, "val_loss_spatial_prior": prior_loss,
           **probe_metrics(vpred, vtarget, prior),
           "seconds_render": round(t_render, 1), "seconds_train": round(t_train, 1)}
    tower.model.save_pretrained(a.out)
    write_json_atomic(res, a.out / "tower_probe.json")
    _plot(vrgb, vtarget, vpred, a.out / "tower_probe.png")
    print(json.dumps(res, indent=1))
    print(f"wrote {a.out} (CLIPVisionModelWithProjection, {a.preset} preset's tower shape; probe discarded)")
    return 0


def _plot(rgb: np.ndarray, true: np.ndarray, pred: np.ndarray, out: Path, n: int = 6) -> None:
    from clino_vpr_ros.synth.cli import _LABEL_COLOURS

    plt = pyplot_agg()
    idx = np.linspace(0, len(rgb) - 1, n).astype(int)
    fig, axes = plt.subplots(3, n, figsize=(2.2 * n, 7), dpi=100)
    for c, i in enumerate(idx):
        axes[0, c].imshow(rgb[i])
        axes[1, c].imshow(_LABEL_COLOURS[true[i].argmax(0)], interpolation="nearest")
        axes[2, c].imshow(_LABEL_COLOURS[pred[i].argmax(0)], interpolation="nearest")
        for r in range(3):
            axes[r, c].set_axis_off()
    axes[0, 0].set_title("validation view (town never trained on)", fontsize=8, loc="left")
    axes[1, 0].set_title("majority label per gate cell", fontsize=8, loc="left")
    axes[2, 0].set_title("linear probe on the tower's embedding", fontsize=8, loc="left")
    save_figure(fig, out)


if __name__ == "__main__":
    sys.exit(main())
