"""Geometric verification of a loop-closure candidate with OpenCV local features.

Local features (ORB or SIFT keypoints + descriptors, and the depth at each keypoint when a depth
image is given) are computed once when a keyframe is inserted and stored with it, so keyframes of
earlier sessions can be verified without their images.

:func:`verify_pair` matches the two keyframes (Lowe ratio test) and estimates their relative pose,
choosing the strongest model the data allows:

* depth on one side and intrinsics known -> PnP (``solvePnPRansac`` + LM refinement): metric
  6-DoF pose;
* intrinsics known, no depth -> essential matrix (USAC_MAGSAC or RANSAC) + ``recoverPose``:
  rotation and translation *direction* (unit norm, ``metric=False``);
* intrinsics known, no baseline (the same pose twice) -> rotation-only model (the essential matrix
  is degenerate there): rotation, zero translation, ``metric=False``;
* no intrinsics -> fundamental matrix: epipolar inliers only; the pose is identity with an
  "unconstrained" covariance (the closure says "same place", not "this relative pose").

Poses are camera-frame (optical: z forward, x right, y down): ``qcam_T_mcam`` maps points of the
match camera frame to the query camera frame (the match camera's pose in the query camera frame).

Covariance model (6x6, order x, y, z, roll, pitch, yaw; metres and radians; query camera frame):
with ``n`` inliers, ``f`` the mean focal length (px) and ``r`` the RMS residual of the inliers in
pixels (PnP reprojection error, or Sampson distance for the essential matrix), floored at
``pixel_sigma``:

* rotation sigma  s_r = max(r / f * sqrt(2 / n), min_rotation_sigma_rad)  (each axis);
* metric translation sigma s_t = max(s_r * median inlier depth, min_translation_sigma_m);
* non-metric translation sigma = ``unscaled_translation_sigma_m`` (scale unobservable);
* fundamental-matrix closures: s_r = pi, s_t = ``unscaled_translation_sigma_m``.

Angular precision grows with the focal length and the square root of the inlier count; a metric
translation error is that angular error seen at the scene's depth. Axes are independent
(diagonal), a deliberate simplification that back ends can re-weight.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

log = logging.getLogger(__name__)

ESTIMATORS: dict[str, int] = {"magsac": cv2.USAC_MAGSAC, "ransac": cv2.RANSAC}


def _orb(n: int) -> cv2.Feature2D:
    return cv2.ORB_create(nfeatures=n)


def _sift(n: int) -> cv2.Feature2D:
    return cv2.SIFT_create(nfeatures=n)


#: feature name -> (detector factory, matcher norm, descriptor bytes). SIFT descriptors are
#: integer-valued in [0, 255] in OpenCV, so they are stored as uint8 without loss (4x smaller).
FEATURES: dict[str, tuple[Callable[[int], cv2.Feature2D], int, int]] = {
    "orb": (_orb, cv2.NORM_HAMMING, 32),
    "sift": (_sift, cv2.NORM_L2, 128),
}


def feature_width(name: str) -> int:
    """Bytes per local descriptor of a feature type (ValueError listing valid names otherwise)."""
    if name not in FEATURES:
        raise ValueError(f"unknown local feature {name!r}; valid: {', '.join(FEATURES)}")
    return FEATURES[name][2]


@dataclass(frozen=True)
class VerifyConfig:
    """Local features, matching, robust estimation and the covariance model (see module doc)."""

    feature: str = "sift"
    n_features: int = 1000
    clahe_clip_limit: float = 2.0
    clahe_tiles: int = 8
    ratio: float = 0.8
    min_inliers: int = 20
    estimator: str = "magsac"
    ransac_threshold_px: float = 1.0
    pnp_reprojection_px: float = 3.0
    confidence: float = 0.999
    pnp_iterations: int = 1000
    min_depth_m: float = 0.1
    max_depth_m: float = 40.0
    depth_edge_ratio: float = 0.05
    pixel_sigma: float = 1.0
    min_rotation_sigma_rad: float = 0.002
    min_translation_sigma_m: float = 0.02
    unscaled_translation_sigma_m: float = 100.0

    def __post_init__(self) -> None:
        if self.feature not in FEATURES:
            raise ValueError(f"unknown local feature {self.feature!r}; valid: {', '.join(FEATURES)}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown robust estimator {self.estimator!r}; valid: {', '.join(ESTIMATORS)}")
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"ratio must be in (0, 1), got {self.ratio}")
        if self.clahe_clip_limit < 0 or self.clahe_tiles < 1:
            raise ValueError(f"need clahe_clip_limit >= 0 (0 = off) and clahe_tiles >= 1, got "
                             f"{self.clahe_clip_limit}, {self.clahe_tiles}")
        if self.min_inliers < 6:
            raise ValueError(f"min_inliers must be >= 6 (PnP/essential need a margin), got {self.min_inliers}")


@dataclass(frozen=True)
class LocalFeatures:
    """Local features of one keyframe.

    keypoints: float32 (N,2) pixel (x, y) in the original image; descriptors: uint8 (N,F), F=32 for
    ORB, 128 for SIFT; depths: float32 (N,) metres at each keypoint, NaN where unknown;
    image_size: (height, width).
    """

    keypoints: np.ndarray
    descriptors: np.ndarray
    depths: np.ndarray
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.keypoints)

    @property
    def has_depth(self) -> bool:
        return bool(np.isfinite(self.depths).any())


@dataclass(frozen=True)
class Verification:
    """Outcome of :func:`verify_pair`.

    qcam_T_mcam: float64 (4,4) pose of the match camera in the query camera frame (translation
    unit-norm when ``metric`` is False); covariance: float64 (6,6), order x,y,z,roll,pitch,yaw, in
    the query camera frame; method: "pnp", "essential", "fundamental" or "none".
    """

    accepted: bool
    inliers: int
    matches: int
    qcam_T_mcam: np.ndarray
    metric: bool
    covariance: np.ndarray
    method: str
    reason: str = ""


def to_gray(image: np.ndarray, encoding: str = "rgb8") -> np.ndarray:
    """uint8 (H,W) gray image from a uint8 (H,W), (H,W,3) or (H,W,4) image of the given encoding."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return image
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"image must be (H,W), (H,W,3) or (H,W,4), got {image.shape}")
    codes = {"rgb8": cv2.COLOR_RGB2GRAY, "bgr8": cv2.COLOR_BGR2GRAY, "rgba8": cv2.COLOR_RGBA2GRAY, "bgra8": cv2.COLOR_BGRA2GRAY}
    if encoding not in codes:
        raise ValueError(f"unsupported colour encoding {encoding!r}; valid: {', '.join(codes)} or a 2-D mono image")
    return cv2.cvtColor(np.ascontiguousarray(image), codes[encoding])


