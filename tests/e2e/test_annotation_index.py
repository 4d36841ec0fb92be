"""The annotation index against a real Label Studio 1.23.2: /setup and /predict find the support without reading the
project, webhooks keep the index current, and a backend restart reconciles what happened while it was down
(an RQ worker of `kpassist serve` runs the reconcile job)."""

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
from bench.devservers import LabelStudioAPI, free_port, label_studio, serve_backend

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.redis]

FRAMES = ["img0000.png", "img0030.png", "img0060.png"]
CONFIG = label_config.read("mouse_topview_4")


def setup_version(backend: str, ls_url: str, token: str, pid: int) -> str:
    body = {"project": f"{pid}.1", "schema": CONFIG, "hostname": ls_url, "access_token": token}
    resp = requests.post(backend + "/setup", json=body, timeout=60)
    resp.raise_for_status()
    return resp.json()["model_version"]


def wait_version(backend: str, ls_url: str, token: str, pid: int, ok, timeout_s: float = 90) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        version = setup_version(backend, ls_url, token, pid)
        if ok(version) or time.monotonic() > deadline:
            return version
        time.sleep(1)


def test_webhooks_and_a_restart_reconcile_keep_the_support_current(tmp_path: Path, mouse_dir: Path) -> None:
    coco = json.loads((mouse_dir / "annotations.json").read_text())
    by_name = {img["file_name"]: img for img in coco["images"]}
    gt = {a["image_id"]: a for a in coco["annotations"]}
    names = coco["categories"][0]["keypoints"]
    queue = f"kpassist-e2e-{uuid.uuid4().hex[:8]}"
    port = free_port()
    with label_studio(tmp_path) as (ls_url, token):
        env = {"LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": token, "KPASSIST_QUEUE": queue}
        api = LabelStudioAPI(ls_url, token)
        pid = api.create_project("index e2e", CONFIG)
        tasks = api.import_images(pid, [mouse_dir / "images" / n for n in FRAMES])

        def annotate(i: int) -> int:
            info = by_name[FRAMES[i]]
            kps = np.asarray(gt[info["id"]]["keypoints"]).reshape(-1, 3)
            return api.annotate(tasks[i]["id"], kps, names, info["width"], info["height"])["id"]

        first, second = annotate(0), annotate(1)
        try:
            with serve_backend(tmp_path, env, args=(), port=port) as (backend, _):
                api("POST", "/api/ml", json={"url": backend, "project": pid, "title": "kpassist"})  # + its webhook
                # a project never reconciled: one bounded request finds the newest annotation at once
                assert f"+support.{second}@" in setup_version(backend, ls_url, token, pid)
                api("DELETE", f"/api/annotations/{second}")  # LS sends ANNOTATIONS_DELETED to the backend
                # webhooks arrive asynchronously (over 30 s once, in a full `make test` on a loaded 2-core machine):
                # wait, bounded, for the deletion to reach the index
                version = wait_version(backend, ls_url, token, pid, lambda v: f"+support.{first}@" in v)
                assert f"+support.{first}@" in version, version
            # the backend is down: what happens now reaches it by no webhook
            api("DELETE", f"/api/annotations/{first}")
            third = annotate(2)
            with serve_backend(tmp_path, env, args=(), port=port) as (backend, _):
                version = wait_version(backend, ls_url, token, pid, lambda v: f"+support.{third}@" in v)
                assert f"+support.{third}@" in version, version  # the reconcile job added it
                api("DELETE", f"/api/annotations/{third}")  # webhook: nothing is left, if the reconcile removed `first`
                version = wait_version(backend, ls_url, token, pid, lambda v: "+support" not in v)
                assert "+support" not in version, version
        finally:
            clear_namespace("redis://127.0.0.1:6379/0", queue)
