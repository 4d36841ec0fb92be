"""Does an answer lead back to its support? The cycle check of a few-shot answer: the query, with the answer's
points as its keypoints, becomes a support of the same engine, and that engine looks for them in the support image
the answer came from, searching as it always does (every rotation and scale). Right points lead back to the
support's own keypoints; wrong ones (a flip, another body part, the background) lead elsewhere, so the distance back
ranks the answer's errors (forward-backward consistency, as in optical flow). Aligning the query onto the support
first (to search one scale) was measured and dropped: it led wrong answers back too (AUROC at k = 2 on the mouse
video's second half of frames 0.64, against 0.84 unaligned).

errors = cycle_errors(engine, query, points, names, support_image, support_keypoints, support_names, size)
scores = lower(scores, cycle_factor(errors, sigma=0.1, weight=0.8), floor)   # kp_model.fusion.lower

Units: images (H, W, 3) uint8 RGB; points in pixels of their own image; errors in units of ``size`` (px, the
support's size). The support image is kept JPEG-encoded (``encode_image``: 70 KB for a 640x480 frame of the mouse
video, 13x smaller than its pixels).
"""

from __future__ import annotations

import copy

import cv2
import numpy as np

from kp_model.predictor import Predictor

JPEG_QUALITY = 95  # the kept support image: the cycle check reads it through the engine's descriptors


def encode_image(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> its JPEG bytes as a (N,) uint8 array (a bounded cache counts it as an array)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f"could not JPEG-encode an image of shape {np.asarray(image).shape}")
    return buf.reshape(-1)


def decode_image(buf: np.ndarray) -> np.ndarray:
    """``encode_image``'s bytes -> (H, W, 3) uint8 RGB."""
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def cycle_errors(
    engine: Predictor,
    query: np.ndarray,
    points: np.ndarray,
    names: list[str],
    support_image: np.ndarray,
    support_keypoints: np.ndarray,
    support_names: list[str],
    size: float,
) -> np.ndarray:
    """(K,) per keypoint of ``names``: the distance (in units of ``size`` px) from the support's keypoint to where
    ``engine`` finds it in ``support_image`` when the query (H, W, 3) with ``points`` ((K, 2) px, nan where not
    answered) is its support; nan for a keypoint not answered or not in the support. Needs 2 answered keypoints
    (else all nan). ``engine`` is left as it was: a shallow copy is given the query as its support (every engine here
    replaces its support's attributes in ``set_support``)."""
    points = np.asarray(points, np.float64)
    out = np.full(len(names), np.nan)
    ok = np.isfinite(points).all(axis=1)
    if ok.sum() < 2:
        return out
    h, w = np.asarray(query).shape[:2]
    answered = [n for n, o in zip(names, ok, strict=True) if o]
    reverse = copy.copy(engine)
    reverse.set_support(query, np.clip(points[ok], 0, [w - 1, h - 1]), answered)
    [back] = reverse.predict([support_image])
    support_keypoints = np.asarray(support_keypoints, np.float64)
    for k, name in enumerate(names):
        if ok[k] and name in support_names and name in back.names:
            found = back.points[back.names.index(name)]
            out[k] = float(np.linalg.norm(found - support_keypoints[support_names.index(name)])) / size
    return out


def cycle_factor(errors: np.ndarray, sigma: float, weight: float) -> np.ndarray:
    """(K,) score factors in [1 - weight, 1]: 1 - weight + weight x exp(-(error / sigma)^2); 1 where the error is
    nan (not checked)."""
    errors = np.asarray(errors, np.float64)
    near = np.exp(-((np.nan_to_num(errors, nan=0.0) / sigma) ** 2))
    return np.where(np.isfinite(errors), 1 - weight + weight * near, 1.0)
