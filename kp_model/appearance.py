"""Does an answer look like its support? The grey-level correlation of the support's region (its keypoints' hull,
grown) warped onto the query by the similarity transform that takes the support's keypoints to the answer's.

It needs no engine: any predictor's answer can be checked against the support it came from. A head/tail flip of an
elongated animal fits the support's constellation (rotated) but not its appearance, so its correlation is low.

check = support_appearance(support_image, support_keypoints)   # once per support
grey = smooth_grey(query_image)                                # once per query
ncc = appearance_score(check, grey, answer_points)             # in [-1, 1]; nan when it cannot be told

Units: images (H, W, 3) uint8 RGB; keypoints and answers in pixels of their own image. The grey-level helpers here
(``global_descriptor``, ``rescale``, ``smooth_grey``, ``support_region``) also serve the matcher
(kp_model.oneshot.matcher).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from kp_model.oneshot.descriptors import _bilinear

OBJECT_SIZE = 64  # px: the support is rescaled so its keypoints' extent spans this (the matcher's working size)
REGION_GROW = 0.15  # the keypoints' hull is grown by this x OBJECT_SIZE (the matcher's verify_region_grow)


@dataclass(frozen=True)
class SupportAppearance:
    """One support's region, in working px (OBJECT_SIZE scale) from its keypoints' centre.

    keypoints: (K, 2) the support's keypoints; region: (M, 2) pixel positions around them (step 2); grey: (M,)
    zero-mean unit-norm smoothed grey values there."""

    keypoints: np.ndarray
    region: np.ndarray
    grey: np.ndarray


def object_extent(keypoints: np.ndarray, shape: tuple[int, int]) -> float:
    """Object size (px) used to normalise scale: the (K, 2) px keypoints' bounding-box diagonal, floored at a tenth
    of the image's (H, W) longer side and at 8 px."""
    if len(keypoints) >= 2:
        span = keypoints.max(axis=0) - keypoints.min(axis=0)
        extent = float(np.hypot(*span))
    else:
        extent = 0.0
    return max(extent, 0.1 * max(shape), 8.0)


def global_descriptor(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (1024,) zero-mean unit-norm 32x32 grey thumbnail: the dot product of two is the images'
    global correlation in [-1, 1] (near 1: the same scene and pose)."""
    grey = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2GRAY).astype(np.float32)
    t = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).ravel()
    t -= t.mean()
    return t / (np.linalg.norm(t) + 1e-6)


def rescale(image: np.ndarray, scale: float) -> np.ndarray:
    """(H, W, C) image resized by ``scale`` (area averaging when shrinking), at least 1 px a side."""
    h, w = image.shape[:2]
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interp)


def smooth_grey(image: np.ndarray) -> np.ndarray:
    """(H, W, 1) float32 grey image in [0, 1] of an (H, W, 3) uint8 RGB one, lightly blurred, for correlation."""
    grey = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    return cv2.GaussianBlur(grey, (0, 0), 1.5)[..., None]


def support_region(work: np.ndarray, pts: np.ndarray, grow: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (step 2) of the keypoints' convex hull grown by ``grow`` px, inside the (H, W, 3) image, and their
    zero-mean unit-norm grey values. Returns (M, 2) px and (M,)."""
    h, w = work.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    hull = cv2.convexHull(np.round(pts).astype(np.int32).reshape(-1, 1, 2))
    cv2.fillConvexPoly(mask, hull, 1)
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    ys, xs = np.nonzero(mask[::2, ::2])
    region = np.stack([xs * 2, ys * 2], axis=1).astype(np.float64)
    vals = _bilinear(smooth_grey(work), region[:, 0], region[:, 1])[:, 0]
    vals = vals - vals.mean()
    return region, vals / (np.linalg.norm(vals) + 1e-6)


def support_appearance(image: np.ndarray, keypoints: np.ndarray) -> SupportAppearance:
    """The region of a support: image (H, W, 3) uint8 RGB, keypoints (K, 2) px inside it."""
    image = np.asarray(image)
    keypoints = np.asarray(keypoints, np.float64).reshape(-1, 2)
    scale = OBJECT_SIZE / object_extent(keypoints, image.shape[:2])
    work = rescale(image, scale)
    pts = keypoints * scale
    region, grey = support_region(work, pts, max(1, int(REGION_GROW * OBJECT_SIZE)))
    centre = pts.mean(axis=0)
    return SupportAppearance(pts - centre, region - centre, grey)


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The least-squares similarity transform (rotation, uniform scale, translation; no reflection) taking the
    (N >= 2, 2) points ``src`` to ``dst`` (Umeyama): (A (2, 2), t (2,)) with dst ~= src @ A.T + t."""
    ms, md = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - ms, dst - md
    u, sv, vt = np.linalg.svd(d.T @ s)
    flip = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ flip @ vt
    scale = float(np.trace(np.diag(sv) @ flip) / max((s**2).sum(), 1e-12))
    a = scale * rot
    return a, md - ms @ a.T


def appearance_score(support: SupportAppearance, grey: np.ndarray, points: np.ndarray) -> float:
    """Normalised cross-correlation in [-1, 1] of the support's region, warped by the similarity transform from its
    keypoints to ``points`` ((K, 2) query px in the support's keypoint order, nan where not answered), with the
    query's ``smooth_grey``. NaN when fewer than 2 keypoints are answered or they coincide (no transform)."""
    points = np.asarray(points, np.float64)
    ok = np.isfinite(points).all(axis=1)
    if ok.sum() < 2 or np.ptp(points[ok], axis=0).max() < 1e-6 or np.ptp(support.keypoints[ok], axis=0).max() < 1e-6:
        return float("nan")
    a, t = similarity_fit(support.keypoints[ok], points[ok])
    pos = support.region @ a.T + t
    vals = _bilinear(grey, pos[:, 0], pos[:, 1])[:, 0]
    vals = vals - vals.mean()
    return float(vals @ support.grey / (np.linalg.norm(vals) + 1e-6))
