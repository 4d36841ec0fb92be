"""Interactive correction: keypoints the annotator just placed are hard constraints. They are returned exactly where
they were placed. The other keypoints are re-solved given them when the placed points show the whole pose was wrong:
from two placed points on, the similarity transform (rotation, scale, translation) taking their predicted positions
onto the placed ones is applied to the rest when it turns the prediction by more than ``MAX_KEEP_ROTATION_DEG`` (head
and tail swapped, the animal facing the other way). Otherwise each placed point moves only itself: measured with
``kpassist bench fewshot`` (tuning half: the mouse video and every other folder; checked on the other half), moving the
rest by any transform made them worse on average, because the keypoints predicted worst are usually wrong alone.

Engine-agnostic: it works on any KeypointPrediction (pixels)."""

from __future__ import annotations

import numpy as np

from kp_model.predictor import KeypointPrediction

MAX_KEEP_ROTATION_DEG = 90.0  # a fitted turn beyond this means the pose was reversed: the rest of it is turned too


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
    the others turned with them when the pose was reversed (see the module). Placed names the prediction lacks are
    added. Returns a new prediction."""
    names = list(pred.names) + [n for n in placed if n not in pred.names]
    points = np.vstack([pred.points, np.full((len(names) - len(pred.names), 2), np.nan)]) if placed else pred.points.copy()
    scores = np.concatenate([pred.scores, np.ones(len(names) - len(pred.names))])
    anchors = [n for n in placed if n in pred.names and np.isfinite(pred.points[pred.names.index(n)]).all()]
    if len(anchors) >= 2:
        src = np.array([pred.points[pred.names.index(n)] for n in anchors])
        dst = np.array([placed[n] for n in anchors], float)
        m = similarity(src, dst)
        if abs(np.degrees(np.arctan2(m[1, 0], m[0, 0]))) > MAX_KEEP_ROTATION_DEG:
            points = points @ m[:, :2].T + m[:, 2]
    for n, xy in placed.items():
        i = names.index(n)
        points[i] = xy
        scores[i] = 1.0
    return KeypointPrediction(names, points, scores, pred.seconds, pred.texts)
