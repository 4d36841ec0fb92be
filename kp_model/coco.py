"""Reading keypoint datasets in COCO keypoint format (``images/`` + ``annotations.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kp_model.evaluation.metrics import reference_box


class DatasetError(ValueError):
    """A dataset folder or its annotations.json is missing or malformed."""


@dataclass
class Instance:
    """One annotated object. keypoints: (K, 3) x, y (px), v (0 missing, 1 occluded, 2 visible);
    bbox: the annotated (x, y, w, h) px, None when the file has none."""

    keypoints: np.ndarray
    bbox: tuple[float, float, float, float] | None

    @property
    def visible(self) -> np.ndarray:
        return self.keypoints[:, 2] > 0

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The reference box errors are normalised by (kp_model.evaluation.metrics.reference_box)."""
        return reference_box(self.keypoints[:, :2], self.visible, self.bbox)


@dataclass
class Sample:
    image_path: Path
    width: int
    height: int
    category: str
    keypoint_names: list[str]
    instances: list[Instance]


def load_coco_keypoints(folder: str | Path) -> list[Sample]:
    """Samples of a COCO keypoint folder, one per (image, category) with >= 1 annotated instance,
    in the order of ``images`` in annotations.json."""
    folder = Path(folder)
    ann_path = folder / "annotations.json"
    if not ann_path.is_file():
        raise DatasetError(f"{folder}: no annotations.json (expected COCO keypoint format: images/ + annotations.json)")
    try:
        data = json.loads(ann_path.read_text())
        categories = {c["id"]: c for c in data["categories"]}
        images = data["images"]
        annotations = data["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DatasetError(f"{ann_path}: not a COCO keypoint file ({exc})") from exc
    by_image: dict[tuple[int, int], list[Instance]] = {}
    for ann in annotations:
        cat = categories.get(ann.get("category_id"))
        if cat is None or "keypoints" not in ann:
            continue
        kps = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
        if len(kps) != len(cat["keypoints"]):
            raise DatasetError(
                f"{ann_path}: annotation {ann.get('id')} has {len(kps)} keypoints, category has {len(cat['keypoints'])}"
            )
        if not (kps[:, 2] > 0).any():
            continue
        bbox = tuple(float(b) for b in ann["bbox"]) if ann.get("bbox") else None
        by_image.setdefault((ann["image_id"], cat["id"]), []).append(Instance(kps, bbox))
    samples = []
    for img in images:
        for (image_id, cat_id), instances in by_image.items():
            if image_id != img["id"]:
                continue
            cat = categories[cat_id]
            samples.append(
                Sample(
                    folder / "images" / img["file_name"],
                    int(img["width"]),
                    int(img["height"]),
                    cat["name"],
                    list(cat["keypoints"]),
                    instances,
                )
            )
    return samples
