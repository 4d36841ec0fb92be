"""How the few-shot predictor (kp_model.fewshot) combines its supports' answers: per-keypoint fusion of several
answers, the blend of near answers, how much other answers agree with a keypoint, and scores lowered with a floor.

Units: points in pixels of the query image, (K, 2) in one keypoint order (``reorder``); scores in [0, 1].
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from kp_model.predictor import KeypointPrediction

FUSIONS = ("agree", "best")  # FewShotConfig.fusion: see ``fuse``


class FuseSettings(Protocol):
    """What ``fuse`` reads of a kp_model.fewshot.FewShotConfig (named here, so that this module does not import it)."""

    @property
    def agree_radius(self) -> float: ...

    @property
    def similarity_temperature(self) -> float: ...

    @property
    def fusion(self) -> str: ...


def fuse(answers: list[tuple[KeypointPrediction, float]], names: list[str], cfg: FuseSettings) -> tuple[np.ndarray, np.ndarray]:
    """Per keypoint, the answer most (weighted) supports agree on, averaged with those within ``agree_radius`` x the
    object's size. A keypoint's score is its agreeing answers' mean score x their share of the weight.

    Args:
        answers: (prediction, global similarity of its support) per shortlisted support.
        names: the keypoints to answer, in order.
    Returns:
        points (K, 2) px (nan where no answer has the keypoint) and scores (K,) in [0, 1].
    """
    best_sim = max(sim for _, sim in answers)
    sizes = []
    for pred, _ in answers:
        span = np.nanmax(pred.points, axis=0) - np.nanmin(pred.points, axis=0) if len(pred.points) > 1 else np.zeros(2)
        sizes.append(float(np.hypot(*span)))
    radius = max(cfg.agree_radius * float(np.median(sizes)), 2.0)
    points = np.full((len(names), 2), np.nan)
    scores = np.zeros(len(names))
    sim_w = [np.exp((sim - best_sim) / cfg.similarity_temperature) for _, sim in answers]
    chosen = int(np.argmax([w * pred.score for (pred, _), w in zip(answers, sim_w, strict=True)]))
    for k, name in enumerate(names):
        cands = [
            (pred.points[pred.names.index(name)], float(pred.scores[pred.names.index(name)]), sim)
            for pred, sim in answers
            if name in pred.names
        ]
        if not cands:
            continue
        p = np.array([c[0] for c in cands], np.float64)
        s = np.array([c[1] for c in cands])
        w = np.maximum(s, 1e-3) * np.exp((np.array([c[2] for c in cands]) - best_sim) / cfg.similarity_temperature)
        close = np.linalg.norm(p[:, None] - p[None], axis=-1) <= radius  # (n, n) agreement
        owners = [j for j, (pred, _) in enumerate(answers) if name in pred.names]
        if cfg.fusion == "best" and chosen in owners:
            best = owners.index(chosen)
            points[k] = p[best]
            scores[k] = float(s[best] * w[close[best]].sum() / w.sum())
            continue
        best = int(np.argmax(close.astype(np.float64) @ w))
        members = close[best]
        points[k] = (w[members, None] * p[members]).sum(axis=0) / w[members].sum()
        scores[k] = float(s[members].mean() * w[members].sum() / w.sum())
    return points, scores


def blend(points: np.ndarray, others: list[np.ndarray], radius: float) -> np.ndarray:
    """Each keypoint of ``points`` ((K, 2) px) averaged with those of ``others`` (answers (K, 2) px, same order) that
    lie within ``radius`` px of it; a keypoint with no answer (nan) stays so."""
    out = np.array(points, np.float64)
    for k, p in enumerate(points):
        if not np.isfinite(p).all():
            continue
        near = [o[k] for o in others if np.isfinite(o[k]).all() and np.linalg.norm(o[k] - p) <= radius]
        out[k] = np.mean([p, *near], axis=0)
    return out


def pose_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance (px) between two (K, 2) px poses over the keypoints both have (finite); 0 when none."""
    d = np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=1)
    d = d[np.isfinite(d)]
    return float(d.mean()) if len(d) else 0.0


def reorder(pred: KeypointPrediction, names: list[str]) -> KeypointPrediction:
    """``pred`` with its keypoints (and texts) in the order of ``names``; a name it lacks gets score 0 at (nan, nan)
    and an empty text."""
    points = np.full((len(names), 2), np.nan)
    scores = np.zeros(len(names))
    texts = [""] * len(names) if pred.texts is not None else None
    for k, name in enumerate(names):
        if name in pred.names:
            i = pred.names.index(name)
            points[k], scores[k] = pred.points[i], pred.scores[i]
            if texts is not None:
                texts[k] = pred.texts[i]
    return KeypointPrediction(names, points, scores, pred.seconds, texts)


def agreement(points: np.ndarray, others: list[np.ndarray], radius: float) -> np.ndarray:
    """(K,) how much ``others`` (answers (K, 2) px, same order) agree with each keypoint of ``points`` ((K, 2) px):
    the mean over them of exp(-(d / radius)^2), d the distance in px (an answer without the keypoint counts 0); 1
    when there are no others."""
    if not others:
        return np.ones(len(points))
    d = np.linalg.norm(np.asarray(others, np.float64) - np.asarray(points, np.float64)[None], axis=-1)  # (n, K)
    near = np.exp(-((d / radius) ** 2))
    return np.where(np.isfinite(d), near, 0.0).mean(axis=0)


def lower(scores: np.ndarray, factor: np.ndarray | float, floor: float) -> np.ndarray:
    """``scores`` x ``factor`` (in [0, 1]), but a score is lowered to ``floor`` at most: one already below it stays
    as it is, so a keypoint shown by the default score threshold is never hidden by the lowering."""
    scores = np.asarray(scores, np.float64)
    return np.maximum(scores * factor, np.minimum(scores, floor))
