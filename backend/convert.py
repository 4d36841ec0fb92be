"""Label Studio JSON <-> arrays. Pure functions, no I/O.

Label Studio stores keypoints in percent of the image (x right, y down, 0..100); the model works in
pixels. Every function here states which one it takes.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field

import numpy as np

from backend.label_config import KeypointControl


class AnnotationFormatError(ValueError):
    """An annotation's result is not a list of Label Studio regions as expected."""


@dataclass
class LabelledPoints:
    """Keypoints read from one annotation for one control.

    names: K labels; xy_percent: (K, 2) in percent of the image; skipped: human-readable reasons for
    regions that were left out (other controls' regions are not reported).
    """

    names: list[str]
    xy_percent: np.ndarray
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)


def percent_to_pixels(xy_percent: np.ndarray, width: int, height: int) -> np.ndarray:
    """(K, 2) percent -> (K, 2) pixels of a width x height image."""
    return np.asarray(xy_percent, np.float64).reshape(-1, 2) * np.array([width, height]) / 100.0


def pixels_to_percent(xy_pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """(K, 2) pixels -> (K, 2) percent of a width x height image (non-finite input stays non-finite)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(xy_pixels, np.float64).reshape(-1, 2) * 100.0 / np.array([width, height])


def regions_to_points(result: object, control: KeypointControl) -> LabelledPoints:
    """The keypoints of ``control`` in an annotation's ``result`` list.

    A region is kept when it is a ``keypointlabels`` region of this control with finite x, y inside
    [0, 100] and one label the control knows; the first region of each label wins (a support is one
    instance). Anything else of this control is listed in ``skipped`` with the reason.

    Raises:
        AnnotationFormatError: ``result`` is not a list of dicts.
    """
    if not isinstance(result, list):
        raise AnnotationFormatError(f"annotation result must be a list of regions, got {type(result).__name__}")
    names: list[str] = []
    points: list[tuple[float, float]] = []
    skipped: list[str] = []
    for i, region in enumerate(result):
        if not isinstance(region, dict):
            raise AnnotationFormatError(f"annotation result[{i}] must be an object, got {type(region).__name__}")
        if region.get("from_name") != control.from_name or region.get("type", "").lower() != "keypointlabels":
            continue
        value = region.get("value")
        if not isinstance(value, dict):
            skipped.append(f"region {region.get('id', i)}: no value object")
            continue
        labels = value.get("keypointlabels") or []
        x, y = value.get("x"), value.get("y")
        if not isinstance(labels, list) or len(labels) != 1:
            skipped.append(f"region {region.get('id', i)}: needs exactly one label, has {labels!r}")
        elif labels[0] not in control.labels:
            skipped.append(f"region {region.get('id', i)}: label {labels[0]!r} is not in the config {list(control.labels)}")
        elif not _is_coordinate(x) or not _is_coordinate(y):
            skipped.append(f"region {region.get('id', i)}: x={x!r}, y={y!r} is not a point inside the image (percent 0..100)")
        elif labels[0] in names:
            skipped.append(f"region {region.get('id', i)}: second point labelled {labels[0]!r}; the first one is used")
        else:
            names.append(labels[0])
            points.append((float(x), float(y)))
    return LabelledPoints(names, np.asarray(points, np.float64).reshape(-1, 2), skipped)


def points_to_regions(
    names: list[str],
    xy_pixels: np.ndarray,
    scores: np.ndarray,
    width: int,
    height: int,
    control: KeypointControl,
    min_score: float = 0.0,
    point_size: float = 0.5,
) -> list[dict]:
    """Prediction regions for one image.

    Args:
        names: K labels; xy_pixels: (K, 2) pixels; scores: (K,) in [0, 1]; width, height: image pixels.
        min_score: points scoring below it are left out. point_size: LS keypoint width (percent).
    Returns:
        ``keypointlabels`` regions with x, y in percent, clipped into the image.
    """
    xy = np.clip(pixels_to_percent(xy_pixels, width, height), 0.0, 100.0)
    regions = []
    for name, (x, y), score in zip(names, xy, np.asarray(scores, float), strict=True):
        if not np.isfinite(score) or score < min_score or not (np.isfinite(x) and np.isfinite(y)):
            continue
        regions.append(
            {
                "id": uuid.uuid4().hex[:10],
                "from_name": control.from_name,
                "to_name": control.to_name,
                "type": "keypointlabels",
                "original_width": int(width),
                "original_height": int(height),
                "image_rotation": 0,
                "score": round(float(score), 4),
                "value": {"x": float(x), "y": float(y), "width": point_size, "keypointlabels": [name]},
            }
        )
    return regions


def _is_coordinate(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0.0 <= v <= 100.0
