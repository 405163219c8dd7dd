"""Gated-encoder checkpoints: one safetensors file, the ModelConfig JSON in its metadata.

Metadata keys (all strings, as safetensors requires): ``schema_version``, ``format``
(``clino_vpr_ros.gated_encoder``), ``config`` (ModelConfig JSON), ``fingerprint``
(:func:`weights_fingerprint`), ``package_version``, ``extra`` (caller's JSON, e.g. training step).
No pickle anywhere: a checkpoint cannot execute code when loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from clino_vpr_ros import __version__
from clino_vpr_ros.atomic import atomic_write
from clino_vpr_ros.config import ModelConfig
from clino_vpr_ros.model import GatedEncoder, build_encoder

LOG = logging.getLogger(__name__)

CHECKPOINT_SCHEMA_VERSION = 1
CHECKPOINT_FORMAT = "clino_vpr_ros.gated_encoder"


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says about itself (read without loading the tensors)."""

    config: ModelConfig
    fingerprint: str
    package_version: str
    schema_version: int
    extra: dict[str, Any] = field(default_factory=dict)


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 (first 16 hex digits) over every state-dict tensor's name, dtype, shape and bytes.

    Equal fingerprints mean bit-identical weights (including BatchNorm statistics), so exported
    models, descriptors in session maps and checkpoints can be matched to each other.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # hash raw bytes (a uint8 view works for every dtype, bf16 included)
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def save_checkpoint(path: str | Path, model: GatedEncoder, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (weights + config) to ``path`` (.safetensors) atomically.

    Args:
        path: destination file; parent folders are created.
        model: the encoder; its ``config`` is stored as JSON.
        extra: JSON-serialisable dict stored alongside (e.g. {"step": 1200, "recall@1": 0.8}).
    Returns:
        the written path.
    """
    path = Path(path)
    if not isinstance(model, GatedEncoder):
        raise ValueError(f"save_checkpoint expects a GatedEncoder, got {type(model).__name__}")
    try:
        extra_json = json.dumps(extra or {})
    except TypeError as exc:
        raise ValueError(f"checkpoint extra must be JSON-serialisable: {exc}") from exc
    # clone: safetensors refuses tensors that share storage
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "schema_version": str(CHECKPOINT_SCHEMA_VERSION),
        "config": json.dumps(model.config.to_dict()),
        "fingerprint": weights_fingerprint(model),
        "package_version": __version__,
        "extra": extra_json,
    }
    atomic_write(path, lambda f: f.write(save(tensors, metadata=metadata)))
    LOG.info("saved checkpoint %s (fingerprint %s)", path, metadata["fingerprint"])
    return path


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Read a checkpoint's metadata (config, fingerprint, extra) without loading its tensors.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a safetensors file, not one of ours, or an unsupported schema version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"checkpoint {str(path)!r} is not a readable safetensors file (corrupt?): {exc}") from exc
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{str(path)!r} is a safetensors file but not a clino_vpr_ros gated-encoder checkpoint "
            f"(metadata format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r})"
        )
    version = meta.get("schema_version")
    if version != str(CHECKPOINT_SCHEMA_VERSION):
        raise ValueError(
            f"checkpoint {str(path)!r} has schema version {version!r}; this package reads "
            f"{CHECKPOINT_SCHEMA_VERSION} (written by clino_vpr_ros {meta.get('package_version')!r})"
        )
    try:
        config = ModelConfig.from_dict(json.loads(meta["config"]))
        extra = json.loads(meta.get("extra", "{}"))
    except (KeyError, json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"checkpoint {str(path)!r} has a broken config in its metadata: {exc}") from exc
    return CheckpointInfo(
        config=config,
        fingerprint=meta.get("fingerprint", ""),
        package_version=meta.get("package_version", ""),
        schema_version=int(version),
        extra=extra,
    )


def load_encoder(path: str | Path, map_location: str = "cpu") -> GatedEncoder:
    """Rebuild the encoder stored by :func:`save_checkpoint` (in eval mode).

    Raises:
        FileNotFoundError: no such file.
        ValueError: corrupt file, foreign file, unsupported schema, or tensors that do not fit the
            stored config (incompatible checkpoint).
    """
    info = read_checkpoint_info(path)
    model = build_encoder(info.config)
    try:
        with safe_open(str(path), framework="pt", device=map_location) as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"checkpoint {str(path)!r} tensors are unreadable (corrupt?): {exc}") from exc
    try:
        result = model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"checkpoint {str(path)!r} does not fit its config ({info.config.preset}): {exc}") from exc
    problems = []
    if result.missing_keys:
        problems.append(f"missing {result.missing_keys[:3]}")
    if result.unexpected_keys:
        problems.append(f"unexpected {result.unexpected_keys[:3]}")
    if problems:
        raise ValueError(f"checkpoint {str(path)!r} does not fit its config ({info.config.preset}): {'; '.join(problems)}")
    fingerprint = weights_fingerprint(model)
    if info.fingerprint and fingerprint != info.fingerprint:
        raise ValueError(
            f"checkpoint {str(path)!r} weights fingerprint {fingerprint} != stored {info.fingerprint} (corrupt?)"
        )
    LOG.info("loaded checkpoint %s (%s, fingerprint %s)", path, info.config.preset, fingerprint)
    return model.eval()
