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
def shared_data() -> Path:
    """../shared/data (or KPASSIST_SHARED_DATA): the real keypoint datasets."""
    if not DATA.is_dir():
        pytest.fail(f"real data missing: {DATA} (set KPASSIST_SHARED_DATA to the shared/data folder)")
    return DATA


@pytest.fixture(scope="session")
def mouse_dir() -> Path:
    if not (MOUSE / "annotations.json").is_file():
        pytest.fail(f"real data missing: {MOUSE} (set KPASSIST_SHARED_DATA to the shared/data folder)")
    return MOUSE


def _blob_image(
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


def _animal_image(head: tuple[int, int], tail: tuple[int, int], shift: int = 0) -> np.ndarray:
    rng = np.random.default_rng(0)
    floor = np.kron(rng.random((12, 20)), np.ones((8, 8)))[:, :136]
    img = np.roll(floor * 120 + 60, shift, axis=1)[:96, :128]
    yy, xx = np.mgrid[:96, :128]
    for t in np.linspace(0, 1, 60):
        x, y = (1 - t) * np.array(head) + t * np.array(tail)
        img[(xx - x) ** 2 + (yy - y) ** 2 <= 9] = 250 - 230 * t  # bright at the head, dark at the tail
    return np.repeat(img[..., None], 3, axis=2).astype(np.uint8)


@pytest.fixture(scope="session")
def animal_image():
    """animal_image(head, tail, shift=0) -> (96, 128, 3) uint8: a textured floor (shifted right by ``shift`` px) and
    an elongated body from a bright head to a dark tail (px): a head/tail flip fits its shape, not its looks."""
    return _animal_image


BLOB_NAMES = ["nose", "left_ear", "right_ear"]  # the blob's 3 keypoints, in order


@pytest.fixture(scope="session")
def blob_image():
    """blob_image(width, height, centre, angle) -> (image (H, W, 3) uint8, keypoints (3, 2) px): a synthetic object."""
    return _blob_image


@pytest.fixture(scope="session")
def blob_names() -> list[str]:
    return list(BLOB_NAMES)


@pytest.fixture(scope="session")
def blob_sample():
    """blob_sample(centre) -> a TrainSample of the blob at ``centre`` (key "<centre>")."""
    from kp_model.training.data import TrainSample

    def make(centre: tuple[float, float] = (60, 50), key: str | None = None) -> TrainSample:
        img, pts = _blob_image(centre=centre)
        return TrainSample(img, pts, np.ones(3, bool), list(BLOB_NAMES), "blob", key or f"{centre}")

    return make


@pytest.fixture(scope="session")
def blob_samples(blob_sample):
    """blob_samples(n) -> n TrainSamples of the blob moving right and down; keys "<i>/<100 + i>" (image/annotation)."""
    return lambda n: [blob_sample((50 + 8 * i, 45 + 4 * i), f"{i}/{100 + i}") for i in range(n)]


@pytest.fixture(scope="session")
def small_config():
    """small_config(**overrides) -> a KptLLMConfig smaller than the tiny preset (fast CPU tests)."""
    from kp_model.kptllm.configuration import KptLLMConfig
    from kp_model.kptllm.llm import LLMConfig
    from kp_model.kptllm.vision import VisionConfig

    def make(**kw) -> KptLLMConfig:
        return KptLLMConfig(
            vision=VisionConfig(image_size=64, hidden_size=32, heads=2), llm=LLMConfig(hidden_size=32, heads=2), **kw
        )

    return make


@pytest.fixture(scope="session")
def small_model(small_config):
    """small_model(**overrides) -> a new KptLLM of small_config whose tokenizer knows the blob's texts."""
    import torch

    from kp_model.kptllm.checkpoint import build_model
    from kp_model.kptllm.semantics import semantic_text

    def make(**kw):
        torch.manual_seed(0)
        return build_model(small_config(**kw), vocab_texts=[semantic_text(n, "blob") for n in BLOB_NAMES])

    return make


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

    from kp_model.coco import load_coco_keypoints
    from kp_model.kptllm.checkpoint import build_model
    from kp_model.kptllm.configuration import tiny_config
    from kp_model.kptllm.semantics import semantic_text
    from kp_model.training.augment import AugmentConfig
    from kp_model.training.data import samples_from_coco
    from kp_model.training.loop import TrainConfig, train

    idx = [0, 30, 60, 90]
    samples = samples_from_coco(mouse_dir, indices=idx)
    boxes = [load_coco_keypoints(mouse_dir)[i].instances[0].bbox for i in idx]
    torch.manual_seed(0)
    model = build_model(tiny_config(category="mouse"), vocab_texts=[semantic_text(n, "mouse") for n in samples[0].names])
    still = AugmentConfig(scale=0, rotation=0, shift=0, flip=0, colour=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # multi-threaded CPU backward is not bit-reproducible: 1 thread gives the same model each run
    try:
        train(model, samples, TrainConfig(steps=260, augment=still, log_every=50))
    finally:
        torch.set_num_threads(threads)
    return model, samples, boxes
