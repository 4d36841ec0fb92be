"""The predictor interface every engine implements, SAM-style: set the support once (its features cached), then
predict many query images. Numpy in and out, pixels (x right, y down).

predictor = build_predictor(PredictorConfig())       # kp_model.build
predictor.set_support(image, keypoints, names)        # (H, W, 3) uint8, (K, 2) px, K names
[pred] = predictor.predict([query])                    # pred.points (K, 2) px, pred.scores (K,) in [0, 1]
[preds] = predict_instances(predictor, [query])        # every individual, best first

This module imports no engine: engines import it, and ``kp_model.build`` imports the engines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


class SupportNotSetError(RuntimeError):
    """predict() was called before set_support()."""


class SupportError(ValueError):
    """The support image or keypoints are unusable (shape, NaN, outside the image, duplicate names)."""


@dataclass
class KeypointPrediction:
    """Keypoints found in one query image: names (K), points (K, 2) px, scores (K,) in [0, 1]."""

    names: list[str]
    points: np.ndarray
    scores: np.ndarray
    seconds: float = 0.0
    texts: list[str] | None = None  # semantic text per keypoint (kptllm engine)

    @property
    def score(self) -> float:
        """Image-level score: mean keypoint score."""
        return float(np.mean(self.scores)) if len(self.scores) else 0.0


@runtime_checkable
class Predictor(Protocol):
    """What the backend, the fine-tuning run and the benchmarks need of an engine."""

    @property
    def is_support_set(self) -> bool:
        """True once set_support() succeeded."""
        ...

    @property
    def support_names(self) -> list[str]:
        """The K keypoint names of the support, in the order predictions use."""
        ...

    def set_support(self, image: np.ndarray, keypoints: np.ndarray, names: list[str]) -> None:
        """Cache the support: image (H, W, 3) uint8 RGB, keypoints (K, 2) px inside it, K distinct names.

        Raises SupportError on bad input (see ``validate_support``)."""
        ...

    def predict(self, images: list[np.ndarray]) -> list[KeypointPrediction]:
        """The support's keypoints in each query image ((H, W, 3) uint8 RGB), one prediction per image.

        Raises SupportNotSetError before set_support()."""
        ...


@runtime_checkable
class InstancePredictor(Predictor, Protocol):
    """An engine that finds several individuals per image (the weight-free engine and few-shot over it)."""

    def predict_instances(self, images: list[np.ndarray]) -> list[list[KeypointPrediction]]:
        """Every individual found in each (H, W, 3) uint8 RGB image, best first (count estimated per image)."""
        ...


def predict_instances(predictor: Predictor, images: list[np.ndarray]) -> list[list[KeypointPrediction]]:
    """Every individual in each image, best first: the engine's own search when it has one (``InstancePredictor``),
    else its one prediction per image (the learned model finds one individual)."""
    if isinstance(predictor, InstancePredictor):
        return predictor.predict_instances(images)
    return [[pred] for pred in predictor.predict(images)]


def validate_support(image: np.ndarray, keypoints: np.ndarray, names: list[str]) -> np.ndarray:
    """Check a support and return its keypoints as (K, 2) float64 px.

    Args:
        image: (H, W, 3) uint8 RGB.
        keypoints: (K, 2) pixels (x right, y down), finite and inside the image, K >= 1.
        names: K distinct keypoint names.
    Raises:
        SupportError: on any of the above not holding.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise SupportError(f"support image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    kps = np.asarray(keypoints, np.float64)
    if kps.ndim != 2 or kps.shape[1] != 2 or len(kps) == 0:
        raise SupportError(f"support keypoints must be (K, 2) with K >= 1, got shape {kps.shape}")
    if len(names) != len(kps) or len(set(names)) != len(names):
        raise SupportError(f"need one distinct name per keypoint: {len(kps)} keypoints, names {names}")
    h, w = image.shape[:2]
    inside = np.isfinite(kps).all(axis=1) & (kps[:, 0] >= 0) & (kps[:, 0] <= w) & (kps[:, 1] >= 0) & (kps[:, 1] <= h)
    if not inside.all():
        bad = [names[i] for i in np.flatnonzero(~inside)]
        raise SupportError(f"support keypoints {bad} are not finite points inside the {w}x{h} image")
    return kps
