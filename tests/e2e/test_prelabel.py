"""Whole-project pre-labelling against a real Label Studio 1.23.2 and the RQ worker of ``kpassist serve``: every task
gets exactly one prediction of the served version, a chunk whose job process is SIGKILLed mid-way is retried without
duplicates, a task whose image is missing is reported with its reason, and a re-run writes nothing."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests

import label_config
from backend.training_queue import clear_namespace
from bench.devservers import LabelStudioAPI, label_studio, serve_backend

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.redis]

FRAMES = ["img0000.png", "img0010.png", "img0020.png", "img0030.png", "img0040.png", "img0050.png"]


def follow(backend: str, pid: int, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        state = requests.get(f"{backend}/kpassist/projects/{pid}/prelabel", timeout=10).json()
        if state["status"] not in ("planning", "running") or time.monotonic() > deadline:
            return state
        time.sleep(1)


def predictions(api: LabelStudioAPI, pid: int) -> dict[int, list[str]]:
    tasks = api("GET", f"/api/tasks/?project={pid}&fields=all&page_size=100").json()["tasks"]
    return {t["id"]: [p["model_version"] for p in t["predictions"]] for t in tasks}


def test_prelabel_writes_one_prediction_per_task_survives_a_kill_and_reruns_idempotently(tmp_path: Path, mouse_dir: Path) -> None:
    coco = json.loads((mouse_dir / "annotations.json").read_text())
    info = next(img for img in coco["images"] if img["file_name"] == FRAMES[0])
    kps = np.asarray(next(a for a in coco["annotations"] if a["image_id"] == info["id"])["keypoints"]).reshape(-1, 3)
    queue = f"kpassist-e2e-{uuid.uuid4().hex[:8]}"
    with label_studio(tmp_path) as (ls_url, token):
        api = LabelStudioAPI(ls_url, token)
        pid = api.create_project("prelabel e2e", label_config.read("mouse_topview_4"))
        tasks = api.import_images(pid, [mouse_dir / "images" / n for n in FRAMES])
        api.annotate(tasks[0]["id"], kps, coco["categories"][0]["keypoints"], info["width"], info["height"])
        missing = api("POST", f"/api/projects/{pid}/import", json=[{"image": "/data/upload/1/no-such-frame.png"}]).json()
        assert missing["task_count"] == 1
        env = {
            "LABEL_STUDIO_URL": ls_url,
            "LABEL_STUDIO_API_KEY": token,
            "KPASSIST_QUEUE": queue,
            "KPASSIST_PRELABEL_CHUNK": "3",
            "KPASSIST_FAULT_AT": "prelabel",  # the first chunk's job process is SIGKILLed after its first prediction
        }
        try:
            with serve_backend(tmp_path, env, args=()) as (backend, _):
                started = requests.post(f"{backend}/kpassist/projects/{pid}/prelabel", json={}, timeout=10)
                assert started.status_code == 202, started.text
                again = requests.post(f"{backend}/kpassist/projects/{pid}/prelabel", json={}, timeout=10)
                assert again.status_code == 409  # one run at a time
                state = follow(backend, pid)
                assert state["status"] == "done", state
                assert (state["total"], state["done"], state["chunks_done"]) == (7, 7, 3)
                assert state["failed"] == 1 and state["written"] + state["skipped"] == 6
                [failure] = state["failures"]
                assert failure["task"] == missing_id(api, pid) and failure["reason"], failure
                assert (tmp_path / "kpassist" / "fault-prelabel.done").exists()  # the kill happened
                version = state["version"]
                first = predictions(api, pid)
                assert sorted(len(v) for v in first.values()) == [0, 1, 1, 1, 1, 1, 1]  # no duplicate, none missing
                assert all(v == [version] for v in first.values() if v)

                rerun = requests.post(f"{backend}/kpassist/projects/{pid}/prelabel", json={"chunk_size": 4}, timeout=10)
                assert rerun.status_code == 202
                state = follow(backend, pid)
                assert (state["status"], state["written"], state["skipped"], state["failed"]) == ("done", 0, 6, 1)
                assert predictions(api, pid) == first
        finally:
            clear_namespace("redis://127.0.0.1:6379/0", queue)


def missing_id(api: LabelStudioAPI, pid: int) -> int:
    tasks = api("GET", f"/api/tasks/?project={pid}&page_size=100").json()["tasks"]
    return next(t["id"] for t in tasks if t["data"]["image"].endswith("no-such-frame.png"))
