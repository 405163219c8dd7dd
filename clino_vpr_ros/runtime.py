"""Torch-free gated encoder for the robot: onnxruntime with TensorRT -> CUDA -> CPU.

Usage::

    enc = RuntimeEncoder("models/clino-vpr-tiny.onnx")
    out = enc.encode([frame_bgr], encoding="bgr8")   # out.descriptors (1, D), out.masks (1, 1, h, w)

Images go through :func:`clino_vpr_ros.preprocess.to_model_input` (the shared resize policy); the
ONNX graph casts and normalises. TensorRT engines are cached (engine + timing cache) in
``<model>.trt_cache/<weights fingerprint>-<precision>-<size>-.../`` next to the model by default, so a
restart does not rebuild the engine and a retrained model never runs on a stale one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from clino_vpr_ros.config import RESIZE_POLICIES
from clino_vpr_ros.preprocess import to_model_batch

LOG = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAMES = ("descriptor", "gate_mask")
#: optional outputs for local re-ranking (EffoVPR idea, :mod:`clino_vpr_ros.rerank`): the value vectors
#: float32 (B,P,C) of one intermediate backbone layer's patch tokens and the CLS token's attention
#: float32 (B,P) to them in that layer (mean over heads). Models exported before re-ranking lack them.
LOCAL_OUTPUT_NAMES = ("local_values", "local_attention")
#: bumped when the ONNX interface (names, layout, metadata keys) changes
ONNX_SCHEMA_VERSION = 1
ONNX_FORMAT = "clino_vpr_ros.gated_encoder"

#: onnxruntime's own exception types (Fail, InvalidProtobuf, InvalidGraph, ...; not RuntimeError subclasses)
_ORT_ERRORS: tuple[type[BaseException], ...] = (RuntimeError,) + tuple(
    v for v in vars(_ort_state).values() if isinstance(v, type) and issubclass(v, Exception)
)

#: short provider names -> onnxruntime names, in default preference order
PROVIDERS: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


@dataclass(frozen=True)
class ModelMetadata:
    """What an exported model says about itself (ONNX ``metadata_props``).

    input_size: (height, width) of the NHWC uint8 RGB input. descriptor_dim: D.
    mask_size: (h, w) of the gate mask. preset: model preset name. fingerprint: weights fingerprint
    of the PyTorch model it was exported from. fp16: fp16 towers. resize: how a camera frame is
    brought to ``input_size`` (``config.RESIZE_POLICIES``; absent in older models, which mean "area").
    local_layer: the backbone layer (0-based) whose patch tokens the :data:`LOCAL_OUTPUT_NAMES`
    outputs hold; None when the model has no such outputs.
    """

    input_size: tuple[int, int]
    descriptor_dim: int
    mask_size: tuple[int, int]
    preset: str
    fingerprint: str
    fp16: bool
    package_version: str = ""
    config_json: str = field(default="", repr=False)
    resize: str = "area"
    local_layer: int | None = None

    def to_props(self) -> dict[str, str]:
        """ONNX metadata_props (string -> string)."""
        local = {} if self.local_layer is None else {"local_layer": str(self.local_layer)}
        return {**local,
            "format": ONNX_FORMAT,
            "schema_version": str(ONNX_SCHEMA_VERSION),
            "input_name": INPUT_NAME,
            "input_layout": "NHWC",
            "input_dtype": "uint8",
            "channel_order": "RGB",
            "input_size": f"{self.input_size[0]}x{self.input_size[1]}",
            "descriptor_dim": str(self.descriptor_dim),
            "mask_size": f"{self.mask_size[0]}x{self.mask_size[1]}",
            "preset": self.preset,
            "weights_fingerprint": self.fingerprint,
            "precision": "fp16" if self.fp16 else "fp32",
            "package_version": self.package_version,
            "model_config": self.config_json,
            "resize_policy": self.resize,
        }

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> ModelMetadata:
        """Parse metadata_props; ValueError naming what is missing or unsupported."""
        if props.get("format") != ONNX_FORMAT:
            raise ValueError(
                f"{source} has no clino_vpr_ros metadata (format {props.get('format')!r}, expected "
                f"{ONNX_FORMAT!r}); export it with `clino-vpr export`"
            )
        if props.get("schema_version") != str(ONNX_SCHEMA_VERSION):
            raise ValueError(
                f"{source} has ONNX schema version {props.get('schema_version')!r}; this package reads "
                f"{ONNX_SCHEMA_VERSION}: re-export it with this package version"
            )
        fixed = {"input_layout": "NHWC", "input_dtype": "uint8", "channel_order": "RGB", "input_name": INPUT_NAME}
        for key, want in fixed.items():
            if props.get(key) != want:
                raise ValueError(f"{source}: metadata {key}={props.get(key)!r}, expected {want!r}")
        try:
            return cls(
                input_size=_parse_size(props["input_size"]),
                descriptor_dim=int(props["descriptor_dim"]),
                mask_size=_parse_size(props["mask_size"]),
                preset=props["preset"],
                fingerprint=props["weights_fingerprint"],
                fp16=props["precision"] == "fp16",
                package_version=props.get("package_version", ""),
                config_json=props.get("model_config", ""),
                resize=_parse_resize(props.get("resize_policy", "area")),
                local_layer=int(props["local_layer"]) if props.get("local_layer", "") != "" else None,
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{source} has incomplete or malformed clino_vpr_ros metadata: {exc!r}") from exc

    @property
    def config(self) -> dict:
        """The full ModelConfig as a dict (empty if the model does not carry it)."""
        return json.loads(self.config_json) if self.config_json else {}


@dataclass(frozen=True)
class EncoderOutput:
    """descriptors float32 (N,D) L2-normalised, C-contiguous; masks float32 (N,1,h,w) in [0,1].

    local_values float32 (N,P,C) and local_attention float32 (N,P): the re-ranking outputs
    (:data:`LOCAL_OUTPUT_NAMES`), None when the model has none.
    """

    descriptors: np.ndarray
    masks: np.ndarray
    local_values: np.ndarray | None = None
    local_attention: np.ndarray | None = None


def select_providers(requested: Sequence[str] | None = None) -> list[str]:
    """onnxruntime provider names to use, best first, always ending with CPU.

    Args:
        requested: providers in preference order, as onnxruntime names them
            ("CUDAExecutionProvider", as the node's YAML writes them) or by the short names
            ("tensorrt", "cuda", "cpu"; any case); None = all that this onnxruntime build
            offers, in the order TensorRT -> CUDA -> CPU.
    Raises:
        ValueError: unknown name, or a requested provider this onnxruntime build does not offer.
    """
    available = set(ort.get_available_providers())
    if requested is None:
        chosen = [full for full in PROVIDERS.values() if full in available]
    else:
        known = {full.lower(): full for full in ort.get_all_providers()}
        known.update({short: full for short, full in PROVIDERS.items()})
        chosen = []
        for name in requested:
            full = known.get(str(name).strip().lower()) or known.get(str(name).strip().lower() + "executionprovider")
            if full is None:
                raise ValueError(f"unknown execution provider {name!r}; valid: {', '.join(PROVIDERS)} "
                                 f"or onnxruntime's names ({', '.join(PROVIDERS.values())}, ...)")
            if full not in available:
                raise ValueError(
                    f"execution provider {name!r} is not available in this onnxruntime build "
                    f"(available: {sorted(available)}); install onnxruntime-gpu for cuda/tensorrt"
                )
            if full not in chosen:
                chosen.append(full)
    if PROVIDERS["cpu"] not in chosen:
        chosen.append(PROVIDERS["cpu"])
    return chosen


class RuntimeEncoder:
    """Encode camera images with an exported gated encoder (no torch).

    Args:
        model_path: .onnx file written by ``clino-vpr export``.
        providers: short names in preference order (see :func:`select_providers`); None = best available.
        trt_cache_dir: root of the TensorRT engine + timing caches; default ``<model>.trt_cache`` next to
            it; each model build gets its own subfolder (:func:`trt_engine_cache_dir`).
        batch_size: images per inference call; also the TensorRT optimisation-profile max batch.
        expected_dim: if given, the model's descriptor dimension must equal it (e.g. the index's).
    Raises:
        FileNotFoundError: no model file. ValueError: no/other metadata, wrong dimension, bad options.
    """

    def __init__(
        self,
        model_path: str | Path,
        providers: Sequence[str] | None = None,
        trt_cache_dir: str | Path | None = None,
        batch_size: int = 8,
        expected_dim: int | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"ONNX model {str(self.model_path)!r} does not exist (export one with `clino-vpr export`)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.providers = select_providers(providers)
        self.trt_cache_dir = Path(trt_cache_dir) if trt_cache_dir else self.model_path.with_name(self.model_path.name + ".trt_cache")
        # metadata first: a foreign model fails before any (slow) TensorRT engine build
        self.metadata = ModelMetadata.from_props(_read_props(self.model_path), source=str(self.model_path))
        if expected_dim is not None and self.metadata.descriptor_dim != expected_dim:
            raise ValueError(
                f"{str(self.model_path)!r} produces {self.metadata.descriptor_dim}-d descriptors, expected {expected_dim}-d "
                "(the index / session map was built with another model)"
            )
        self.providers = tensorrt_usable(self.providers, self.metadata.fp16)
        self._session = self._open_session()
        self.has_local_outputs = self._check_io()
        if not self.has_local_outputs:
            LOG.info("%s has no %s outputs (exported before local re-ranking): re-ranking is off with it; "
                     "`clino-vpr export --add-local-outputs` adds them", self.model_path.name, "/".join(LOCAL_OUTPUT_NAMES))
        LOG.info(
            "runtime encoder %s: preset %s, %s, D=%d, providers %s",
            self.model_path.name,
            self.metadata.preset,
            "fp16" if self.metadata.fp16 else "fp32",
            self.metadata.descriptor_dim,
            self.active_providers,
        )

    @property
    def active_providers(self) -> list[str]:
        """Providers the session actually uses (onnxruntime drops those that failed to load)."""
        return list(self._session.get_providers())

    def encode(self, images: Sequence[np.ndarray], encoding: str = "rgb8") -> EncoderOutput:
        """Encode images of any size in ``encoding`` (see ``preprocess.SUPPORTED_ENCODINGS``).

        Returns: EncoderOutput with descriptors float32 (N,D) and masks float32 (N,1,h,w).
        Raises: ValueError for a wrong dtype/shape/encoding (from ``preprocess``).
        """
        h, w = self.metadata.mask_size
        if len(images) == 0:
            return EncoderOutput(
                np.zeros((0, self.metadata.descriptor_dim), np.float32), np.zeros((0, 1, h, w), np.float32)
            )
        names = list(OUTPUT_NAMES) + (list(LOCAL_OUTPUT_NAMES) if self.has_local_outputs else [])
        parts: list[list[np.ndarray]] = [[] for _ in names]
        for start in range(0, len(images), self.batch_size):
            chunk = list(images[start : start + self.batch_size])
            batch = to_model_batch(chunk, self.metadata.input_size, encoding, self.metadata.resize)
            for acc, value in zip(parts, self._session.run(names, {INPUT_NAME: batch})):
                acc.append(value)
        out = [np.ascontiguousarray(np.concatenate(p), dtype=np.float32) for p in parts]
        return EncoderOutput(*out)

    def encode_one(self, image: np.ndarray, encoding: str = "rgb8") -> tuple[np.ndarray, np.ndarray]:
        """One image -> (descriptor float32 (D,), mask float32 (1,h,w))."""
        out = self.encode([image], encoding)
        return out.descriptors[0], out.masks[0]

    def check_parity_against_cpu(self, min_cosine: float | None = None) -> float:
        """Compare the active providers (e.g. a TensorRT engine) with onnxruntime CPU on test images.

        An engine build can silently lose accuracy (fp16 overflow); call this once after start-up
        when a GPU provider is active. Returns the minimum per-image cosine; raises ValueError if it
        is below ``min_cosine`` (default 0.999 for fp16 models, 0.9999 for fp32).
        """
        threshold = min_cosine if min_cosine is not None else (0.999 if self.metadata.fp16 else 0.9999)
        images = parity_images(self.metadata.input_size, n=min(4, self.batch_size))
        cpu = ort.InferenceSession(str(self.model_path), providers=[PROVIDERS["cpu"]])
        (ref,) = cpu.run([OUTPUT_NAMES[0]], {INPUT_NAME: images})
        (got,) = self._session.run([OUTPUT_NAMES[0]], {INPUT_NAME: images})
        ref, got = ref.astype(np.float64), got.astype(np.float64)
        cos = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
        worst = float(cos.min())
        if worst < threshold:
            raise ValueError(
                f"{self.active_providers[0]} output differs from onnxruntime CPU: min cosine {worst:.5f} < {threshold}; "
                "rebuild the engine (delete the TensorRT cache) or use the fp32 model / the cpu provider"
            )
        LOG.info("provider parity vs CPU: min cosine %.6f", worst)
        return worst

    def _open_session(self) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        provider_options = [self._provider_options(p) for p in self.providers]
        try:
            return ort.InferenceSession(
                str(self.model_path), sess_options=options, providers=self.providers, provider_options=provider_options
            )
        except _ORT_ERRORS as exc:
            raise ValueError(f"{str(self.model_path)!r} could not be loaded with {self.providers}: {exc}") from exc

    def _provider_options(self, provider: str) -> dict[str, str]:
        if provider != PROVIDERS["tensorrt"]:
            return {}
        return tensorrt_options(self.metadata, self.trt_cache_dir, self.batch_size)

    def _check_io(self) -> bool:
        """Refuse a model of another interface; True when it also has the local re-ranking outputs."""
        inputs = self._session.get_inputs()
        outputs = tuple(o.name for o in self._session.get_outputs())
        ok = outputs in (OUTPUT_NAMES, OUTPUT_NAMES + LOCAL_OUTPUT_NAMES)
        if [i.name for i in inputs] != [INPUT_NAME] or inputs[0].type != "tensor(uint8)" or not ok:
            raise ValueError(
                f"{str(self.model_path)!r} has inputs {[(i.name, i.type) for i in inputs]} and outputs {list(outputs)}; "
                f"expected {INPUT_NAME!r} uint8 -> {OUTPUT_NAMES} (+ optionally {LOCAL_OUTPUT_NAMES})"
            )
        return outputs == OUTPUT_NAMES + LOCAL_OUTPUT_NAMES


def parity_images(image_size: tuple[int, int], n: int = 4, seed: int = 0) -> np.ndarray:
    """Deterministic uint8 (n,H,W,3) RGB test images (gradients, noise, blocks) for parity checks."""
    rng = np.random.default_rng(seed)
    h, w = image_size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    images = []
    for i in range(n):
        f = rng.uniform(0.02, 0.2, size=3)
        base = np.stack([np.sin(xx * f[0] + i), np.cos(yy * f[1] - i), np.sin((xx + yy) * f[2])], axis=-1)
        img = 127.5 + 90.0 * base + rng.normal(0, 20, size=(h, w, 3))
        img[(xx // 16 + yy // 16 + i) % 5 == 0] = rng.uniform(0, 255, size=3)  # blocks: edges for the ViT
        images.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(images)


def _parse_resize(policy: str) -> str:
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize_policy {policy!r} unknown to this package (valid: {RESIZE_POLICIES})")
    return policy


def _parse_size(text: str) -> tuple[int, int]:
    h, w = text.split("x")
    return int(h), int(w)


def _read_props(model_path: Path) -> dict[str, str]:
    """metadata_props of an ONNX file, via a CPU session that only parses it (no engine build)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(model_path), sess_options=options, providers=[PROVIDERS["cpu"]])
    except _ORT_ERRORS as exc:
        raise ValueError(f"{str(model_path)!r} is not a loadable ONNX model (corrupt?): {exc}") from exc
    return dict(session.get_modelmeta().custom_metadata_map)


