"""Does training starve serving? /predict latency (one task, support cached) through the real backend, idle and while
the backend's own RQ worker fine-tunes the project, for several KPASSIST_TRAIN_THREADS and KPASSIST_JOB_NICE values
(niceness 0: the job competes with /predict as an equal), on one machine.

A real Label Studio holds a mouse project with 6 annotated frames; each setting gets a fresh backend (`kpassist serve`
with its worker) and one START_TRAINING webhook."""

from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import requests

import label_config
from backend.training_queue import clear_namespace
from bench.devservers import LabelStudioAPI, label_studio, serve_backend
from bench.http import percentiles
from bench.machine import machine_info

log = logging.getLogger(__name__)

FRAMES = ["img0000.png", "img0020.png", "img0040.png", "img0060.png", "img0080.png", "img0100.png"]
QUERY = "img0010.png"


def _jobs(url: str, pid: int) -> list[dict]:
    return requests.get(f"{url}/kpassist/projects/{pid}/jobs", timeout=30).json()["jobs"]


def run_contention_bench(
    data: Path, threads: tuple[int, ...] = (1, 2), steps: int = 300, repeats: int = 15, nice: tuple[int, ...] = (10,)
) -> dict:
    folder = data / "dlc__openfield_mouse"
    coco = json.loads((folder / "annotations.json").read_text())
    by_name = {img["file_name"]: img for img in coco["images"]}
    gt = {a["image_id"]: a for a in coco["annotations"]}
    names = coco["categories"][0]["keypoints"]
    config = label_config.read("mouse_topview_4")
    report: dict = {"machine": machine_info(), "train_steps": steps, "settings": []}
    with tempfile.TemporaryDirectory(prefix="kpassist-contention-") as tmp, label_studio(Path(tmp)) as (ls_url, token):
        api = LabelStudioAPI(ls_url, token)
        pid = api.create_project("contention", config)
        tasks = api.import_images(pid, [folder / "images" / n for n in [*FRAMES, QUERY]])
        for name, task in zip(FRAMES, tasks, strict=False):
            info = by_name[name]
            kps = np.asarray(gt[info["id"]]["keypoints"]).reshape(-1, 3)
            api.annotate(task["id"], kps, names, info["width"], info["height"])
        query = tasks[-1]
        for n, level in ((n, level) for level in nice for n in threads):
            queue = f"kpassist-contention-{uuid.uuid4().hex[:6]}"
            env = {
                "LABEL_STUDIO_URL": ls_url,
                "LABEL_STUDIO_API_KEY": token,
                "KPASSIST_QUEUE": queue,
                "KPASSIST_TRAIN_THREADS": str(n),
                "KPASSIST_JOB_NICE": str(level),
                "KPASSIST_TRAIN_STEPS": str(steps),
                "KPASSIST_DATA_DIR": str(Path(tmp) / f"var-{n}-{level}"),
            }
            try:
                with serve_backend(Path(tmp), env, args=()) as (url, _):
                    session = requests.Session()
                    body = {"tasks": [query], "project": f"{pid}.1", "label_config": config}
                    setup = {"project": f"{pid}.1", "schema": config, "hostname": ls_url, "access_token": token}
                    session.post(url + "/setup", json=setup, timeout=120).raise_for_status()

                    def predict(session: requests.Session = session, url: str = url, body: dict = body) -> float:
                        t0 = time.perf_counter()
                        session.post(url + "/predict", json=body, timeout=600).raise_for_status()
                        return time.perf_counter() - t0

                    predict()  # the support is built: from here on it is cached
                    idle = [predict() for _ in range(repeats)]
                    session.post(url + "/webhook", json={"action": "START_TRAINING", "project": {"id": pid}}, timeout=30)
                    deadline = time.monotonic() + 120
                    while not any(j["stage"] == "training" for j in _jobs(url, pid)):
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"the training job did not start: {_jobs(url, pid)}")
                        time.sleep(0.5)
                    busy = []
                    while any(j["status"] == "started" for j in _jobs(url, pid)) and len(busy) < 4 * repeats:
                        busy.append(predict())
                    deadline = time.monotonic() + 1800
                    while not any(j["status"] in ("finished", "failed") for j in _jobs(url, pid)):
                        if time.monotonic() > deadline:
                            raise RuntimeError("the training job did not end within 30 minutes")
                        time.sleep(1)
                    versions = requests.get(f"{url}/kpassist/projects/{pid}/jobs", timeout=30).json()["versions"]
                    train_s = versions[-1]["train_seconds"] if versions else None
                    row = {
                        "train_threads": n,
                        "job_nice": level,
                        "idle": percentiles(idle),
                        "while_training": percentiles(busy) if busy else None,
                        "train_seconds": train_s,
                    }
                    if busy:
                        row["p50_ratio"] = row["while_training"]["p50_s"] / row["idle"]["p50_s"]
                        row["p95_ratio"] = row["while_training"]["p95_s"] / row["idle"]["p95_s"]
                    shown = {k: v for k, v in row.items() if "ratio" in k or k == "train_seconds"}
                    log.info("train threads %d, nice %d: %s", n, level, shown)
                    report["settings"].append(row)
            finally:
                clear_namespace("redis://127.0.0.1:6379/0", queue)
    return report
