"""How one prediction's latency and the process memory grow with image size and keypoint count (in process)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from bench.machine import memory_mb
from kp_model.coco import load_coco_keypoints
from kp_model.images import load_image_rgb


def _resize(image: np.ndarray, f: float) -> np.ndarray:
    return cv2.resize(image, (round(image.shape[1] * f), round(image.shape[0] * f)), interpolation=cv2.INTER_LINEAR)


def _time_predict(
    make: Callable[[], object], support: np.ndarray, kps: np.ndarray, names: list[str], query: np.ndarray, repeats: int
) -> dict:
    predictor = make()
    predictor.set_support(support, kps, names)  # warm-up: first-call costs (allocations, lazy imports) not timed
    predictor.predict([query])
    t0 = time.perf_counter()
    predictor.set_support(support, kps, names)
    set_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predictor.predict([query])
        times.append(time.perf_counter() - t0)
    return {"set_support_s": set_s, "predict_median_s": float(np.median(times)), **memory_mb()}


def run_scale_bench(
    data: Path,
    engines: dict[str, Callable[[], object]],
    sizes: tuple[int, ...] = (256, 512, 1024, 2048),
    keypoint_counts: tuple[int, ...] = (4, 17, 68, 133),
    repeats: int = 2,
) -> dict:
    """Image size: mouse frames 0 (support) and 10 (query) resized so the longer side is each size.
    Keypoints: cocowholebody's first two images, the first K visible keypoints of the support person.
    Peak memory is the process's peak so far, so it only grows along each sweep."""
    mouse = load_coco_keypoints(data / "dlc__openfield_mouse")
    s_img, q_img = load_image_rgb(mouse[0].image_path), load_image_rgb(mouse[10].image_path)
    kps = mouse[0].instances[0].keypoints
    names = list(mouse[0].keypoint_names)
    out: dict = {"image_size": {}, "keypoints": {}}
    for name, make in engines.items():
        rows = []
        for size in sizes:
            f = size / max(s_img.shape[:2])
            vis = kps[:, 2] > 0
            rows.append(
                {
                    "longer_side_px": size,
                    **_time_predict(
                        make,
                        _resize(s_img, f),
                        kps[vis, :2] * f,
                        [n for n, v in zip(names, vis, strict=True) if v],
                        _resize(q_img, f),
                        repeats,
                    ),
                }
            )
        out["image_size"][name] = rows
    body = load_coco_keypoints(data / "mmpose__cocowholebody_person")
    sup = body[0]
    inst = max(sup.instances, key=lambda i: int(i.visible.sum()))
    s_img, q_img = load_image_rgb(sup.image_path), load_image_rgb(body[1].image_path)
    visible = np.flatnonzero(inst.visible)
    for name, make in engines.items():
        rows = []
        for k in keypoint_counts:
            idx = visible[:k]
            rows.append(
                {
                    "keypoints": int(len(idx)),
                    **_time_predict(make, s_img, inst.keypoints[idx, :2], [sup.keypoint_names[i] for i in idx], q_img, repeats),
                }
            )
        out["keypoints"][name] = rows
    out["keypoint_source"] = f"{sup.image_path.name}: {int(inst.visible.sum())} visible keypoints of 133"
    return out
