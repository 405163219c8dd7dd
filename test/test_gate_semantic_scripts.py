"""Issue 11's semantic stand-in scripts: the label targets, the paired test, and a tower `train --clip` can load."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from clino_vpr_ros.config import get_model_config
from clino_vpr_ros.model.clip_tower import ClipTower
from clino_vpr_ros.synth import LABELS

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_sign_test_is_the_exact_two_sided_binomial_test() -> None:
    paired = _script("paired_recall")
    for a, b in ((8, 30), (10, 13), (0, 7), (16, 17), (29, 27)):
        assert math.isclose(paired.sign_test(a, b), binomtest(a, a + b, 0.5).pvalue, rel_tol=1e-9)
    assert paired.sign_test(0, 0) == 1.0


def test_cell_targets_are_label_fractions_per_gate_cell() -> None:
    tower = _script("clip_standin_tower")
    rgb, labels = tower.render_labelled(0, 3, (112, 112), progress=False)
    assert rgb.shape == (3, 112, 112, 3) and labels.shape == (3, 112, 112)
    frac = tower.cell_fractions(labels, (8, 8))
    assert frac.shape == (3, tower.N_LABELS, 8, 8)
    assert np.allclose(frac.sum(1), 1.0, atol=1e-6)
    # the top-left cell (14 x 14 px) of view 1: its sky fraction counted by hand
    assert math.isclose(frac[1, LABELS["sky"], 0, 0], float((labels[1, :14, :14] == LABELS["sky"]).mean()), abs_tol=1e-6)
    # a probe that predicts the truth beats the spatial prior; one that predicts the prior only ties it
    prior = frac.mean(0)
    exact = tower.probe_metrics(frac, frac, prior)
    flat = tower.probe_metrics(np.broadcast_to(prior, frac.shape), frac, prior)
    assert exact["cell_accuracy_probe"] == 1.0 >= exact["cell_accuracy_spatial_prior"]
    assert flat["cell_accuracy_probe"] == flat["cell_accuracy_spatial_prior"]


def test_pretrained_tower_loads_as_the_gates_clip_weights(tmp_path: Path) -> None:
    out = tmp_path / "clip_labels"
    tower = _script("clip_standin_tower")
    assert tower.main(["--towns", "0", "--views", "8", "--val-town", "901", "--val-views", "6",
                       "--steps", "3", "--batch", "4", "--out", str(out)]) == 0
    report = json.loads((out / "tower_probe.json").read_text())
    assert report["training_towns"] == [0] and report["val_town"] == 901 and report["views"] == 8
    # the folder loads through the loader `clino-vpr train --gate-clip tiny --clip DIR` uses, with the shape check
    cfg = get_model_config("tiny").clip
    loaded = ClipTower(dataclasses.replace(cfg, trainable=False), weights=out)
    assert not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        assert loaded(torch.zeros(2, 3, cfg.image_size, cfg.image_size)).shape == (2, cfg.projection_dim)
    # a preset of another tower shape refuses it, naming the mismatch
    with pytest.raises(ValueError, match="do not match"):
        ClipTower(get_model_config("small").clip, weights=out)


def test_stronger_standin_carries_the_shipped_vit_frozen() -> None:
    import onnx
    from onnx import numpy_helper

    standin = _script("salad_standin")
    model = standin.init_from_onnx(str(ROOT / "models" / "clino-vpr-tiny.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(ROOT / "models" / "clino-vpr-tiny.onnx")).graph.initializer}
    state = model.state_dict()
    # named initializers of the shipped ViT arrive unchanged (patch embedding, a block's norm and layer scale)
    for name in ("backbone.model.embeddings.patch_embeddings.projection.weight",
                 "backbone.model.encoder.layer.3.norm1.weight", "backbone.model.encoder.layer.0.layer_scale1.lambda1"):
        onnx_name = name.replace("backbone.model.encoder.layer.", "backbone.layer.")
        assert np.array_equal(state[name].numpy(), inits.get(name, inits.get(onnx_name)))
    # frozen ViT, trainable SALAD, no gate: the layout of the published checkpoint
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.aggregator.parameters())
    assert model.gate is None and model.config.salad.num_clusters == 16


def test_oracle_masks_see_the_eval_images_and_a_full_mask_changes_nothing(tmp_path: Path) -> None:
    import cv2

    from clino_vpr_ros.model.encoder import build_encoder
    from clino_vpr_ros.synth.writers import _imwrite_jpg, write_downloader_sets

    oracle = _script("gate_oracle_masks")
    d = oracle.render_eval(901, 3, (112, 112))
    sets = write_downloader_sets(tmp_path, 901, 3, (112, 112), progress=False)
    # the re-rendered query images are the written ones, in the same order: through the writer's JPEG
    # encoding they decode to the very same pixels
    def read(f: Path) -> np.ndarray:
        return cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)

    for variant in ("same", "cross"):
        # in the order written: by the pano id (q00000, q00001...), not by the coordinates leading the name
        files = sorted((sets[variant] / "images" / "test" / "queries").glob("*.jpg"), key=lambda f: f.name.split("@")[7])
        for i, f in enumerate(files):
            _imwrite_jpg(tmp_path / "again.jpg", d[f"{variant}_rgb"][i])
            assert np.array_equal(read(f), read(tmp_path / "again.jpg"))
    assert list(d["cross_cond"]) == ["dusk", "overcast_fog", "autumn_rain"]
    # a cell's mask is 1 - strength x its fraction of the suppressed labels (the 14 x 14 px top-left cell)
    m = oracle.oracle_mask(d["db_lab"], ("sky",), 0.5, (8, 8))
    assert m.shape == (3, 1, 8, 8)
    assert math.isclose(m[0, 0, 0, 0], 1 - 0.5 * float((d["db_lab"][0, :14, :14] == LABELS["sky"]).mean()), abs_tol=1e-6)
    # the oracle path with an all-ones mask gives the descriptors of the model with its gate fully open
    model = build_encoder(get_model_config("tiny")).eval()
    model.gate.open_(30.0)
    ones = np.ones((3, 1, 8, 8), np.float32)
    assert np.allclose(oracle.descriptors(model, d["db_rgb"], ones), oracle.descriptors(model, d["db_rgb"], None), atol=1e-6)
    # a query whose nearest database image lies beyond 25 m is a miss
    xy = np.array([[0.0, 0.0], [100.0, 0.0]])
    desc = np.eye(2, dtype=np.float32)
    assert oracle.top1_hits(desc, desc, xy, xy).tolist() == [True, True]
    assert oracle.top1_hits(desc, desc[::-1], xy, xy).tolist() == [False, False]
