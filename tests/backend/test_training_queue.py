"""The training queue against a real Redis: durable events, debouncing, the threshold, Redis down and back."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue

import label_config
from backend.app import create_app
from backend.events import EventLog
from backend.settings import Settings
from backend.training_queue import clear_namespace
from bench.devservers import free_port

pytestmark = pytest.mark.redis

CONFIG = label_config.read("mouse_topview_4")


def app_client(tmp_path: Path, queue_name: str, **kw):
    settings = Settings(data_dir=str(tmp_path / "var"), queue_name=queue_name, **kw)
    app = create_app(settings)
    client = app.test_client()
    client.post("/setup", json={"project": "7.1", "schema": CONFIG})
    return client


def hook(client, action: str, ann: int = 1):
    return client.post("/webhook", json={"action": action, "project": {"id": 7}, "annotation": {"id": ann}, "task": {"id": ann}})


def test_burst_of_50_annotations_queues_one_job(tmp_path: Path, queue_name: str) -> None:
    client = app_client(tmp_path, queue_name, train_threshold=1)
    answers = [hook(client, "ANNOTATION_UPDATED", i) for i in range(50)]
    assert all(a.status_code == 200 for a in answers)
    assert answers[0].json["status"] == "queued"
    assert {a.json["status"] for a in answers[1:]} == {"debounced"}
    assert len({a.json["job_id"] for a in answers}) == 1
    assert Queue(queue_name, connection=Redis()).count == 1
    assert EventLog(tmp_path / "var", 7).count() == 50  # every event recorded durably
    jobs = client.get("/kpassist/projects/7/jobs").json
    assert [j["status"] for j in jobs["jobs"]] == ["queued"] and jobs["changes_since_last_run"] == 50


def test_threshold_and_start_training(tmp_path: Path, queue_name: str) -> None:
    client = app_client(tmp_path, queue_name, train_threshold=3)
    assert [hook(client, "ANNOTATION_CREATED", i).json["status"] for i in range(2)] == ["recorded", "recorded"]
    assert Queue(queue_name, connection=Redis()).count == 0
    assert hook(client, "ANNOTATION_DELETED", 5).json["status"] == "queued"  # third change reaches the threshold
    clear_namespace("redis://127.0.0.1:6379/0", queue_name)
    assert hook(client, "START_TRAINING").json["status"] == "queued"  # always queues, whatever the count


def test_other_events_are_ignored(tmp_path: Path, queue_name: str) -> None:
    client = app_client(tmp_path, queue_name)
    resp = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 7}})
    assert resp.json["status"] == "ignored" and EventLog(tmp_path / "var", 7).count() == 0


@pytest.fixture()
def own_redis(tmp_path: Path):
    """A redis-server of our own on a free port, which the test may stop and restart."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (.ci/run installs the Debian package)")
    port = free_port()
    procs: list[subprocess.Popen] = []

    def start() -> None:
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
        )
        procs.append(proc)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def stop() -> None:
        procs[-1].terminate()
        procs[-1].wait(10)

    start()
    yield f"redis://127.0.0.1:{port}/0", start, stop
    if procs[-1].poll() is None:
        stop()


def test_redis_down_keeps_the_event_and_queues_when_back(tmp_path: Path, queue_name: str, own_redis) -> None:
    url, start, stop = own_redis
    client = app_client(tmp_path, queue_name, redis_url=url, train_threshold=1)
    stop()
    resp = hook(client, "ANNOTATION_CREATED", 1)
    assert resp.status_code == 202 and resp.json["status"] == "kept" and "Redis" in resp.json["detail"]
    assert EventLog(tmp_path / "var", 7).state()["enqueue_pending"] is True
    predict = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": "x.png"}}], "project": "7.1"})
    assert predict.status_code == 200  # predictions do not depend on Redis
    jobs = client.get("/kpassist/projects/7/jobs")
    assert jobs.status_code == 200 and "Redis unreachable" in jobs.json["queue_error"] and jobs.json["enqueue_pending"]
    start()
    deadline = time.monotonic() + 20
    queue = Queue(queue_name, connection=Redis.from_url(url))
    while queue.count == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert queue.count == 1  # the background retry queued the kept event's job
    assert EventLog(tmp_path / "var", 7).state()["enqueue_pending"] is False


def test_a_lost_pending_job_does_not_block_training(tmp_path: Path, queue_name: str) -> None:
    """The debounce key names a job Redis no longer has (expired, deleted): the next event queues a new one."""
    client = app_client(tmp_path, queue_name)
    Redis().set(f"{queue_name}:pending:7", "train-7-gone")
    resp = hook(client, "START_TRAINING")
    assert resp.json["status"] == "queued" and resp.json["job_id"] != "train-7-gone"
    assert Queue(queue_name, connection=Redis()).count == 1
