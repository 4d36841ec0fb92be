"""Training data: one annotated instance per ``TrainSample``, from COCO keypoint folders or converted from any
annotation source (the backend converts Label Studio annotations)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kp_model.coco import load_coco_keypoints
from kp_model.images import decode_image


class TrainingError(ValueError):
    """The training data cannot make a single support/query pair."""


@dataclass
class TrainSample:
    """One annotated instance: image (H, W, 3) uint8 RGB, keypoints (K, 2) px, visible (K,) bool, K names."""

    image: np.ndarray
    keypoints: np.ndarray
    visible: np.ndarray
    names: list[str]
    category: str = "object"
    key: str = ""  # where it came from (file name, task id), for logs and records
    bbox: tuple[float, float, float, float] | None = None  # annotated (x, y, w, h) px; None: from the keypoints

    def __post_init__(self) -> None:
        k = len(self.names)
        if self.keypoints.shape != (k, 2) or self.visible.shape != (k,):
            raise ValueError(
                f"sample {self.key!r}: keypoints {self.keypoints.shape} / visible {self.visible.shape} do not match {k} names"
            )


def samples_from_coco(folder: str | Path, limit: int | None = None, indices: list[int] | None = None) -> list[TrainSample]:
    """One TrainSample per annotated instance of a COCO keypoint folder (``indices`` picks images by order)."""
    samples = load_coco_keypoints(folder)
    if indices is not None:
        samples = [samples[i] for i in indices]
    out = []
    for s in samples[:limit]:
        image = decode_image(s.image_path.read_bytes())
        for inst in s.instances:
            kps = inst.keypoints
            out.append(
                TrainSample(
                    image, kps[:, :2].copy(), kps[:, 2] > 0, list(s.keypoint_names), s.category, s.image_path.name, inst.bbox
                )
            )
    return out