# ---------------------------------------------------------------------------- TensorRT engines
#: bumped when the TensorRT options below change, so engines built with older options are not reused
TRT_OPTIONS_VERSION = 2
#: op types that run outside TensorRT when its fp16 mode is on, so onnxruntime's CUDA provider runs
#: them with the graph's fp32 types: the L2 normalisations (ReduceL2, Clip), Sinkhorn's log-domain
#: updates (ReduceLogSumExp, Exp, Sub) and the gate MLP (Gemm). None of them occurs in the DINOv2 or
#: CLIP towers (test/test_runtime_encoder.py checks the exported graph), so the towers stay whole
#: TensorRT fp16 engines. trt_fp16_enable builds a weakly typed network: TensorRT may pick fp16
#: kernels for any layer it holds, whatever the graph's types; what it does not hold it cannot demote.
TRT_FP32_OP_TYPES = ("ReduceL2", "Clip", "ReduceLogSumExp", "Exp", "Sub", "Gemm")
#: first onnxruntime with the ``trt_op_types_to_exclude`` TensorRT option
ORT_TRT_EXCLUDE_VERSION = (1, 21)


def _ort_version() -> tuple[int, int]:
    major, minor = ort.__version__.split(".")[:2]
    return int(major), int(minor)


def tensorrt_usable(providers: list[str], fp16_model: bool) -> list[str]:
    """``providers`` without TensorRT where its fp16 engine could not keep the head in fp32.

    An fp16 export needs TensorRT's fp16 mode, and that mode may demote any layer to fp16 unless
    the head's op types are excluded (:data:`TRT_FP32_OP_TYPES`), which onnxruntime < 1.21 cannot do:
    there the CUDA provider, which follows the graph's types exactly, runs the model instead.
    """
    if PROVIDERS["tensorrt"] not in providers or not fp16_model or _ort_version() >= ORT_TRT_EXCLUDE_VERSION:
        return providers
    LOG.warning("onnxruntime %s cannot keep the normalisations and Sinkhorn of an fp16 model in fp32 on TensorRT "
                "(needs >= %d.%d): using %s instead", ort.__version__, *ORT_TRT_EXCLUDE_VERSION,
                [p for p in providers if p != PROVIDERS["tensorrt"]][0])
    return [p for p in providers if p != PROVIDERS["tensorrt"]]


