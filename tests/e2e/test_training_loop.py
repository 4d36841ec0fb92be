"""The fine-tuning loop against real servers: Label Studio 1.23.2, Redis, and real RQ worker processes.

Annotations are the mouse frames' ground truth. Webhooks go to the backend app in this process; training runs in
`rq worker --burst` subprocesses, which share the backend's data directory (as `make serve` sets them up).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from redis import Redis
from rq import Queue

import label_config
from backend.app import create_app
from backend.jobs import FAULT_STAGES
from backend.service import project_store
from backend.settings import Settings
from bench.devservers import REPO, LabelStudioAPI, label_studio
from kp_model.kptllm.checkpoint import load_checkpoint
from kp_model.training.promotion import Paired, PromotionRule, decide

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.redis]

FRAMES = ["img0000.png", "img0020.png", "img0040.png", "img0060.png", "img0080.png", "img0100.png"]
CONFIG = label_config.read("mouse_topview_4")


@pytest.fixture(scope="module")
def project(tmp_path_factory, mouse_dir: Path):
    """A Label Studio project of 6 mouse frames, each annotated with its ground truth."""
    coco = json.loads((mouse_dir / "annotations.json").read_text())
    by_name = {img["file_name"]: img for img in coco["images"]}
    gt = {a["image_id"]: a for a in coco["annotations"]}
    names = coco["categories"][0]["keypoints"]
    with label_studio(tmp_path_factory.mktemp("ls")) as (url, token):
        api = LabelStudioAPI(url, token)
        pid = api.create_project("mouse training", CONFIG)
        tasks = api.import_images(pid, [mouse_dir / "images" / n for n in FRAMES])
        annotations = {}
        for name, task in zip(FRAMES, tasks, strict=True):
            info = by_name[name]
            kps = np.asarray(gt[info["id"]]["keypoints"]).reshape(-1, 3)
            annotations[task["id"]] = api.annotate(task["id"], kps, names, info["width"], info["height"])["id"]
        yield {"api": api, "url": url, "token": token, "pid": pid, "tasks": tasks, "annotations": annotations}


@pytest.fixture()
def loop(project, tmp_path: Path, queue_name: str):
    """The backend app (in process) and a way to run real RQ workers on its queue and data directory."""
    env = {
        **os.environ,
        "LABEL_STUDIO_URL": project["url"],
        "LABEL_STUDIO_API_KEY": project["token"],
        "KPASSIST_DATA_DIR": str(tmp_path / "var"),
        "KPASSIST_QUEUE": queue_name,
        "KPASSIST_TRAIN_STEPS": "40",
        "KPASSIST_LOCK_TTL": "3",
        "KPASSIST_PROMOTE": "always",
    }
    settings = Settings.from_env(env)
    app = create_app(settings)
    client = app.test_client()
    setup = {"project": f"{project['pid']}.1", "schema": CONFIG, "hostname": project["url"], "access_token": project["token"]}
    assert client.post("/setup", json=setup).status_code == 200

    def worker(**extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "rq.cli", "worker", "--burst", "--url", settings.redis_url, queue_name]
        return subprocess.run(cmd, env={**env, **extra}, cwd=REPO, capture_output=True, text=True, timeout=600)

    def webhook(action: str = "START_TRAINING") -> dict:
        resp = client.post("/webhook", json={"action": action, "project": {"id": project["pid"]}})
        assert resp.status_code == 200, resp.json
        return resp.json

    return {
        "client": client,
        "worker": worker,
        "webhook": webhook,
        "store": project_store(settings.data_dir, project["pid"]),
        "settings": settings,
        "setup": setup,
    }


def jobs_of(loop, pid: int) -> dict:
    return loop["client"].get(f"/kpassist/projects/{pid}/jobs").json


def predict_one(loop, project) -> dict:
    task = project["tasks"][1]
    resp = loop["client"].post("/predict", json={"tasks": [task], "project": f"{project['pid']}.1", "label_config": CONFIG})
    assert resp.status_code == 200
    return resp.json


def test_enqueue_train_promote_and_serve_without_restart(project, loop) -> None:
    pid = project["pid"]
    before = predict_one(loop, project)["model_version"]
    assert before.startswith("oneshot-")
    assert loop["webhook"]()["status"] == "queued"
    done = loop["worker"]()
    assert done.returncode == 0, done.stderr[-3000:]
    state = jobs_of(loop, pid)
    [job] = state["jobs"]
    assert job["status"] == "finished" and job["stage"] == "done" and job["progress"]["step"] == 40
    [record] = state["versions"]
    assert state["served"] == "v0001" and record["decision"] == "promote"
    assert {"pck@0.2", "served_pck@0.2"} <= set(record["metrics"]) and record["duration_s"] > 0
    assert record["annotation_ids"] and record["config"]["train"]["steps"] == 40
    trained = {int(k.split("/")[1]) for k in record["annotation_ids"] + record["heldout_annotation_ids"]}
    assert trained == set(project["annotations"].values())
    # the backend serves the promoted version at once, and /setup reports it
    after = predict_one(loop, project)
    assert after["model_version"].startswith(f"kptllm-p{pid}-v0001+support.")
    assert len(after["results"][0]["result"]) == 4
    setup = loop["client"].post("/setup", json=loop["setup"]).json
    assert setup["model_version"].startswith(f"kptllm-p{pid}-v0001")
    assert "training" in done.stderr + done.stdout  # progress is logged
    nice = max(10, os.getpriority(os.PRIO_PROCESS, 0))  # KPASSIST_JOB_NICE's default, or the tests' own if higher
    assert f"at niceness {nice}" in done.stderr + done.stdout  # the job yields the CPU to /predict


def test_the_evidence_rule_decides_promotion(project, loop) -> None:
    loop["webhook"]()
    assert loop["worker"]().returncode == 0
    loop["webhook"]()
    assert loop["worker"](KPASSIST_PROMOTE="evidence").returncode == 0
    records = jobs_of(loop, project["pid"])["versions"]
    second = records[1]
    m = second["metrics"]
    assert second["base_version"] == "v0001" and m["served_version"] == "v0001"
    assert second["evidence"] and {r["source"] for r in second["evidence"]} <= {"heldout", "prequential"}
    expected, _ = decide([Paired(**r) for r in second["evidence"]], PromotionRule())
    assert (second["decision"] == "promote") == expected
    assert loop["store"].served() == ("v0002" if second["decision"] == "promote" else "v0001")


def test_two_jobs_of_one_project_never_overlap(project, loop) -> None:
    queue = Queue(loop["settings"].queue_name, connection=Redis())
    for i in range(2):  # bypass the debounce: two jobs of the same project at once
        queue.enqueue_call(
            "backend.jobs.train_project",
            args=(project["pid"], loop["settings"].data_dir, project["url"]),
            job_id=f"train-{project['pid']}-lock{i}",
        )
    results = []
    threads = [threading.Thread(target=lambda: results.append(loop["worker"]())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.returncode for r in results] == [0, 0]
    a, b = sorted(jobs_of(loop, project["pid"])["versions"], key=lambda r: r["started_at"])
    assert a["finished_at"] <= b["started_at"], (a, b)  # the project lock serialised them


def test_worker_killed_at_each_stage_leaves_the_served_model(project, loop) -> None:
    pid = project["pid"]
    loop["webhook"]()
    assert loop["worker"]().returncode == 0
    served = loop["store"].served()
    assert served == "v0001"
    for stage in FAULT_STAGES:
        loop["webhook"]()
        loop["worker"](KPASSIST_FAULT_AT=stage)
        state = jobs_of(loop, pid)
        last = state["jobs"][-1]
        assert last["status"] == "failed" and "terminated unexpectedly" in last["failure"], (stage, last)
        assert loop["store"].served() == served, stage  # the served model is untouched
        load_checkpoint(loop["store"].checkpoint_dir(served))  # and loadable
        assert predict_one(loop, project)["model_version"].startswith(f"kptllm-p{pid}-{served}")
        assert all(r["version"] == "v0001" or stage in ("promote",) for r in state["versions"]), stage
    # the next clean run cleans the leftovers of the crashed ones and trains normally
    loop["webhook"]()
    assert loop["worker"]().returncode == 0
    assert not [p for p in loop["store"].versions_dir.iterdir() if p.name.endswith(".tmp")]
    assert loop["store"].served() not in (None, served)


def test_deleted_annotation_is_not_trained_on(project, loop) -> None:
    task_id, ann_id = next(iter(project["annotations"].items()))
    project["api"]("DELETE", f"/api/annotations/{ann_id}")
    loop["webhook"]("ANNOTATION_DELETED")
    loop["webhook"]()
    assert loop["worker"]().returncode == 0
    [record] = jobs_of(loop, project["pid"])["versions"]
    used = {k.split("/")[1] for k in record["annotation_ids"] + record["heldout_annotation_ids"]}
    assert str(ann_id) not in used and len(used) == len(project["annotations"]) - 1
