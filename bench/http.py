"""Speed, memory and load of the backend through its real HTTP app (`kpassist serve`, gunicorn) connected to a
real Label Studio (started from its own virtualenv, as in the e2e tests), plus how one prediction scales with
image size and keypoint count (in process). Numbers go to the bench report; nothing here is asserted."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import requests

import label_config
from backend.training_queue import clear_namespace
from bench.devservers import LabelStudioAPI, label_studio, serve_backend
from bench.machine import memory_mb
from kp_model.coco import load_coco_keypoints

log = logging.getLogger(__name__)


def percentiles(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, float)
    return {"n": int(v.size), "p50_s": float(np.percentile(v, 50)), "p95_s": float(np.percentile(v, 95)), "max_s": float(v.max())}


def process_tree(pid: int) -> list[int]:
    """A process and its descendants (Linux /proc), whatever their session or process group."""
    pids, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            children = []
        pids += [int(c) for c in children]
        frontier += [int(c) for c in children]
    return pids


def process_tree_memory_mb(pid: int) -> dict[str, float]:
    """Current and peak resident memory (VmRSS, VmHWM; MB) summed over a process and its descendants (Linux /proc)."""
    rss = hwm = 0.0
    pids = process_tree(pid)
    for p in pids:
        try:
            mem = memory_mb(p)
        except OSError:  # exited since it was listed
            continue
        rss += mem["rss_mb"]
        hwm += mem["peak_rss_mb"]
    return {"rss_mb": rss, "peak_rss_mb": hwm, "processes": len(pids)}


class Backend:
    """A client of the served backend; ``pid`` is the serve process (for memory readings)."""

    def __init__(self, url: str, project: int, config: str, pid: int = 0) -> None:
        self.url, self.project, self.config, self.pid = url, project, config, pid
        self.session = requests.Session()

    def predict(self, tasks: list[dict]) -> tuple[float, dict]:
        body = {"tasks": tasks, "project": f"{self.project}.1", "label_config": self.config}
        t0 = time.perf_counter()
        resp = self.session.post(self.url + "/predict", json=body, timeout=600)
        dt = time.perf_counter() - t0
        if resp.status_code != 200:
            raise RuntimeError(f"/predict answered {resp.status_code}: {resp.text[:300]}")
        return dt, resp.json()

    def event(self, body: dict) -> int:
        """Post a webhook body as Label Studio sends it."""
        return self.session.post(self.url + "/webhook", json=body, timeout=60).status_code

    def webhook(self, action: str = "ANNOTATION_UPDATED", project: int | None = None) -> tuple[float, int]:
        body = {
            "action": action,
            "project": {"id": project or self.project, "label_config": self.config},
            "annotation": {"id": 1},
        }
        t0 = time.perf_counter()
        resp = self.session.post(self.url + "/webhook", json=body, timeout=60)
        return time.perf_counter() - t0, resp.status_code


def load_test(backend: Backend, tasks: list[dict], pid: int, seconds: float, predict_threads: int = 3) -> dict:
    """Concurrent /predict (1 task each, cycling over ``tasks``) and /webhook callers for ``seconds``; memory sampled
    every second. Webhooks go to another project so the predicted project's support stays cached."""
    stop = time.monotonic() + seconds
    lat: dict[str, list[float]] = {"predict": [], "webhook": []}
    errors: list[str] = []
    samples: list[float] = []
    lock = threading.Lock()

    def predictor(offset: int) -> None:
        session = Backend(backend.url, backend.project, backend.config)
        i = offset
        while time.monotonic() < stop:
            try:
                dt, body = session.predict([tasks[i % len(tasks)]])
                ok = bool(body["results"] and body["results"][0])
                with lock:
                    lat["predict"].append(dt)
                    if not ok:
                        errors.append("empty prediction")
            except (requests.RequestException, RuntimeError) as exc:
                with lock:
                    errors.append(f"predict: {exc}")
            i += predict_threads

    def hooker() -> None:
        session = Backend(backend.url, backend.project, backend.config)
        while time.monotonic() < stop:
            try:
                dt, status = session.webhook(project=pid + 1000)
                with lock:
                    lat["webhook"].append(dt)
                    if status >= 300 and status != 202:
                        errors.append(f"webhook answered {status}")
            except requests.RequestException as exc:
                with lock:
                    errors.append(f"webhook: {exc}")
            time.sleep(0.05)

    threads = [threading.Thread(target=predictor, args=(i,)) for i in range(predict_threads)] + [threading.Thread(target=hooker)]
    for t in threads:
        t.start()
    while time.monotonic() < stop:
        samples.append(process_tree_memory_mb(backend.pid)["rss_mb"])
        time.sleep(1.0)
    for t in threads:
        t.join()
    # RSS swings by a few hundred MB with the requests in flight: compare medians of 10 s windows after a 5 s warm-up
    warm = samples[5:] or samples
    growth = float(np.median(warm[-10:]) - np.median(warm[:10])) if warm else float("nan")
    return {
        "seconds": seconds,
        "concurrency": {"predict_threads": predict_threads, "webhook_threads": 1},
        "requests": {k: len(v) for k, v in lat.items()},
        "errors": len(errors),
        "error_examples": errors[:5],
        "latency": {k: percentiles(v) for k, v in lat.items() if v},
        "predict_tasks_per_s": len(lat["predict"]) / seconds,
        "rss_mb_samples": [round(s, 1) for s in samples],
        "rss_growth_mb_after_warmup": growth,
        "rss_growth_definition": "median RSS of the last 10 s minus median of seconds 5-15 (gunicorn master + workers)",
        "rss_max_mb": max(samples) if samples else float("nan"),
        "rss_growth_bound_mb": 100.0,
        "within_bound": bool(growth < 100.0),
    }


