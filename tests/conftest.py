"""Shared fixtures: the real datasets in ../shared/data and small synthetic images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("KPASSIST_SHARED_DATA", REPO.parent / "shared" / "data"))
MOUSE = DATA / "dlc__openfield_mouse"


@pytest.fixture(scope="session")
def mouse_dir() -> Path:
    if not (MOUSE / "annotations.json").is_file():
        pytest.fail(f"real data missing: {MOUSE} (set KPASSIST_SHARED_DATA to the shared/data folder)")
    return MOUSE


def blob_image(
    width: int = 160, height: int = 120, centre: tuple[float, float] = (60, 50), angle: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """A textured asymmetric object on a plain background and its 3 keypoints (px)."""
    import cv2

    img = np.full((height, width, 3), 200, np.uint8)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 20, (height, width, 3), dtype=np.uint8)
    img = cv2.add(img, noise)
    local = np.array([[-25.0, 0.0], [20.0, -12.0], [18.0, 14.0]])
    c, s = np.cos(angle), np.sin(angle)
    pts = local @ np.array([[c, s], [-s, c]]) + np.array(centre)
    cv2.fillConvexPoly(img, np.round(pts).astype(np.int32), (40, 60, 160))
    cv2.circle(img, tuple(int(v) for v in pts[0]), 6, (230, 40, 40), -1)
    cv2.circle(img, tuple(int(v) for v in pts[1]), 4, (40, 200, 40), -1)
    return img, pts


@pytest.fixture()
def queue_name():
    """A fresh RQ queue name (and kpassist Redis key namespace) on the local Redis, removed after the test."""
    import uuid

    name = f"kpassist-test-{uuid.uuid4().hex[:8]}"
    yield name
    from backend.training_queue import clear_namespace

    clear_namespace("redis://127.0.0.1:6379/0", name)


@pytest.fixture(scope="session")
def mouse_overfit(mouse_dir: Path):
    """The tiny kptllm preset trained (260 steps, no augmentation) on 4 real mouse frames: (model, samples, bboxes).
    Shared by the overfitting test and the backend's label-check test (about 45 s on 2 cores)."""
    import torch

    from kp_model.augment import AugmentConfig
    from kp_model.coco import load_coco_keypoints
    from kp_model.kptllm import build_model, tiny_config
    from kp_model.semantics import semantic_text
    from kp_model.train import TrainConfig, samples_from_coco, train

    idx = [0, 30, 60, 90]
    samples = samples_from_coco(mouse_dir, indices=idx)
    boxes = [load_coco_keypoints(mouse_dir)[i].instances[0].bbox for i in idx]
    torch.manual_seed(0)
    model = build_model(tiny_config(category="mouse"), vocab_texts=[semantic_text(n, "mouse") for n in samples[0].names])
    still = AugmentConfig(scale=0, rotation=0, shift=0, flip=0, colour=0)
    train(model, samples, TrainConfig(steps=260, augment=still, log_every=50))
    return model, samples, boxes
