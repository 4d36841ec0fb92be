"""Interactive correction: keypoints the annotator just placed are hard constraints. They are returned exactly where
they were placed, and from two placed points on, the other keypoints are re-solved given them: the similarity
transform (rotation, scale, translation) that takes the predicted positions of the placed keypoints onto the placed
ones is applied to the rest of the prediction, so a prediction that found the animal in the wrong pose (head and
tail swapped, shifted, turned) is corrected as a whole by two clicks. One placed point moves only itself: measured
on the mouse video (``kpassist bench fewshot``), shifting the others with it made them worse, since the keypoint
predicted worst is usually wrong alone.

Engine-agnostic: it works on any KeypointPrediction (pixels)."""

from __future__ import annotations

import numpy as np

from kp_model.predictor import KeypointPrediction


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The (2, 3) least-squares similarity transform taking points ``src`` (N, 2) onto ``dst`` (N, 2) (Umeyama, no
    reflection); a translation only when N == 1 or the source points coincide."""
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    ms, md = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - ms, dst - md
    var = float((a**2).sum())
    if len(src) < 2 or var < 1e-9:
        return np.array([[1.0, 0.0, md[0] - ms[0]], [0.0, 1.0, md[1] - ms[1]]])
    cov = b.T @ a / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1, 1] = -1.0
    rot = u @ d @ vt
    scale = float(np.trace(np.diag(s) @ d)) / (var / len(src))
    t = md - scale * rot @ ms
    return np.hstack([scale * rot, t[:, None]])


def constrain(pred: KeypointPrediction, placed: dict[str, tuple[float, float]]) -> KeypointPrediction:
    """``pred`` re-solved given the ``placed`` keypoints (name -> (x, y) px): placed ones exactly there with score 1,
    the others moved by the similarity transform fitted on the placed ones. Placed names the prediction lacks are
    added. Returns a new prediction."""
    names = list(pred.names) + [n for n in placed if n not in pred.names]
    points = np.vstack([pred.points, np.full((len(names) - len(pred.names), 2), np.nan)]) if placed else pred.points.copy()
    scores = np.concatenate([pred.scores, np.ones(len(names) - len(pred.names))])
    anchors = [n for n in placed if n in pred.names and np.isfinite(pred.points[pred.names.index(n)]).all()]
    if len(anchors) >= 2:  # one point says where that keypoint is, not where the others are: they stay
        src = np.array([pred.points[pred.names.index(n)] for n in anchors])
        dst = np.array([placed[n] for n in anchors], float)
        m = similarity(src, dst)
        points = points @ m[:, :2].T + m[:, 2]
    for n, xy in placed.items():
        i = names.index(n)
        points[i] = xy
        scores[i] = 1.0
    return KeypointPrediction(names, points, scores, pred.seconds, pred.texts)
