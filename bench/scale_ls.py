"""/setup and /predict latency against a real Label Studio as the project grows: projects of N annotated tasks (all
pointing at one uploaded mouse frame, each with that frame's annotation), imported in one JSON request each.

The backend is ``kpassist serve`` (with its RQ worker) started from ``backend_python`` in ``backend_dir``, so the same
command measures another checkout (e.g. the code before the annotation index) in the same run. Latencies are taken
once the project's annotation index is reconciled (the worker pages through the project once, in the background)."""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

import label_config
from bench.devservers import LabelStudioAPI, label_studio, serve_backend
from bench.http import percentiles
from bench.machine import machine_info
from kp_model.coco import load_coco_keypoints

log = logging.getLogger(__name__)


def _project(api: LabelStudioAPI, n: int, image_url: str, result: list[dict], config: str) -> tuple[int, dict]:
    pid = api.create_project(f"scale {n}", config)
    tasks = [{"data": {"image": image_url}, "annotations": [{"result": result}]} for _ in range(n)]
    t0 = time.perf_counter()
    api("POST", f"/api/projects/{pid}/import", json=tasks)
    log.info("project %s: %d annotated tasks imported in %.0fs", pid, n, time.perf_counter() - t0)
    query = api("GET", f"/api/tasks/?project={pid}&page_size=1").json()["tasks"][0]
    return pid, query


def run_scale_ls_bench(
    data: Path, sizes: tuple[int, ...] = (10, 500, 2000, 10000), repeats: int = 20, backend_python: str = "",
    backend_dir: Path | None = None, reconcile_wait_s: float = 600,
) -> dict:  # fmt: skip
    from backend.training_queue import clear_namespace

    backend_dir = backend_dir or Path(__file__).resolve().parents[1]
    python = backend_python or sys.executable
    config = label_config.read("mouse_topview_4")
    frame = load_coco_keypoints(data / "dlc__openfield_mouse")[0]
    kps = frame.instances[0].keypoints
    report: dict = {"machine": machine_info(), "backend": {"python": python, "dir": str(backend_dir)}, "sizes": []}
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=backend_dir, capture_output=True, text=True)
    report["backend"]["commit"] = git.stdout.strip()
    queue = f"kpassist-scale-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="kpassist-scale-ls-") as tmp, label_studio(Path(tmp)) as (ls_url, token):
        workdir = Path(tmp)
        api = LabelStudioAPI(ls_url, token)
        holder = api.create_project("image holder", config)
        [uploaded] = api.import_images(holder, [frame.image_path])
        image_url = uploaded["data"]["image"]
        ann = api.annotate(uploaded["id"], kps, frame.keypoint_names, frame.width, frame.height)
        env = {"LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": token, "KPASSIST_QUEUE": queue}
        try:
            with serve_backend(workdir, env, args=(), python=python, cwd=backend_dir) as (url, _):
                session = requests.Session()
                for n in sizes:
                    pid, query = _project(api, n, image_url, ann["result"], config)
                    setup = {"project": f"{pid}.1", "schema": config, "hostname": ls_url, "access_token": token}
                    body = {"tasks": [query], "project": f"{pid}.1", "label_config": config}

                    def call(path: str, payload: dict) -> float:
                        t0 = time.perf_counter()
                        resp = session.post(url + path, json=payload, timeout=600)
                        resp.raise_for_status()
                        return time.perf_counter() - t0

                    first_setup = call("/setup", setup)
                    first_predict = call("/predict", body)  # support fetched and described
                    index = workdir.glob(f"kpassist/projects/{pid}/annotations.sqlite")
                    t0 = time.perf_counter()
                    waited = _wait_reconciled(list(index), reconcile_wait_s)
                    waited_s = time.perf_counter() - t0 if waited else None  # after the first /setup and /predict
                    setups = [call("/setup", setup) for _ in range(repeats)]
                    predicts = [call("/predict", body) for _ in range(repeats)]
                    row = {
                        "annotated_tasks": n,
                        "first_setup_s": first_setup,
                        "first_predict_s": first_predict,
                        "reconcile_wait_s": waited_s,
                        "setup": percentiles(setups),
                        "predict_one_task": percentiles(predicts),
                    }
                    log.info(
                        "%d annotated tasks: /setup p95 %.3fs, /predict p95 %.3fs",
                        n,
                        row["setup"]["p95_s"],
                        row["predict_one_task"]["p95_s"],
                    )
                    report["sizes"].append(row)
        finally:
            clear_namespace("redis://127.0.0.1:6379/0", queue)
    base = report["sizes"][0]["predict_one_task"]["p95_s"]
    for row in report["sizes"]:
        row["predict_p95_vs_smallest"] = row["predict_one_task"]["p95_s"] / base
    return report


def _wait_reconciled(paths: list[Path], timeout_s: float) -> bool:
    """Until the project's annotation index reports a finished reconcile (no index: a backend without one)."""
    if not paths:
        return False
    import sqlite3

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(paths[0], timeout=5) as db:
                if db.execute("SELECT value FROM meta WHERE key = 'reconciled_at'").fetchone():
                    return True
        except sqlite3.Error:
            pass
        time.sleep(1)
    log.warning("index %s not reconciled after %.0fs", paths[0], timeout_s)
    return False
