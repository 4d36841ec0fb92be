"""The project's annotation index: newest first, webhooks keep it current, a reconcile makes it what Label Studio
holds without undoing what webhooks wrote meanwhile; the support lookup reads it with no Label Studio request."""

from __future__ import annotations

import time
from pathlib import Path

import label_config
from backend.annotation_index import AnnotationIndex
from backend.label_config import parse_keypoint_controls
from backend.service import Connection, PredictionService
from backend.settings import Settings
from backend.training_queue import TrainingQueue

CONTROLS = parse_keypoint_controls(label_config.read("mouse_topview_4"))


def ann(ann_id: int, task: int, stamp: str, label: str = "snout", cancelled: bool = False) -> dict:
    region = {"from_name": "kp", "to_name": "image", "type": "keypointlabels",
              "value": {"x": 10.0, "y": 20.0, "width": 0.8, "keypointlabels": [label]}}  # fmt: skip
    return {"id": ann_id, "task": task, "updated_at": stamp, "was_cancelled": cancelled, "result": [region]}


def task(task_id: int) -> dict:
    return {"id": task_id, "data": {"image": f"/data/upload/1/{task_id}.png"}}


def test_newest_first_older_copies_ignored_cancelled_left_out(tmp_path: Path) -> None:
    index = AnnotationIndex(tmp_path, 1)
    index.upsert(ann(1, 10, "2026-01-01T10:00:00Z"), task(10))
    index.upsert(ann(2, 11, "2026-01-01T12:00:00Z"), task(11))
    index.upsert(ann(3, 12, "2026-01-01T13:00:00Z", cancelled=True), task(12))
    assert [t["annotations"][0]["id"] for t in index.recent_tasks()] == [2, 1]
    assert index.recent_tasks()[0]["data"] == {"image": "/data/upload/1/11.png"}
    assert index.upsert(ann(2, 11, "2026-01-01T11:00:00Z", label="tailbase"), task(11)) is False  # a late, older copy
    assert index.recent_tasks()[0]["annotations"][0]["result"][0]["value"]["keypointlabels"] == ["snout"]
    index.upsert(ann(1, 10, "2026-01-01T14:00:00Z"), task(10))  # edited: now the newest
    assert [t["annotations"][0]["id"] for t in index.recent_tasks()] == [1, 2]
    assert index.count() == 3 and index.reconciled_at is None


def test_deletes_of_annotations_and_tasks(tmp_path: Path) -> None:
    index = AnnotationIndex(tmp_path, 1)
    for i in range(4):
        index.upsert(ann(i, 10 + i // 2, f"2026-01-01T1{i}:00:00Z"), task(10 + i // 2))
    assert index.delete([3]) == 1
    assert index.delete_tasks([10]) == 2  # annotations 0 and 1
    assert [t["annotations"][0]["id"] for t in index.recent_tasks()] == [2]


def test_reconcile_adds_updates_removes_but_keeps_what_webhooks_wrote_meanwhile(tmp_path: Path) -> None:
    index = AnnotationIndex(tmp_path, 1)
    index.upsert(ann(1, 10, "2026-01-01T10:00:00Z"), task(10))  # deleted in LS while the backend was down
    index.upsert(ann(2, 11, "2026-01-01T10:00:00Z"), task(11))  # edited in LS while down
    started = time.time()
    index.upsert(ann(5, 15, "2026-01-01T16:00:00Z"), task(15))  # a webhook during the reconcile (after its read)
    index.upsert(ann(6, 16, "2026-01-01T16:00:00Z"), task(16))
    index.delete([6])  # ... and a delete during it: the reconcile read it before, it must stay deleted
    label_studio = [
        {**task(11), "annotations": [ann(2, 11, "2026-01-01T11:00:00Z", label="tailbase")]},
        {**task(12), "annotations": [ann(3, 12, "2026-01-01T12:00:00Z")]},
        {**task(16), "annotations": [ann(6, 16, "2026-01-01T16:00:00Z")]},
    ]
    counts = index.reconcile(label_studio, started)
    ids = [t["annotations"][0]["id"] for t in index.recent_tasks()]
    assert ids == [5, 3, 2] and counts["removed"] == 1  # 1 removed, 3 added, 2 updated, 5 kept, 6 stays deleted
    assert index.recent_tasks()[2]["annotations"][0]["result"][0]["value"]["keypointlabels"] == ["tailbase"]
    assert index.reconciled_at is not None


def test_a_deletion_while_the_reconcile_reads_label_studio_stays_deleted(tmp_path: Path) -> None:
    """The race a real LS showed (tests/e2e/test_annotation_index.py): the reconcile has read the page holding an
    annotation when its deletion webhook arrives; the reconcile must not write it back."""
    index = AnnotationIndex(tmp_path, 1)
    index.upsert(ann(1, 10, "2026-01-01T10:00:00Z"), task(10))
    index.upsert(ann(2, 11, "2026-01-01T11:00:00Z"), task(11))
    started = time.time()

    def pages():  # Label Studio's pages, read one by one; annotation 2's deletion webhook comes after its page
        yield {**task(10), "annotations": [ann(1, 10, "2026-01-01T10:00:00Z")]}
        yield {**task(11), "annotations": [ann(2, 11, "2026-01-01T11:00:00Z")]}
        index.delete([2])
        yield {**task(12), "annotations": [ann(3, 12, "2026-01-01T12:00:00Z")]}

    counts = index.reconcile(pages(), started)
    assert [t["annotations"][0]["id"] for t in index.recent_tasks()] == [3, 1]
    assert counts["seen"] == 2 and index.count() == 2


class CountingClient:
    """Stands in for LabelStudioClient: counts requests and serves a fixed list of annotated tasks."""

    url = "http://ls.local/"

    def __init__(self, tasks: list[dict]) -> None:
        self.tasks, self.requests = tasks, 0

    def annotated_tasks(self, project: int, page_size: int = 100, newest_first: bool = False, max_pages: int = 0):
        self.requests += 1
        return iter(self.tasks[:page_size])


def test_support_lookup_reads_the_index_with_a_bounded_first_request(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), redis_url="redis://127.0.0.1:1/0")  # Redis unreachable: thread fallback
    service = PredictionService(settings)
    service.training = TrainingQueue(settings)
    newest = [{**task(20 + i), "annotations": [ann(100 + i, 20 + i, f"2026-02-01T10:{i:02d}:00Z")]} for i in range(60)]
    client = CountingClient(newest[::-1])
    conn = Connection(client, None)
    [refs] = service.find_supports(7, CONTROLS, conn)
    assert refs[0].annotation_id == 159  # one bounded request found the newest annotation
    deadline = time.monotonic() + 10
    while service.index(7).reconciled_at is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the reconcile (on a thread: Redis is down) pages through the project once
    assert client.requests == 2
    for _ in range(5):
        service.find_supports(7, CONTROLS, conn)
    assert client.requests == 2  # no later lookup asks Label Studio
    service.index_event(7, "ANNOTATIONS_DELETED", {"annotations": [{"id": 159}]})
    assert service.find_supports(7, CONTROLS, conn)[0][0].annotation_id == 158
    service.index_event(7, "ANNOTATION_CREATED", {"annotation": ann(200, 30, "2026-03-01T00:00:00Z"), "task": task(30)})
    assert service.find_supports(7, CONTROLS, conn)[0][0].annotation_id == 200
