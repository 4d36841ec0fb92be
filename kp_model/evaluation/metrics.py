"""Keypoint accuracy, defined once for the promotion rule, the benchmarks and the tests.

- Reference box: the instance's annotated box when there is one, else its visible keypoints' extent grown by 10%
  of that extent on each side (``reference_box``). Errors are divided by the box's longer side.
- Masking: only the support's labelled (visible) keypoints are given to ``set_support``; a query keypoint counts
  when it is labelled in the support and in the query.
- Summary: PCK@alpha over all counted keypoints of all queries pooled, and their mean normalised error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from kp_model.predictor import Predictor

ALPHAS = (0.05, 0.1, 0.2)
BOX_MARGIN = 0.1  # keypoint boxes grow by this fraction of their extent on each side (about the COCO folders' boxes)

Box = tuple[float, float, float, float]  # (x, y, w, h) pixels


class Labelled(Protocol):
    """A labelled image: image (H, W, 3) uint8, keypoints (K, 2) px, visible (K,) bool, names (K), bbox or None."""

    image: np.ndarray
    keypoints: np.ndarray
    visible: np.ndarray
    names: list[str]
    bbox: Box | None


def reference_box(keypoints: np.ndarray, visible: np.ndarray, bbox: Sequence[float] | None = None) -> Box:
    """The box errors are normalised by: ``bbox`` (x, y, w, h px) when given, else the visible keypoints' extent
    grown by BOX_MARGIN on each side (at least 1 px wide and high)."""
    if bbox is not None:
        x, y, w, h = (float(v) for v in bbox)
        return x, y, w, h
    p = np.asarray(keypoints, np.float64)[np.asarray(visible, bool)]
    if len(p) == 0:
        raise ValueError("reference_box needs a bbox or at least one visible keypoint")
    x0, y0 = p.min(axis=0)
    x1, y1 = p.max(axis=0)
    w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    grow = 1 + 2 * BOX_MARGIN
    return float(x0 - BOX_MARGIN * w), float(y0 - BOX_MARGIN * h), float(w * grow), float(h * grow)


def normalised_errors(pred: np.ndarray, gt: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """(K,) Euclidean errors of (K, 2) px predictions against (K, 2) px ground truth, divided by the longer side
    of ``box`` (x, y, w, h px)."""
    size = max(float(box[2]), float(box[3]), 1e-6)
    return np.linalg.norm(np.asarray(pred, float) - np.asarray(gt, float), axis=1) / size


def pck(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, box: Sequence[float], alpha: float = 0.2) -> float:
    """Fraction of the ``visible`` keypoints ((K,) bool) whose error is <= alpha x the box's longer side; NaN when
    none is visible. pred, gt: (K, 2) px."""
    visible = np.asarray(visible, bool)
    if not visible.any():
        return float("nan")
    return float(np.mean(normalised_errors(pred, gt, box)[visible] <= alpha))


def summarise(errors: Sequence[np.ndarray]) -> dict[str, float]:
    """PCK@alpha for each of ALPHAS and the mean normalised error over all keypoints of ``errors`` (one array of
    counted keypoints' normalised errors per query) pooled; NaN when nothing counted."""
    pooled = np.concatenate([np.asarray(e, float).ravel() for e in errors]) if len(errors) else np.zeros(0)
    nan = float("nan")
    out: dict[str, float] = {f"pck@{a}": float(np.mean(pooled <= a)) if pooled.size else nan for a in ALPHAS}
    out["mean_error"] = float(np.mean(pooled)) if pooled.size else nan
    out["keypoints"] = int(pooled.size)
    out["queries"] = len(errors)
    return out


def support_errors(predictor: Predictor, support: Labelled, queries: Sequence[Labelled]) -> list[np.ndarray]:
    """Set ``support`` (its visible keypoints only) on ``predictor`` and predict each query; returns per query the
    normalised errors of the keypoints labelled in both, against the query's reference box.

    Raises:
        SupportError: the support has no visible keypoint or its points are unusable.
    """
    vis = np.asarray(support.visible, bool)
    names = [n for n, v in zip(support.names, vis, strict=True) if v]
    predictor.set_support(support.image, np.asarray(support.keypoints, np.float64)[vis], names)
    out = []
    for q in queries:
        [pred] = predictor.predict([q.image])
        counted = np.asarray(q.visible, bool)[vis]
        if not counted.any():
            out.append(np.zeros(0))
            continue
        box = reference_box(q.keypoints, q.visible, q.bbox)
        out.append(normalised_errors(pred.points, np.asarray(q.keypoints, np.float64)[vis], box)[counted])
    return out
