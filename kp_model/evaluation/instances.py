"""Scoring several predicted individuals against several annotated ones.

- OKS (object keypoint similarity) of a prediction with an annotated instance: the mean over the keypoints counted
  (labelled in the support and in the instance) of exp(-d^2 / (2 area kappa^2)), area = the instance's reference box
  (kp_model.evaluation.metrics.reference_box) w x h; one kappa for every keypoint (category-agnostic: COCO's
  per-keypoint sigmas exist for people only).
- Matching: predictions and instances are paired one-to-one by Hungarian assignment maximising OKS.
- Precision / recall: a pair with OKS >= ``OKS_HIT`` is a true positive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from kp_model.evaluation.assignment import assign
from kp_model.evaluation.metrics import normalised_errors

KAPPA = 0.133  # OKS falloff: a keypoint at kappa x sqrt(area) scores exp(-1/2); COCO's 2 sigma, mean over its 17 keypoints
OKS_HIT = 0.5


@dataclass(frozen=True)
class Truth:
    """One annotated individual: keypoints (K, 2) px, counted (K,) bool, box (x, y, w, h) px."""

    keypoints: np.ndarray
    counted: np.ndarray
    box: tuple[float, float, float, float]


def oks(pred: np.ndarray, truth: Truth, kappa: float = KAPPA) -> float:
    """OKS in [0, 1] of (K, 2) px predicted keypoints against ``truth`` (0 when nothing is counted or a counted
    prediction is not finite)."""
    counted = np.asarray(truth.counted, bool)
    if not counted.any():
        return 0.0
    p = np.asarray(pred, np.float64)[counted]
    if not np.isfinite(p).all():
        return 0.0
    d2 = ((p - np.asarray(truth.keypoints, np.float64)[counted]) ** 2).sum(axis=1)
    area = max(float(truth.box[2]) * float(truth.box[3]), 1.0)
    return float(np.mean(np.exp(-d2 / (2 * area * kappa**2))))


@dataclass
class ImageScore:
    """One query image: predicted and true counts, OKS of each matched pair, and the normalised errors of the
    matched pairs' counted keypoints (for PCK)."""

    predicted: int
    true: int
    pair_oks: list[float] = field(default_factory=list)
    errors: list[np.ndarray] = field(default_factory=list)

    @property
    def hits(self) -> int:
        return sum(1 for o in self.pair_oks if o >= OKS_HIT)


def score_image(preds: Sequence[np.ndarray], truths: Sequence[Truth]) -> ImageScore:
    """Match the (K, 2) px predictions ``preds`` to ``truths`` by Hungarian assignment on OKS and score them."""
    out = ImageScore(len(preds), len(truths))
    if not preds or not truths:
        return out
    similarity = np.array([[oks(p, t) for t in truths] for p in preds])
    for i, j in assign(-similarity):
        out.pair_oks.append(float(similarity[i, j]))
        t = truths[j]
        out.errors.append(normalised_errors(np.asarray(preds[i])[t.counted], np.asarray(t.keypoints)[t.counted], t.box))
    return out


def summarise_instances(images: Sequence[ImageScore], alpha: float = 0.2) -> dict[str, float]:
    """Over query images: mean PCK@alpha of matched instances (each instance's PCK, averaged), the same per annotated
    instance (an unmatched one scores 0: what a one-instance answer misses), count accuracy, precision and recall at
    OKS >= OKS_HIT, mean OKS of matched pairs; NaN where undefined."""
    nan = float("nan")
    per_instance = [float(np.mean(e <= alpha)) for s in images for e in s.errors if len(e)]
    predicted = sum(s.predicted for s in images)
    true = sum(s.true for s in images)
    hits = sum(s.hits for s in images)
    pairs = [o for s in images for o in s.pair_oks]
    return {
        f"pck@{alpha}": float(np.mean(per_instance)) if per_instance else nan,
        f"pck@{alpha}_per_true": float(np.sum(per_instance)) / true if true else nan,
        "count_accuracy": float(np.mean([s.predicted == s.true for s in images])) if images else nan,
        "precision": hits / predicted if predicted else nan,
        "recall": hits / true if true else nan,
        "mean_oks": float(np.mean(pairs)) if pairs else nan,
        "images": len(images),
        "true_instances": true,
        "predicted_instances": predicted,
    }
