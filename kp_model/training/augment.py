"""Training augmentation on letterboxed images: random scale/rotation/shift, horizontal flip with the
left/right labels swapped, and colour jitter. Points are pixels of the square image."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from kp_model.config import JsonConfig
from kp_model.kptllm.vision import IMAGENET_MEAN
from kp_model.mirror import mirror_permutation


@dataclass(frozen=True)
class AugmentConfig(JsonConfig):
    scale: float = 0.2  # zoom factor drawn from [1 - scale, 1 + scale]
    rotation: float = 20.0  # degrees, drawn from [-rotation, rotation]
    shift: float = 0.1  # translation, fraction of the image side
    flip: float = 0.5  # probability of a horizontal flip (left/right names swapped)
    colour: float = 0.2  # brightness/contrast jitter amplitude

    def __post_init__(self) -> None:
        if not 0 <= self.scale < 1:
            raise ValueError(f"scale must be in [0, 1), got {self.scale}")
        if not 0 <= self.flip <= 1:
            raise ValueError(f"flip must be a probability, got {self.flip}")
        for name in ("rotation", "shift", "colour"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def augment(
    image: np.ndarray, points: np.ndarray, visible: np.ndarray, names: list[str], cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augmented copy of a square (S, S, 3) uint8 image and its (K, 2) px points / (K,) visibility.

    Keypoint i keeps its name: after a flip, names[i] is found where its left/right partner was.
    Points pushed outside the image become invisible.
    """
    s = image.shape[0]
    points = points.astype(np.float64).copy()
    visible = visible.astype(bool).copy()
    if cfg.flip and rng.random() < cfg.flip:
        perm = mirror_permutation(names)
        if perm is not None:
            image = image[:, ::-1]
            points = points[perm]
            visible = visible[perm]
            points[:, 0] = s - points[:, 0]
    angle = rng.uniform(-cfg.rotation, cfg.rotation)
    zoom = rng.uniform(1 - cfg.scale, 1 + cfg.scale)
    m = cv2.getRotationMatrix2D((s / 2, s / 2), angle, zoom)
    m[:, 2] += rng.uniform(-cfg.shift, cfg.shift, 2) * s
    border = tuple(int(v * 255) for v in IMAGENET_MEAN)
    image = cv2.warpAffine(np.ascontiguousarray(image), m, (s, s), flags=cv2.INTER_LINEAR, borderValue=border)
    points = points @ m[:, :2].T + m[:, 2]
    visible &= (points >= 0).all(axis=1) & (points < s).all(axis=1)
    if cfg.colour:
        gain = 1 + rng.uniform(-cfg.colour, cfg.colour)
        bias = rng.uniform(-cfg.colour, cfg.colour) * 128
        image = np.clip(image.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)
    return image, points, visible