def extract_features(gray: np.ndarray, cfg: VerifyConfig = VerifyConfig(), depth: np.ndarray | None = None) -> LocalFeatures:
    """Detect and describe local features on a uint8 (H,W) image; sample depth (float32 (H,W) m) at keypoints.

    The image is first contrast-equalised with CLAHE (``cfg.clahe_clip_limit``, 0 = off): dusk and
    night frames otherwise yield too few keypoints to verify a revisit of a daylight keyframe.
    """
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"extract_features needs a uint8 (H,W) gray image, got {gray.dtype} {gray.shape}")
    if cfg.clahe_clip_limit > 0:
        gray = cv2.createCLAHE(cfg.clahe_clip_limit, (cfg.clahe_tiles, cfg.clahe_tiles)).apply(gray)
    factory, _, width = FEATURES[cfg.feature]
    kps, desc = factory(cfg.n_features).detectAndCompute(gray, None)
    h, w = gray.shape
    if desc is None or not kps:
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, width), np.uint8), np.zeros(0, np.float32), (h, w))
    desc = np.clip(np.rint(desc), 0, 255).astype(np.uint8)
    pts = np.array([kp.pt for kp in kps], dtype=np.float32)
    depths = np.full(len(pts), np.nan, dtype=np.float32)
    if depth is not None:
        if depth.shape != (h, w):
            raise ValueError(f"depth shape {depth.shape} must equal the image shape {(h, w)}")
        depths = _sample_depth(np.asarray(depth, dtype=np.float32), pts, cfg)
    return LocalFeatures(pts, np.ascontiguousarray(desc), depths, (h, w))


