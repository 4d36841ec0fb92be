"""Whole-project pre-labelling throughput against a real Label Studio: projects of N tasks (mouse frames, one of them
annotated: the support) pre-labelled by 1, then 2, ``kpassist worker`` processes of one thread each, through the
backend's endpoint; then a run during which one worker is SIGKILLed mid-chunk (its process group: the worker and
its work horse), checking that RQ's retry completes it with no duplicate and no missing task."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import requests

import label_config
from bench.devservers import LabelStudioAPI, label_studio, serve_backend
from bench.http import process_tree
from bench.machine import machine_info
from kp_model.coco import load_coco_keypoints

log = logging.getLogger(__name__)


def _project(api: LabelStudioAPI, n: int, urls: list[str], result: list[dict], config: str) -> int:
    """A project of ``n`` tasks cycling through ``urls``; the first carries the support annotation ``result``."""
    pid = api.create_project(f"prelabel {n} {uuid.uuid4().hex[:4]}", config)
    tasks: list[dict] = [{"data": {"image": urls[i % len(urls)]}} for i in range(n)]
    tasks[0]["annotations"] = [{"result": result}]
    api("POST", f"/api/projects/{pid}/import", json=tasks)
    return pid


def _workers(n: int, env: dict, workdir: Path, tag: str) -> list[subprocess.Popen]:
    procs = []
    for i in range(n):
        out = (workdir / f"worker-{tag}-{i}.log").open("w")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "backend.cli", "worker"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    return procs


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def _follow(backend: str, pid: int, timeout_s: float, on_progress=None) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        state = requests.get(f"{backend}/kpassist/projects/{pid}/prelabel", timeout=30).json()
        if on_progress is not None:
            on_progress(state)
        if state["status"] not in ("planning", "running") or time.monotonic() > deadline:
            return state
        time.sleep(2)


def _audit(api: LabelStudioAPI, pid: int, version: str) -> dict:
    """Predictions per task of ``version``, read back from Label Studio."""
    counts: list[int] = []
    page = 1
    while True:
        resp = api.session.get(f"{api.url}/api/tasks/", params={"project": pid, "fields": "all", "page": page, "page_size": 100})
        if resp.status_code == 404:
            break
        tasks = resp.json()["tasks"]
        counts += [sum(p["model_version"] == version for p in t["predictions"]) for t in tasks]
        if len(tasks) < 100:
            break
        page += 1
    c = np.asarray(counts)
    return {"tasks": len(c), "with_one": int((c == 1).sum()), "missing": int((c == 0).sum()), "duplicated": int((c > 1).sum())}


def _run(api, backend, pid, workers: int, env: dict, workdir: Path, timeout_s: float, kill_after: int = 0) -> dict:
    procs = _workers(workers, env, workdir, f"{pid}")
    killed_at = None
    try:
        t0 = time.perf_counter()
        resp = requests.post(f"{backend}/kpassist/projects/{pid}/prelabel", json={}, timeout=30)
        resp.raise_for_status()

        def progress(state: dict) -> None:
            nonlocal killed_at
            if kill_after and killed_at is None and state["done"] >= kill_after:
                for pid in process_tree(procs[0].pid):  # mid-chunk: the worker and its work horse (RQ gives the
                    os.kill(pid, signal.SIGKILL)  # horse a session of its own, so killpg would miss it)
                killed_at = time.perf_counter() - t0
                log.info("worker 0 SIGKILLed at %d/%d tasks", state["done"], state["total"])

        state = _follow(backend, pid, timeout_s, progress)
        wall = time.perf_counter() - t0
    finally:
        _stop(procs)
    audit = _audit(api, pid, state["version"])
    row = {
        "workers": workers,
        "status": state["status"],
        "tasks": state["total"],
        "written": state["written"],
        "skipped": state["skipped"],
        "failed": state["failed"],
        "repeated": state.get("repeated", 0),  # > 0 after a kill: the retried chunk met tasks its dead worker had done
        "wall_s": round(wall, 1),
        "tasks_per_s_wall": round(state["total"] / wall, 3),
        "tasks_per_s_run": state["tasks_per_s"],
        "seconds": state.get("seconds"),  # summed over the workers' chunks
        "per_task_s": {k: round(v / max(1, state["done"]), 4) for k, v in (state.get("seconds") or {}).items()},
        "audit": audit,
        "exactly_one_each": audit["with_one"] == audit["tasks"],
    }
    if kill_after:
        row["killed_at_s"] = killed_at
    log.info("%s", row)
    return row


def run_prelabel_bench(
    data: Path, tasks: int = 1000, workers: tuple[int, ...] = (1, 2), kill_tasks: int = 200, chunk: int = 50,
    frames: int = 50, timeout_s: float = 3600,
) -> dict:  # fmt: skip
    from backend.training_queue import clear_namespace

    config = label_config.read("mouse_topview_4")
    samples = load_coco_keypoints(data / "dlc__openfield_mouse")[:frames]
    report: dict = {
        "machine": machine_info(),
        "settings": {"tasks": tasks, "chunk": chunk, "distinct_frames": len(samples), "threads_per_worker": 1},
        "runs": [],
    }
    queue = f"kpassist-prelabel-{uuid.uuid4().hex[:6]}"
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kpassist-prelabel-")))
        ls_url, token = stack.enter_context(label_studio(workdir))
        api = LabelStudioAPI(ls_url, token)
        holder = api.create_project("image holder", config)
        uploaded = api.import_images(holder, [s.image_path for s in samples])
        urls = [t["data"]["image"] for t in uploaded]
        first = samples[0]
        support = api.annotate(uploaded[0]["id"], first.instances[0].keypoints, first.keypoint_names, first.width, first.height)
        env = {
            **os.environ,
            "LABEL_STUDIO_URL": ls_url,
            "LABEL_STUDIO_API_KEY": token,
            "KPASSIST_QUEUE": queue,
            "KPASSIST_DATA_DIR": str(workdir / "kpassist"),
            "KPASSIST_PRELABEL_CHUNK": str(chunk),
            "KPASSIST_PRELABEL_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        stack.callback(clear_namespace, "redis://127.0.0.1:6379/0", queue)
        backend, _ = stack.enter_context(serve_backend(workdir, env, args=("--no-worker",)))
        for n in workers:
            pid = _project(api, tasks, urls, support["result"], config)
            report["runs"].append(_run(api, backend, pid, n, env, workdir, timeout_s))
        if kill_tasks:
            pid = _project(api, kill_tasks, urls, support["result"], config)
            row = _run(api, backend, pid, 2, env, workdir, timeout_s, kill_after=chunk // 2 + 1)
            report["kill"] = row
    base = report["runs"][0]["tasks_per_s_wall"] if report["runs"] else 0.0
    for row in report["runs"]:
        row["speedup_vs_first"] = round(row["tasks_per_s_wall"] / base, 2) if base else None
    return report
