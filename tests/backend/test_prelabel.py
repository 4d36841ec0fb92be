"""Pre-labelling runs against a real Redis (no worker): start, one run at a time, status, cancel, the endpoints'
answers. The chunks' work against a real Label Studio and RQ worker is in tests/e2e/test_prelabel.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis import Redis
from rq import Queue

import label_config
from backend.app import create_app
from backend.prelabel import PrelabelError, Prelabels, prelabel_queue_name
from backend.settings import Settings

pytestmark = pytest.mark.redis

URL = "redis://127.0.0.1:6379/0"


def test_a_run_is_queued_reported_refused_twice_and_cancelled(tmp_path: Path, queue_name: str) -> None:
    runs = Prelabels(Settings(data_dir=str(tmp_path), queue_name=queue_name, prelabel_chunk=7))
    queue = Queue(prelabel_queue_name(queue_name), connection=Redis.from_url(URL))
    assert runs.status(3) is None
    state = runs.start(3, "http://ls.example")
    assert (state["status"], state["total"], state["done"], state["eta_s"]) == ("planning", 0, 0, None)
    [job_id] = queue.get_job_ids()
    assert job_id == f"prelabel-3-{state['run']}-plan"
    assert queue.fetch_job(job_id).args == (3, state["run"], str(tmp_path), "http://ls.example", 7)
    with pytest.raises(PrelabelError, match="cancel it first"):
        runs.start(3)
    assert runs.status(4) is None  # runs are per project
    cancelled = runs.cancel(3)
    assert cancelled["status"] == "cancelled" and queue.get_job_ids() == []
    assert runs.start(3)["run"] != state["run"]  # a new run may start once the old one is cancelled


def test_chunk_size_must_be_positive(tmp_path: Path, queue_name: str) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        Prelabels(Settings(data_dir=str(tmp_path), queue_name=queue_name)).start(3, "", chunk_size=-1)


def test_endpoints(tmp_path: Path, queue_name: str) -> None:
    app = create_app(Settings(data_dir=str(tmp_path), queue_name=queue_name))
    client = app.test_client()
    assert client.get("/kpassist/projects/5/prelabel").status_code == 404
    assert client.delete("/kpassist/projects/5/prelabel").status_code == 404
    resp = client.post("/kpassist/projects/5/prelabel", json={})
    assert resp.status_code == 400 and "Label Studio URL" in resp.get_json()["detail"]
    client.post("/setup", json={"project": "5.1", "schema": label_config.read("mouse_topview_4"), "hostname": "http://ls:8080"})
    assert client.post("/kpassist/projects/5/prelabel", json={"chunk_size": "ten"}).status_code == 400
    resp = client.post("/kpassist/projects/5/prelabel", json={"chunk_size": 20})
    assert resp.status_code == 202 and resp.get_json()["status"] == "planning"
    [job_id] = Queue(prelabel_queue_name(queue_name), connection=Redis.from_url(URL)).get_job_ids()
    assert Queue(prelabel_queue_name(queue_name), connection=Redis.from_url(URL)).fetch_job(job_id).args[3:] == (
        "http://ls:8080",
        20,
    )  # the project's /setup hostname
    assert client.post("/kpassist/projects/5/prelabel", json={}).status_code == 409
    assert client.get("/kpassist/projects/5/prelabel").get_json()["status"] == "planning"
    assert client.delete("/kpassist/projects/5/prelabel").get_json()["status"] == "cancelled"