def _sample_depth(depth: np.ndarray, pts: np.ndarray, cfg: VerifyConfig) -> np.ndarray:
    """float32 (N,) depth at each keypoint, NaN where unknown or on a depth edge.

    Corners sit on object boundaries, where the nearest depth pixel may belong to the background;
    a keypoint whose 3x3 neighbourhood spans more than ``depth_edge_ratio`` (max/min - 1) gets no
    depth instead of a wrong one.
    """
    valid = np.isfinite(depth) & (depth >= cfg.min_depth_m) & (depth <= cfg.max_depth_m)
    kernel = np.ones((3, 3), np.uint8)
    lo = cv2.erode(np.where(valid, depth, np.float32(np.inf)).astype(np.float32), kernel)
    hi = cv2.dilate(np.where(valid, depth, np.float32(np.inf)).astype(np.float32), kernel)
    h, w = depth.shape
    u = np.clip(np.rint(pts[:, 0]).astype(int), 0, w - 1)
    v = np.clip(np.rint(pts[:, 1]).astype(int), 0, h - 1)
    z, zlo, zhi = depth[v, u], lo[v, u], hi[v, u]
    ok = valid[v, u] & np.isfinite(zhi) & (zhi <= zlo * (1.0 + cfg.depth_edge_ratio))
    return np.where(ok, z, np.nan).astype(np.float32)


def ratio_matches(query: LocalFeatures, match: LocalFeatures, cfg: VerifyConfig,
                  query_rows: np.ndarray | None = None) -> np.ndarray:
    """int (M,2) index pairs (query, match) passing the ratio test (nearest neighbours in ``match``).

    query_rows: int (R,) the query keypoints to match (all when None); the ratio test is per query
    keypoint, so a subset gets exactly the pairs the full set would give for those keypoints.
    """
    rows = np.arange(len(query)) if query_rows is None else np.asarray(query_rows, dtype=int)
    width = (feature_width(cfg.feature),)
    if (len(rows) == 0 or len(query) < 2 or len(match) < 2
            or query.descriptors.shape[1:] != width or match.descriptors.shape[1:] != width):
        return np.zeros((0, 2), dtype=int)  # nothing to match, or another feature type (cannot be matched)
    a, b = query.descriptors[rows], match.descriptors
    norm = FEATURES[cfg.feature][1]
    if norm == cv2.NORM_L2:
        # OpenCV's brute-force L2 on uint8 has no vectorised path: float32 is ~7x faster, and exact
        # (integer squared distances below 2^24 are represented exactly)
        a, b = a.astype(np.float32), b.astype(np.float32)
    pairs = [(rows[m[0].queryIdx], m[0].trainIdx) for m in cv2.BFMatcher(norm).knnMatch(a, b, k=2)
             if len(m) == 2 and m[0].distance < cfg.ratio * m[1].distance]
    return np.array(pairs, dtype=int).reshape(-1, 2)


def _rejected(n_matches: int, inliers: int, method: str, reason: str) -> Verification:
    return Verification(False, inliers, n_matches, np.eye(4), False, np.eye(6) * 1e6, method, reason)


