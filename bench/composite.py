"""A multi-animal test set built from a single-animal video: each image is a 2 x 2 grid of cells, each cell a
different frame of the video (one animal each, its keypoints known) or the video's empty background (the per-pixel
median of its frames), so images hold 1 to 4 animals with exact ground truth. Written to a scratch folder in COCO
keypoint format (never into the repository)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from kp_model.coco import load_coco_keypoints
from kp_model.images import load_image_rgb


def composite_folder(source: Path, out: Path, images: int = 24, seed: int = 0, parity: int | None = None) -> Path:
    """Write ``images`` 2 x 2 composites of ``source``'s frames (all the same size) to ``out`` (images/ +
    annotations.json); image i holds 1 + i % 4 animals in random cells, frames drawn without repeats where possible;
    ``parity`` 0 or 1 uses only the even or odd frames (two disjoint sets: one to choose settings on, one to report).
    Returns ``out``."""
    samples = load_coco_keypoints(source)
    if parity is not None:
        samples = samples[parity::2]
    frames = [load_image_rgb(s.image_path) for s in samples]
    h, w = frames[0].shape[:2]
    if any(f.shape[:2] != (h, w) for f in frames):
        raise ValueError(f"{source}: composite needs frames of one size")
    background = np.median(np.stack(frames[:: max(1, len(frames) // 40)]), axis=0).astype(np.uint8)
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(len(samples)))
    (out / "images").mkdir(parents=True, exist_ok=True)
    coco_images, annotations = [], []
    cells = [(0, 0), (1, 0), (0, 1), (1, 1)]
    for i in range(images):
        canvas = np.empty((2 * h, 2 * w, 3), np.uint8)
        count = 1 + i % 4
        filled = set(rng.choice(4, count, replace=False).tolist())
        for c, (cx, cy) in enumerate(cells):
            tile = background
            if c in filled:
                if not order:
                    order = list(rng.permutation(len(samples)))
                j = int(order.pop())
                tile = frames[j]
                for inst in samples[j].instances:
                    kps = inst.keypoints.copy()
                    kps[:, 0] += cx * w
                    kps[:, 1] += cy * h
                    x0, y0, bw, bh = inst.box
                    annotations.append(
                        {
                            "id": len(annotations) + 1,
                            "image_id": i + 1,
                            "category_id": 1,
                            "keypoints": kps.ravel().tolist(),
                            "bbox": [x0 + cx * w, y0 + cy * h, bw, bh],
                        }
                    )
            canvas[cy * h : (cy + 1) * h, cx * w : (cx + 1) * w] = tile
        name = f"composite_{i:03d}.png"
        cv2.imwrite(str(out / "images" / name), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        coco_images.append({"id": i + 1, "file_name": name, "width": 2 * w, "height": 2 * h})
    category = {"id": 1, "name": samples[0].category, "keypoints": samples[0].keypoint_names}
    (out / "annotations.json").write_text(
        json.dumps({"images": coco_images, "annotations": annotations, "categories": [category]})
    )
    return out
