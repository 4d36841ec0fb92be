"""Keypoint accuracy metrics (PCK normalised by the instance's bounding box)."""

from __future__ import annotations

import numpy as np


def normalised_errors(pred: np.ndarray, gt: np.ndarray, bbox: tuple[float, float, float, float]) -> np.ndarray:
    """Euclidean errors divided by the longer side of the bbox.

    Args:
        pred, gt: (K, 2) pixel coordinates.
        bbox: (x, y, w, h) pixels of the ground-truth instance.
    Returns:
        (K,) normalised errors.
    """
    size = max(float(bbox[2]), float(bbox[3]), 1e-6)
    return np.linalg.norm(np.asarray(pred, float) - np.asarray(gt, float), axis=1) / size


def pck(
    pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, bbox: tuple[float, float, float, float], alpha: float = 0.2
) -> float:
    """Fraction of the visible keypoints whose error is <= alpha x max(bbox w, h). NaN when none is visible.

    Args:
        pred, gt: (K, 2) pixels; visible: (K,) bool mask of the keypoints that count.
    """
    visible = np.asarray(visible, bool)
    if not visible.any():
        return float("nan")
    err = normalised_errors(pred, gt, bbox)[visible]
    return float(np.mean(err <= alpha))
