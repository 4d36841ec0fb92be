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
    box_label: str = ""  # the label of the individual's box (RectangleLabels), "" without boxes
    repeated: list[str] = field(default_factory=list)  # the ``skipped`` reasons that are a label placed twice

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
    repeated: list[str] = []
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
            repeated.append(f"region {region.get('id', i)}: second point labelled {labels[0]!r}; the first one is used")
            skipped.append(repeated[-1])
        else:
            names.append(labels[0])
            points.append((float(x), float(y)))
    return LabelledPoints(names, np.asarray(points, np.float64).reshape(-1, 2), skipped, repeated=repeated)


def regions_to_instances(result: object, control: KeypointControl) -> tuple[list[LabelledPoints], list[str]]:
    """Every individual of ``control`` in an annotation's ``result`` list, and what was left out (reasons).

    With a box control (``control.box_from_name``), each ``rectanglelabels`` box of it holding keypoints of
    ``control`` linked by ``parentID`` is one individual, in the order of the boxes; boxes without keypoints are
    ignored; a keypoint whose ``parentID`` names no box of this annotation is left out (reported). Keypoints with no
    ``parentID`` form one individual, as in a keypoint-only config. Within one individual a label must not repeat:
    an individual that repeats one is left out whole (reported, with what to change), never half-read.

    Raises:
        AnnotationFormatError: ``result`` is not a list of dicts.
    """
    if not isinstance(result, list):
        raise AnnotationFormatError(f"annotation result must be a list of regions, got {type(result).__name__}")
    for i, region in enumerate(result):
        if not isinstance(region, dict):
            raise AnnotationFormatError(f"annotation result[{i}] must be an object, got {type(region).__name__}")
    boxes: dict[str, str] = {}  # box region id -> its label
    if control.box_from_name:
        for region in result:
            if region.get("from_name") == control.box_from_name and str(region.get("type", "")).lower() == "rectanglelabels":
                labels = (region.get("value") or {}).get("rectanglelabels") if isinstance(region.get("value"), dict) else None
                boxes[str(region.get("id"))] = labels[0] if isinstance(labels, list) and labels else ""
    groups: dict[str | None, list[dict]] = {}
    skipped: list[str] = []
    for region in result:
        if region.get("from_name") != control.from_name:
            continue
        parent = region.get("parentID")
        if parent is not None and str(parent) not in boxes:
            skipped.append(f"region {region.get('id')}: parentID {parent!r} names no box of this annotation: ignored")
            continue
        groups.setdefault(None if parent is None else str(parent), []).append(region)
    out = []
    for parent, regions in sorted(groups.items(), key=lambda kv: kv[0] is not None):
        points = regions_to_points(regions, control)
        repeated = points.repeated
        skipped.extend(r for r in points.skipped if r not in repeated)
        if repeated:
            where = f"box {parent}" if parent is not None else "the annotation"
            hint = (
                "give each individual its own box with its keypoints inside it (parentID)"
                if control.box_from_name
                else f"add a <RectangleLabels toName={control.to_name!r}> to the config and one box per individual"
            )
            skipped.append(f"{where} repeats a keypoint label ({repeated[0]}): left out; {hint}")
            continue
        if len(points):
            points.box_label = boxes.get(parent, "") if parent is not None else ""
            out.append(points)
    return out, skipped


def instance_regions(
    names: list[str],
    xy_pixels: np.ndarray,
    scores: np.ndarray,
    width: int,
    height: int,
    control: KeypointControl,
    box_label: str,
    min_score: float = 0.0,
    margin: float = 0.1,
) -> list[dict]:
    """One individual as Label Studio regions: a ``rectanglelabels`` box of ``control.box_from_name`` around its
    keypoints (their extent grown by ``margin`` of it on each side, clipped to the image) and the keypoints
    (``points_to_regions``) linked to it by ``parentID``. The box's score is the keypoints' mean score.

    Args:
        names: K labels; xy_pixels: (K, 2) pixels; scores: (K,) in [0, 1]; width, height: image pixels.
    Returns:
        [box region, keypoint regions...]; [] when no keypoint reaches ``min_score``.
    """
    points = points_to_regions(names, xy_pixels, scores, width, height, control, min_score)
    if not points:
        return []
    xy = np.array([[r["value"]["x"], r["value"]["y"]] for r in points])
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    grow = margin * np.maximum(hi - lo, 1.0)
    lo, hi = np.clip(lo - grow, 0.0, 100.0), np.clip(hi + grow, 0.0, 100.0)
    box_id = uuid.uuid4().hex[:10]
    box = {
        "id": box_id,
        "from_name": control.box_from_name,
        "to_name": control.to_name,
        "type": "rectanglelabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "score": round(float(np.mean([r["score"] for r in points])), 4),
        "value": {
            "x": float(lo[0]),
            "y": float(lo[1]),
            "width": float(hi[0] - lo[0]),
            "height": float(hi[1] - lo[1]),
            "rotation": 0,
            "rectanglelabels": [box_label],
        },
    }
    return [box] + [{**r, "parentID": box_id} for r in points]


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
