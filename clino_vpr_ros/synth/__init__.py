"""Synthetic towns with ground truth: procedural 2.5D towns, a vectorised ray caster, revisit routes,
and writers for GSV-Cities / downloader-format datasets and ROS 2 bags.

Everything is deterministic from seeds. See ``clino-vpr synth --help``.
"""

from clino_vpr_ros.synth.conditions import CONDITIONS, SEASONS, Condition, get_condition, sample_condition
from clino_vpr_ros.synth.render import RenderOutput, Renderer, intrinsics
from clino_vpr_ros.synth.session import (
    ROUTES, Session, SessionConfig, SessionFrame, generate_session, gt_cross_session_pairs, make_base_T_camera, pose2d,
)
from clino_vpr_ros.synth.town import LABELS, Town, TownConfig, generate_town
from clino_vpr_ros.synth.writers import (
    parse_downloader_name, read_session_groundtruth, write_bag, write_downloader_sets, write_gsv_dataset,
)

__all__ = [
    "CONDITIONS", "LABELS", "SEASONS", "Condition", "RenderOutput", "Renderer", "Town", "TownConfig",
    "generate_town", "get_condition", "intrinsics", "sample_condition", "ROUTES", "Session", "SessionConfig",
    "SessionFrame", "generate_session", "gt_cross_session_pairs", "make_base_T_camera", "pose2d",
    "parse_downloader_name", "read_session_groundtruth", "write_bag", "write_downloader_sets", "write_gsv_dataset",
]
