"""Checkpoints: round trip, fingerprint, clear errors for missing/corrupt/foreign/incompatible files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from clino_vpr_ros.checkpoint import load_encoder, read_checkpoint_info, save_checkpoint, weights_fingerprint
from clino_vpr_ros.config import get_model_config
from clino_vpr_ros.model import build_encoder

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return build_encoder(get_model_config("tiny")).eval()


def test_round_trip_gives_identical_descriptors(model, tmp_path) -> None:
    path = save_checkpoint(tmp_path / "ckpt" / "tiny.safetensors", model, extra={"step": 120, "loss": 0.5})
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.safetensors"]  # no temp file left
    loaded = load_encoder(path)
    assert not loaded.training and loaded.config == model.config
    x = torch.randint(0, 256, (3, 112, 112, 3), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], model(x)[0])
    info = read_checkpoint_info(path)
    assert info.extra == {"step": 120, "loss": 0.5}
    assert info.fingerprint == weights_fingerprint(model) == weights_fingerprint(loaded)


def test_fingerprint_changes_with_any_weight(model) -> None:
    other = build_encoder(model.config).eval()
    other.load_state_dict(model.state_dict())
    assert weights_fingerprint(other) == weights_fingerprint(model)
    with torch.no_grad():
        other.aggregator.dustbin.add_(1e-3)
    assert weights_fingerprint(other) != weights_fingerprint(model)


def test_missing_corrupt_and_foreign_files(model, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_encoder(tmp_path / "nope.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken json}" * 4)
    with pytest.raises(ValueError, match="corrupt"):
        load_encoder(corrupt)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="not a clino_vpr_ros gated-encoder checkpoint"):
        load_encoder(foreign)
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_checkpoint(tmp_path / "x.safetensors", model, extra={"bad": object()})


def _rewrite(src, dst, **meta_changes) -> None:
    with safe_open(str(src), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    meta.update(meta_changes)
    save_file(tensors, str(dst), metadata=meta)


def test_incompatible_checkpoints_are_rejected(model, tmp_path) -> None:
    good = save_checkpoint(tmp_path / "good.safetensors", model)
    small_cfg = json.dumps(get_model_config("small").to_dict())
    _rewrite(good, tmp_path / "other_config.safetensors", config=small_cfg)
    with pytest.raises(ValueError, match="does not fit its config"):
        load_encoder(tmp_path / "other_config.safetensors")
    _rewrite(good, tmp_path / "future.safetensors", schema_version="99")
    with pytest.raises(ValueError, match="schema version '99'"):
        load_encoder(tmp_path / "future.safetensors")
    _rewrite(good, tmp_path / "tampered.safetensors", fingerprint="0123456789abcdef")
    with pytest.raises(ValueError, match="fingerprint"):
        load_encoder(tmp_path / "tampered.safetensors")