def _pose(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, np.ravel(t)
    return T


def _covariance(cfg: VerifyConfig, focal: float, rms_px: float, n: int, depth: float | None) -> np.ndarray:
    s_r = max(max(rms_px, cfg.pixel_sigma) / focal * math.sqrt(2.0 / max(n, 1)), cfg.min_rotation_sigma_rad)
    s_t = max(s_r * depth, cfg.min_translation_sigma_m) if depth is not None else cfg.unscaled_translation_sigma_m
    return np.diag([s_t**2] * 3 + [s_r**2] * 3)


def _backproject(pts: np.ndarray, depths: np.ndarray, K: np.ndarray) -> np.ndarray:
    x = (pts[:, 0] - K[0, 2]) / K[0, 0]
    y = (pts[:, 1] - K[1, 2]) / K[1, 1]
    return np.stack([x * depths, y * depths, depths], axis=1).astype(np.float64)


def _pnp(obj: np.ndarray, img: np.ndarray, K: np.ndarray, cfg: VerifyConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """cam_T_obj (4,4), inlier indices and the pose covariance (6,6: x,y,z,roll,pitch,yaw); None on failure.

    Covariance: sigma^2 (J^T J)^-1 of the reprojection Jacobian at the solution (sigma: inlier RMS
    reprojection error, floored at ``pixel_sigma``), so weak geometry (few or clustered points,
    far depth) gives a large covariance; then floored per axis (see the module docstring).
    """
    ok, rvec, tvec, inl = cv2.solvePnPRansac(
        obj, img.astype(np.float64), K, None, iterationsCount=cfg.pnp_iterations,
        reprojectionError=cfg.pnp_reprojection_px, confidence=cfg.confidence, flags=cv2.SOLVEPNP_EPNP,
    )
    if not ok or inl is None or len(inl) < 4:
        return None
    inl = inl.ravel()
    rvec, tvec = cv2.solvePnPRefineLM(obj[inl], img[inl].astype(np.float64), K, None, rvec, tvec)
    proj, jac = cv2.projectPoints(obj[inl], rvec, tvec, K, None)
    rms = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - img[inl]) ** 2, axis=1))))
    J = jac[:, [3, 4, 5, 0, 1, 2]]  # (tvec, rvec) -> order x, y, z, roll, pitch, yaw
    sigma = max(rms, cfg.pixel_sigma)
    try:
        cov = sigma**2 * np.linalg.inv(J.T @ J)
    except np.linalg.LinAlgError:
        return None
    floor = np.array([cfg.min_translation_sigma_m] * 3 + [cfg.min_rotation_sigma_rad] * 3) ** 2
    cov = cov + np.diag(np.maximum(floor - np.diag(cov), 0.0))
    return _pose(cv2.Rodrigues(rvec)[0], tvec), inl, cov


def _verify_pnp(q: LocalFeatures, Kq: np.ndarray, m: LocalFeatures, Km: np.ndarray, pairs: np.ndarray, cfg: VerifyConfig) -> Verification | None:
    """Metric pose from depth on the match side (preferred) or the query side; None if no depth."""
    for side in ("match", "query"):
        src, dst, Ksrc, Kdst = (m, q, Km, Kq) if side == "match" else (q, m, Kq, Km)
        si, di = (pairs[:, 1], pairs[:, 0]) if side == "match" else (pairs[:, 0], pairs[:, 1])
        z = src.depths[si]
        ok = np.isfinite(z)
        if ok.sum() < cfg.min_inliers:
            continue
        obj = _backproject(src.keypoints[si[ok]], z[ok], Ksrc)
        result = _pnp(obj, dst.keypoints[di[ok]], Kdst, cfg)
        if result is None:
            continue
        dst_T_src, inl, cov = result
        if side == "match":
            qcam_T_mcam = dst_T_src
        else:  # the covariance of the inverse, to first order: rotate into the query frame
            qcam_T_mcam = np.linalg.inv(dst_T_src)
            B = np.zeros((6, 6))
            B[:3, :3] = B[3:, 3:] = qcam_T_mcam[:3, :3]
            cov = B @ cov @ B.T
        accepted = len(inl) >= cfg.min_inliers
        reason = "" if accepted else f"{len(inl)} PnP inliers < min_inliers {cfg.min_inliers}"
        return Verification(accepted, len(inl), len(pairs), qcam_T_mcam, True, cov, "pnp", reason)
    return None


