"""Could any gate help this stand-in? Recall with ground-truth clutter masks in place of the gate (issue 11).

    python scripts/gate_oracle_masks.py GATED.safetensors --towns 901 905 906 --places 100 --out FILE.json

The diagnostic before training a better gate: the renderer knows which pixels are sky, vegetation,
vehicles and pedestrians, so each eval image (database and query, rendered exactly as
``clino-vpr synth eval`` renders them) gets an oracle mask per gate cell, 1 - the fraction of its pixels
that belong to the suppressed labels, and the frozen backbone + SALAD of GATED (its gate is ignored)
aggregate the masked features. If no oracle mask raises cross-condition R@1 on the validation towns, a
gate cannot learn to raise it by suppressing that clutter, however good its tower. Also reported: R@1 per
cross condition, and how much vehicle/pedestrian area the failing queries have against the others.
Run on validation towns only (901, and 905/906 which nothing else uses): nothing here is tuned on held-out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from clino_vpr_ros.checkpoint import load_encoder
from clino_vpr_ros.evaluate import write_json_atomic
from clino_vpr_ros.synth import CONDITIONS, LABELS, Renderer
from clino_vpr_ros.synth.writers import _CROSS_CONDITIONS, _camera_pose, downloader_layout

_CLUTTER = ("sky", "vegetation", "vehicle", "pedestrian")
#: name -> (labels suppressed, strength): a cell's mask is 1 - strength x (fraction of its pixels with those labels)
ORACLES: dict[str, tuple[tuple[str, ...], float]] = {
    "none": ((), 0.0),
    "vehicles_pedestrians": (("vehicle", "pedestrian"), 1.0),
    "vegetation": (("vegetation",), 1.0),
    "sky": (("sky",), 1.0),
    "all_clutter": (_CLUTTER, 1.0),
    "all_clutter_half": (_CLUTTER, 0.5),
    "vegetation_half": (("vegetation",), 0.5),
    "ground": (("road", "sidewalk"), 1.0),
}


def render_eval(town_seed: int, n_places: int, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """The database and both query sets of ``write_downloader_sets``, with labels and positions.

    Returns uint8 rgb/labels (n,H,W[,3]) for db, same, cross; float xy (n,2) for db and q; cross condition
    names (n,). Same rng draws as the writer, so the images are those of ``clino-vpr synth eval``.
    """
    town, places, queries, rng = downloader_layout(town_seed, n_places)
    renderer = Renderer(town, size)
    day = CONDITIONS["day"]
    out: dict[str, list] = {k: [] for k in ("db_rgb", "db_lab", "same_rgb", "same_lab", "cross_rgb", "cross_lab")}
    for i in tqdm(range(n_places), desc=f"town {town_seed}", unit="place"):
        r = renderer.render(_camera_pose(*places[i]), day, 100.0 + i)
        out["db_rgb"].append(r.rgb)
        out["db_lab"].append(r.labels)
        for variant in ("same", "cross"):
            if variant == "same":
                cond = day.with_clutter(day.clutter_seed + 1000 + i)
            else:
                cond = CONDITIONS[_CROSS_CONDITIONS[i % len(_CROSS_CONDITIONS)]]
                cond = cond.with_clutter(cond.clutter_seed + 2000 + i)
            r = renderer.render(_camera_pose(*queries[i]), cond, 500.0 + i)
            out[f"{variant}_rgb"].append(r.rgb)
            out[f"{variant}_lab"].append(r.labels)
    res = {k: np.stack(v) for k, v in out.items()}
    res["db_xy"], res["q_xy"] = places[:, :2], queries[:, :2]
    res["cross_cond"] = np.array([_CROSS_CONDITIONS[i % len(_CROSS_CONDITIONS)] for i in range(n_places)])
    return res


def oracle_mask(labels: np.ndarray, names: tuple[str, ...], strength: float, grid: tuple[int, int]) -> np.ndarray:
    """float32 (n,1,h,w): per gate cell, 1 - ``strength`` x the fraction of its pixels labelled one of ``names``."""
    n, hh, ww = labels.shape
    ph, pw = hh // grid[0], ww // grid[1]
    hit = np.isin(labels, [LABELS[x] for x in names]).astype(np.float32)
    cells = hit[:, : grid[0] * ph, : grid[1] * pw].reshape(n, grid[0], ph, grid[1], pw).mean((2, 4))
    return (1.0 - strength * cells)[:, None]


@torch.no_grad()
def descriptors(model, rgb: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """float32 (n,D): the model's backbone and SALAD on ``rgb`` with ``mask`` (None: the model's own gate)."""
    out = []
    for i in range(0, len(rgb), 50):
        x = torch.from_numpy(rgb[i : i + 50])
        if mask is None:
            out.append(model(x)[0].numpy())
            continue
        xf = x.permute(0, 3, 1, 2).float() / 255.0
        feats, cls = model.backbone((xf - model.dino_mean) / model.dino_std)
        out.append(model.aggregator(model.adapter(feats) * torch.from_numpy(mask[i : i + 50]), cls).numpy())
    return np.concatenate(out)


def top1_hits(db: np.ndarray, q: np.ndarray, db_xy: np.ndarray, q_xy: np.ndarray, radius: float = 25.0) -> np.ndarray:
    """bool (n,): the query's nearest database descriptor is within ``radius`` m (as ``eval recall``)."""
    best = (q @ db.T).argmax(1)
    return np.linalg.norm(db_xy[best] - q_xy, axis=1) <= radius


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="a gated .safetensors (its backbone and SALAD are used)")
    p.add_argument("--towns", type=int, nargs="+", default=[901])
    p.add_argument("--places", type=int, default=100)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    model = load_encoder(a.checkpoint).eval()
    size, grid = tuple(model.config.image_size), tuple(model.mask_size)
    hits: dict[str, dict[str, list]] = {k: {"same": [], "cross": []} for k in [*ORACLES, "own_gate"]}
    conds, dyn_frac = [], []
    for t in a.towns:
        d = render_eval(t, a.places, size)
        conds.append(d["cross_cond"])
        dyn_frac.append(np.isin(d["cross_lab"], [LABELS["vehicle"], LABELS["pedestrian"]]).mean((1, 2)))
        for name, labs in [*ORACLES.items(), ("own_gate", None)]:
            mk = (lambda k: None) if labs is None else (lambda k: oracle_mask(d[f"{k}_lab"], *labs, grid))
            db = descriptors(model, d["db_rgb"], mk("db"))
            for v in ("same", "cross"):
                hits[name][v].append(top1_hits(db, descriptors(model, d[f"{v}_rgb"], mk(v)), d["db_xy"], d["q_xy"]))
    conds, dyn_frac = np.concatenate(conds), np.concatenate(dyn_frac)
    flat = {k: {v: np.concatenate(h) for v, h in hv.items()} for k, hv in hits.items()}
    base = flat["none"]["cross"]
    res = {"checkpoint": str(a.checkpoint), "towns": a.towns, "queries_per_condition": int(len(base)),
           "r1": {k: {v: float(100 * h.mean()) for v, h in hv.items()} for k, hv in flat.items()},
           "paired_vs_none": {k: {v: {"gained": int((h & ~flat["none"][v]).sum()),
                                      "lost": int((~h & flat["none"][v]).sum())} for v, h in hv.items()}
                              for k, hv in flat.items()},
           "cross_r1_per_condition": {k: {c: float(100 * hv["cross"][conds == c].mean()) for c in _CROSS_CONDITIONS}
                                      for k, hv in flat.items()},
           "vehicle_pedestrian_fraction": {"cross_failed": float(dyn_frac[~base].mean()),
                                           "cross_succeeded": float(dyn_frac[base].mean())}}
    write_json_atomic(res, a.out)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
