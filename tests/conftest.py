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


def clear_queue(name: str, url: str = "redis://127.0.0.1:6379/0") -> None:
    """Delete an RQ queue's jobs and kpassist's keys of that namespace (test isolation on the shared Redis)."""
    from redis import Redis
    from rq import Queue
    from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

    r = Redis.from_url(url)
    q = Queue(name, connection=r)
    ids = set(q.get_job_ids())
    for reg in (StartedJobRegistry, FinishedJobRegistry, FailedJobRegistry):
        ids |= set(reg(name, connection=r).get_job_ids())
    q.empty()
    for job_id in ids:
        r.delete(f"rq:job:{job_id}", f"rq:results:{job_id}")
    for key in r.scan_iter(f"{name}:*"):
        r.delete(key)
    for key in r.scan_iter(f"rq:*:{name}"):
        r.delete(key)


@pytest.fixture()
def queue_name():
    """A fresh RQ queue name (and kpassist Redis key namespace) on the local Redis, removed after the test."""
    import uuid

    name = f"kpassist-test-{uuid.uuid4().hex[:8]}"
    yield name
    clear_queue(name)