def run_http_bench(data: Path, workdir: Path, repeats: int = 10, load_seconds: float = 60.0) -> dict:
    """/predict latency (1 task, batch of 20; support cached and not), throughput, load time, memory, load test."""
    folder = data / "dlc__openfield_mouse"
    coco = load_coco_keypoints(folder)
    frames = coco[:21]
    config = label_config.read("mouse_topview_4")
    out: dict = {}
    with label_studio(workdir) as (ls_url, token):
        api = LabelStudioAPI(ls_url, token)
        pid = api.create_project("kpassist bench", config)
        tasks = api.import_images(pid, [f.image_path for f in frames])
        s = frames[0]
        support = api.annotate(tasks[0]["id"], s.instances[0].keypoints, s.keypoint_names, s.width, s.height)

        def support_changed() -> None:
            """The annotator saves the support annotation again (a new updated_at), and LS sends its webhook: the
            next /predict rebuilds the support features (webhooks alone no longer drop the cache)."""
            updated = api("PATCH", f"/api/annotations/{support['id']}", json={"result": support["result"]}).json()
            body = {"action": "ANNOTATION_UPDATED", "project": {"id": pid}, "annotation": updated, "task": tasks[0]}
            backend.event(body)

        queries = tasks[1:21]
        env = {
            "LABEL_STUDIO_URL": ls_url,
            "LABEL_STUDIO_API_KEY": token,
            "KPASSIST_QUEUE": f"kpassist-bench-{uuid.uuid4().hex[:6]}",
        }
        t0 = time.perf_counter()
        with serve_backend(workdir, env) as (url, proc):
            out["backend_start_s"] = time.perf_counter() - t0  # process start to /health (imports, app)
            backend = Backend(url, pid, config, proc.pid)
            setup = {"project": f"{pid}.1", "schema": config, "hostname": ls_url, "access_token": token}
            t1 = time.perf_counter()
            requests.post(url + "/setup", json=setup, timeout=120).raise_for_status()
            out["first_setup_s"] = time.perf_counter() - t1
            first, _ = backend.predict(queries[:1])
            out["first_predict_s"] = first  # support image fetched and described, engine built
            cached1 = [backend.predict([queries[i % 20]])[0] for i in range(repeats)]
            uncached1 = []
            for i in range(repeats):
                support_changed()
                uncached1.append(backend.predict([queries[i % 20]])[0])
            cached20 = [backend.predict(queries)[0] for _ in range(max(2, repeats // 3))]
            uncached20 = []
            for _ in range(max(2, repeats // 3)):
                support_changed()
                uncached20.append(backend.predict(queries)[0])
            out["predict_latency"] = {
                "one_task_cached": percentiles(cached1),
                "one_task_uncached": percentiles(uncached1),
                "batch20_cached": percentiles(cached20),
                "batch20_uncached": percentiles(uncached20),
            }
            out["throughput_tasks_per_s"] = {
                "batch20_cached": 20 / float(np.median(cached20)),
                "one_task_cached": 1 / float(np.median(cached1)),
            }
            webhook_lat = [backend.webhook(project=pid + 2000)[0] for _ in range(50)]
            out["webhook_latency"] = percentiles(webhook_lat)
            out["memory_after_latency"] = process_tree_memory_mb(proc.pid)
            if load_seconds > 0:
                out["load_test"] = load_test(backend, queries, pid, load_seconds)
            out["memory_end"] = process_tree_memory_mb(proc.pid)
    clear_namespace("redis://127.0.0.1:6379/0", env["KPASSIST_QUEUE"])  # the jobs the webhooks queued
    return out
