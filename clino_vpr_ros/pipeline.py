"""Encoder + engine: image in, loop closures out. Shared by the ROS node, the bag runner and the demo.

The encoder sees the image through its own resize policy; local features for verification are
computed by the engine on the gray image at the original resolution, where ``K`` applies.
Frames that cannot become keyframes (too soon after the last one) are not encoded at all when
``skip_early_frames`` is on: on a robot the encoder is the expensive part.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clino_vpr_ros.camera import CameraCalibration
from clino_vpr_ros.engine import EngineConfig, FrameInput, FrameResult, LoopClosureEngine
from clino_vpr_ros.preprocess import to_rgb8
from clino_vpr_ros.verify import to_gray

if TYPE_CHECKING:  # the runtime module pulls in onnxruntime; only needed by from_files
    from clino_vpr_ros.runtime import RuntimeEncoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineResult:
    """frame_result from the engine; descriptor float32 (D,) and mask float32 (1,h,w) from the
    encoder (None when the frame was skipped before encoding); timings in milliseconds; stages:
    milliseconds per stage of this frame (encode, and for a keyframe the engine's: features,
    retrieval or sequence, rerank, verification, pose; "other" is the rest of total_ms)."""

    frame_result: FrameResult
    descriptor: np.ndarray | None
    mask: np.ndarray | None
    encode_ms: float
    total_ms: float
    stages: dict[str, float] = field(default_factory=dict)


class LoopClosurePipeline:
    """Runs ``encoder.encode_one`` then ``engine.process`` for each image."""

    def __init__(self, encoder: RuntimeEncoder, engine: LoopClosureEngine, skip_early_frames: bool = True) -> None:
        dim = int(encoder.metadata.descriptor_dim)
        if dim != engine.descriptor_dim:
            raise ValueError(f"encoder produces {dim}-d descriptors, the engine expects {engine.descriptor_dim}-d")
        if encoder.metadata.fingerprint != engine.fingerprint:
            raise ValueError(f"encoder fingerprint {encoder.metadata.fingerprint!r} differs from the engine's {engine.fingerprint!r}")
        self.encoder = encoder
        self.engine = engine
        self.skip_early_frames = skip_early_frames

    @classmethod
    def from_files(cls, model_path: str | Path, engine_cfg: EngineConfig, session_id: str, prior_maps: Sequence[str | Path] = (),
                   base_T_camera: np.ndarray | None = None, providers: Sequence[str] | None = None,
                   parity_warn_only: bool = False) -> LoopClosurePipeline:
        """Load the ONNX encoder and the prior maps (refused when built by another model).

        On a GPU provider the encoder is first compared with onnxruntime CPU
        (:func:`~clino_vpr_ros.runtime.check_provider_parity`): a mismatch refuses to start
        (ValueError) unless ``parity_warn_only``.
        """
        from clino_vpr_ros.runtime import RuntimeEncoder, check_provider_parity

        encoder = RuntimeEncoder(model_path, providers=providers)
        check_provider_parity(encoder, warn_only=parity_warn_only)
        if engine_cfg.rerank.enabled and not encoder.has_local_outputs:
            log.warning("local re-ranking is on but %s has no local outputs: re-ranking off, descriptor order "
                        "(add them with `clino-vpr export --add-local-outputs`)", Path(model_path).name)
        engine = LoopClosureEngine(engine_cfg, int(encoder.metadata.descriptor_dim), encoder.metadata.fingerprint,
                                   session_id, base_T_camera)
        for path in prior_maps:
            engine.load_prior_map(path)
        return cls(encoder, engine)

    def process(self, stamp: float, image: np.ndarray, encoding: str = "rgb8", K: np.ndarray | None = None,
                odom_T_base: np.ndarray | None = None, depth: np.ndarray | None = None,
                camera: CameraCalibration | None = None) -> PipelineResult:
        """One camera frame.

        Args:
            stamp: seconds. image: in ``encoding``, any of ``preprocess.SUPPORTED_ENCODINGS``
            (uint8 (H,W,3|4) colour, (H,W) or (H,W,1) mono8/Bayer, uint16 mono16). K: float64 (3,3) of this image. odom_T_base: float64 (4,4).
            depth: float32 (H,W) metres aligned with the image. camera: the full calibration (K, distortion,
            size) instead of K; an image of another size is refused (ValueError) before it is encoded.
        """
        t0 = time.perf_counter()
        if camera is not None:
            camera.check_image(*np.shape(image)[:2])
        if self.skip_early_frames and not self.engine.wants_frame(stamp):
            return PipelineResult(FrameResult(False, -1, []), None, None, 0.0, (time.perf_counter() - t0) * 1e3)
        # one conversion serves both: the encoder and the local features see the same 8-bit RGB
        # (local features on a raw Bayer mosaic would match the pattern, not the scene)
        rgb = to_rgb8(image, encoding)
        out = self.encoder.encode([rgb], encoding="rgb8")
        descriptor, mask = out.descriptors[0], out.masks[0]
        local = (None, None) if out.local_values is None else (out.local_values[0], out.local_attention[0])
        t1 = time.perf_counter()
        gray = to_gray(rgb, "rgb8")
        result = self.engine.process(FrameInput(stamp, descriptor, gray, K, odom_T_base, depth, camera, *local))
        total = (time.perf_counter() - t0) * 1e3
        stages = {"encode": (t1 - t0) * 1e3, **(self.engine.stage_ms if result.is_keyframe else {})}
        stages["other"] = max(total - sum(stages.values()), 0.0)
        return PipelineResult(result, descriptor, mask, (t1 - t0) * 1e3, total, stages)
