"""Loading HF-format weights from a local folder or the local HF cache, never from the network."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TypeVar

from safetensors import SafetensorError
from transformers import PreTrainedModel

LOG = logging.getLogger(__name__)

M = TypeVar("M", bound=PreTrainedModel)

#: config.json model_type values accepted per tower (a full CLIP checkpoint holds the vision tower)
_MODEL_TYPES = {"DINOv2": ("dinov2",), "CLIP": ("clip", "clip_vision_model")}


def load_pretrained(cls: type[M], source: str | Path, name: str, attn_implementation: str) -> M:
    """``cls.from_pretrained(source, local_files_only=True)`` with errors that say what to do.

    Args:
        cls: the transformers model class (``Dinov2Model``, ``CLIPVisionModelWithProjection``).
        source: a folder in HF format (config.json + weights) or a hub id already in the local cache.
        name: "DINOv2" or "CLIP", for messages and the model_type check.
    Raises:
        FileNotFoundError: the folder does not exist / the hub id is not in the local cache.
        ValueError: the folder holds another model type, or corrupt / incomplete weights.
    """
    source_str = str(source)
    path = Path(source_str).expanduser()
    looks_like_path = isinstance(source, Path) or path.exists() or source_str.startswith((".", "/", "~"))
    if looks_like_path:
        _check_folder(path, name)
        source_str = str(path)
    try:
        model, info = cls.from_pretrained(
            source_str,
            local_files_only=True,
            attn_implementation=attn_implementation,
            output_loading_info=True,
        )
    except (OSError, SafetensorError, ValueError, RuntimeError) as exc:
        if not looks_like_path and isinstance(exc, OSError):
            raise FileNotFoundError(
                f"{name} weights {source_str!r} are neither a folder nor in the local Hugging Face cache; "
                f"nothing is downloaded at run time: fetch them beforehand (`hf download {source_str}`) "
                "or pass the folder"
            ) from exc
        raise ValueError(f"{name} weights at {source_str!r} could not be loaded (corrupt or incomplete?): {exc}") from exc
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("mask_token")]
    if missing:
        raise ValueError(
            f"{name} weights at {source_str!r} are incomplete: {len(missing)} tensors missing, e.g. {missing[:3]}"
        )
    LOG.info("loaded %s weights from %s", name, source_str)
    return model


def _check_folder(path: Path, name: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"{name} weights folder {str(path)!r} does not exist (expected an HF-format folder)")
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{name} weights folder {str(path)!r} has no config.json (expected an HF-format folder)")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name} config {str(config)!r} is not valid JSON: {exc}") from exc
    if model_type not in _MODEL_TYPES[name]:
        raise ValueError(
            f"{str(path)!r} holds a {model_type!r} model, expected {name} (model_type in {_MODEL_TYPES[name]})"
        )