def _normalize(pts: np.ndarray, K: np.ndarray) -> np.ndarray:
    return cv2.undistortPoints(pts.reshape(-1, 1, 2).astype(np.float64), K, None).reshape(-1, 2)


def _verify_essential(q: LocalFeatures, Kq: np.ndarray, m: LocalFeatures, Km: np.ndarray, pairs: np.ndarray, cfg: VerifyConfig) -> Verification:
    xm, xq = _normalize(m.keypoints[pairs[:, 1]], Km), _normalize(q.keypoints[pairs[:, 0]], Kq)
    focal = float(np.mean([Kq[0, 0], Kq[1, 1], Km[0, 0], Km[1, 1]]))
    E, mask = cv2.findEssentialMat(xm, xq, np.eye(3), method=ESTIMATORS[cfg.estimator], prob=cfg.confidence, threshold=cfg.ransac_threshold_px / focal)
    if E is None or E.shape != (3, 3):
        # OpenCV 4.5 (Ubuntu 22.04) returns no E at all for zero-baseline views (later versions a
        # degenerate one): the same pose twice is still a revisit, so try the rotation-only model
        rotation_only = _verify_rotation_only(xm, xq, len(pairs), focal, cfg)
        if rotation_only.accepted:
            return rotation_only
        return _rejected(len(pairs), 0, "essential", "essential matrix estimation failed")
    # the robust estimator picks the inliers; on near-planar, short-baseline views its best minimal
    # model can still be a few degrees off, so E is re-estimated on the inliers (LMedS: no threshold)
    inl0 = mask.ravel() > 0
    if inl0.sum() >= 8:
        E_ref, _ = cv2.findEssentialMat(xm[inl0], xq[inl0], np.eye(3), method=cv2.LMEDS, prob=cfg.confidence)
        if E_ref is not None and E_ref.shape == (3, 3):
            E = E_ref
    n_pose, R, t, mask = cv2.recoverPose(E, xm, xq, np.eye(3), mask=mask.copy())
    inl = mask.ravel() > 0
    # Sampson distance of the inliers, converted to pixels
    h1 = np.c_[xm[inl], np.ones(inl.sum())]
    h2 = np.c_[xq[inl], np.ones(inl.sum())]
    Ex1, Etx2 = h1 @ E.T, h2 @ E
    num = np.sum(h2 * Ex1, axis=1) ** 2
    den = Ex1[:, 0] ** 2 + Ex1[:, 1] ** 2 + Etx2[:, 0] ** 2 + Etx2[:, 1] ** 2
    rms = float(np.sqrt(np.mean(num / np.maximum(den, 1e-18)))) * focal if inl.any() else 0.0
    n = int(inl.sum())
    if n < cfg.min_inliers:  # E is degenerate without a baseline: try the rotation-only model
        rotation_only = _verify_rotation_only(xm, xq, len(pairs), focal, cfg)
        if rotation_only.accepted:
            return rotation_only
    accepted = n >= cfg.min_inliers
    reason = "" if accepted else f"{n} essential-matrix inliers < min_inliers {cfg.min_inliers}"
    return Verification(accepted, n, len(pairs), _pose(R, t), False, _covariance(cfg, focal, rms, n, None), "essential", reason)