def trt_engine_cache_dir(cache_root: Path, metadata: ModelMetadata, batch_size: int) -> Path:
    """The engine + timing cache folder of one model build: ``<root>/<fingerprint>-<precision>-<HxW>-b<N>-o<V>``.

    A retrained model exported to the same path has another weights fingerprint, hence another
    folder: its engine is built afresh instead of the stale one being run (onnxruntime keys its
    engine files by the graph's structure, which retraining does not change).
    """
    fingerprint = "".join(c if c.isalnum() else "_" for c in metadata.fingerprint)[:40] or "unknown"
    h, w = metadata.input_size
    precision = "fp16" if metadata.fp16 else "fp32"
    return Path(cache_root) / f"{fingerprint}-{precision}-{h}x{w}-b{batch_size}-o{TRT_OPTIONS_VERSION}"


def tensorrt_options(metadata: ModelMetadata, cache_root: Path, batch_size: int) -> dict[str, str]:
    """onnxruntime TensorRT provider options for a model (see docs/encoder.md, "TensorRT")."""
    h, w = metadata.input_size
    cache = trt_engine_cache_dir(cache_root, metadata, batch_size)
    cache.mkdir(parents=True, exist_ok=True)
    shape = lambda b: f"{INPUT_NAME}:{b}x{h}x{w}x3"  # noqa: E731
    options = {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
        # fp16 kernels only for an fp16-exported graph: an fp32 export builds an fp32 engine
        "trt_fp16_enable": str(metadata.fp16),
        "trt_profile_min_shapes": shape(1),
        "trt_profile_opt_shapes": shape(batch_size),
        "trt_profile_max_shapes": shape(batch_size),
    }
    if metadata.fp16:
        options["trt_layer_norm_fp32_fallback"] = "True"  # the towers' LayerNorms stay fp32 inside TensorRT
        options["trt_op_types_to_exclude"] = ",".join(TRT_FP32_OP_TYPES)
    return options


def check_provider_parity(encoder: RuntimeEncoder, warn_only: bool = False) -> float | None:
    """Start-up check: when the active provider is not the CPU, compare it with onnxruntime CPU
    (:meth:`RuntimeEncoder.check_parity_against_cpu`). Returns the minimum cosine (None on the CPU).

    Raises ValueError on a mismatch, saying what to do, unless ``warn_only`` (then a loud warning).
    """
    active = encoder.active_providers
    if not active or active[0] == PROVIDERS["cpu"]:
        return None
    try:
        return encoder.check_parity_against_cpu()
    except ValueError as exc:
        if not warn_only:
            raise ValueError(f"refusing to start: {exc} (parity_warn_only / --parity-warn-only runs it anyway)") from exc
        LOG.warning("RUNNING WITH A MISMATCHED ENGINE (parity_warn_only): %s", exc)
        return None


def read_metadata(model_path: str | Path) -> ModelMetadata:
    """A model's metadata without building any engine: FileNotFoundError / ValueError (corrupt, foreign
    model) say what is wrong, e.g. before a long run starts."""
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {str(path)!r} does not exist (export one with `clino-vpr export`)")
    return ModelMetadata.from_props(_read_props(path), source=str(path))
