"""Training-side gated encoder (torch): DINOv2 backbone, CLIP tower, adapter + gate, SALAD.

Entry point: :func:`build_encoder`.
"""

from clino_vpr_ros.model.encoder import GatedEncoder, build_encoder

__all__ = ["GatedEncoder", "build_encoder"]