def _verify_rotation_only(xm: np.ndarray, xq: np.ndarray, n_matches: int, focal: float, cfg: VerifyConfig) -> Verification:
    """Zero-baseline views (the robot stood still, or came back to the very same pose).

    The essential matrix is undefined without a baseline and ``recoverPose`` finds no point in front
    of both cameras, so the strongest true revisit would be rejected. A pure rotation maps the
    normalised points of one view onto the other (xq ~ R xm): 3 DoF, stricter than E's 5.
    Translation is reported as zero with the non-metric (scale-free) translation sigma.
    """
    H, _ = cv2.findHomography(xm, xq, cv2.RANSAC, cfg.ransac_threshold_px / focal)
    if H is None:
        return _rejected(n_matches, 0, "rotation", "rotation-only model estimation failed")
    U, _, Vt = np.linalg.svd(H)
    R = U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt  # nearest rotation to H (up to scale)
    proj = np.c_[xm, np.ones(len(xm))] @ R.T
    err_px = np.linalg.norm(proj[:, :2] / proj[:, 2:3] - xq, axis=1) * focal
    inl = (proj[:, 2] > 0) & (err_px < cfg.ransac_threshold_px)
    n = int(inl.sum())
    accepted = n >= cfg.min_inliers
    rms = float(np.sqrt(np.mean(err_px[inl] ** 2))) if n else 0.0
    reason = "" if accepted else f"{n} rotation-only inliers < min_inliers {cfg.min_inliers}"
    return Verification(accepted, n, n_matches, _pose(R, np.zeros(3)), False, _covariance(cfg, focal, rms, n, None),
                        "rotation", reason)


def _verify_fundamental(q: LocalFeatures, m: LocalFeatures, pairs: np.ndarray, cfg: VerifyConfig) -> Verification:
    F, mask = cv2.findFundamentalMat(
        m.keypoints[pairs[:, 1]].astype(np.float64), q.keypoints[pairs[:, 0]].astype(np.float64),
        ESTIMATORS[cfg.estimator], cfg.ransac_threshold_px, cfg.confidence,
    )
    if F is None or mask is None:
        return _rejected(len(pairs), 0, "fundamental", "fundamental matrix estimation failed")
    n = int(mask.ravel().astype(bool).sum())
    accepted = n >= cfg.min_inliers
    cov = np.diag([cfg.unscaled_translation_sigma_m**2] * 3 + [math.pi**2] * 3)
    reason = "" if accepted else f"{n} fundamental-matrix inliers < min_inliers {cfg.min_inliers}"
    return Verification(accepted, n, len(pairs), np.eye(4), False, cov, "fundamental", reason)


def _check_K(K: np.ndarray | None, what: str) -> np.ndarray | None:
    """Validated float64 (3,3) intrinsics, or None when unknown (None or all-NaN, as stored in maps)."""
    if K is None:
        return None
    K = np.asarray(K, dtype=np.float64)
    if K.shape == (3, 3) and np.isnan(K).all():
        return None
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"{what}: intrinsics must be a finite (3,3) matrix with fx, fy > 0, got {K!r}")
    return K


def verify_pair(
    query: LocalFeatures,
    K_query: np.ndarray | None,
    match: LocalFeatures,
    K_match: np.ndarray | None,
    cfg: VerifyConfig = VerifyConfig(),
    pairs: np.ndarray | None = None,
) -> Verification:
    """Geometrically verify a candidate pair (see the module docstring for the model choice).

    Args:
        query, match: local features of the two keyframes (same feature type).
        K_query, K_match: float64 (3,3) intrinsics of each keyframe's original image, or None.
        cfg: verification settings.
        pairs: int (M,2) ratio-test pairs (query, match) from :func:`ratio_matches`, when the caller
            already has them (matching is the costly step; the engine verifies a pair twice).
    """
    Kq, Km = _check_K(K_query, "K_query"), _check_K(K_match, "K_match")
    if query.descriptors.shape[1:] != (feature_width(cfg.feature),) or match.descriptors.shape[1:] != (feature_width(cfg.feature),):
        return _rejected(0, 0, "none", "local features of different types cannot be matched")
    if pairs is None:
        pairs = ratio_matches(query, match, cfg)
    if len(pairs) < cfg.min_inliers:
        return _rejected(len(pairs), 0, "none", f"{len(pairs)} ratio-test matches < min_inliers {cfg.min_inliers}")
    if Kq is None or Km is None:
        return _verify_fundamental(query, match, pairs, cfg)
    result = _verify_pnp(query, Kq, match, Km, pairs, cfg)
    if result is not None:
        return result
    return _verify_essential(query, Kq, match, Km, pairs, cfg)
