"""The project's annotations as the backend knows them, so that /setup and /predict find their support with no Label
Studio request, whatever the project's size.

``<data_dir>/projects/<id>/annotations.sqlite`` holds one row per annotation (its task's data, result, updated_at,
cancelled flag). Webhooks keep it current (created, updated, deleted annotations; deleted tasks). A reconcile (an RQ
job, ``backend.jobs.reconcile_project``) pages through the project once and replaces what webhooks may have missed
(the backend was down, a webhook timed out): annotations it did not see are removed, unless a webhook wrote them
after the reconcile started; annotations deleted after it started stay deleted (tombstones).

SQLite serialises writers across processes (the web workers and the RQ workers write the same file).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from backend.events import project_dir
from backend.ls_client import LabelStudioClient, LabelStudioError
from backend.settings import Settings
from backend.sqlite_db import transaction
from backend.support import parse_time
from backend.training_queue import reconcile_key, redis_connection

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS annotations (
    id INTEGER PRIMARY KEY,      -- Label Studio annotation id
    task_id INTEGER NOT NULL,
    updated REAL NOT NULL,       -- updated_at (else created_at) as epoch seconds, for ordering
    stamp TEXT NOT NULL,         -- updated_at as Label Studio wrote it
    cancelled INTEGER NOT NULL,
    result TEXT NOT NULL,        -- JSON list of regions
    task_data TEXT NOT NULL,     -- JSON task data (the image reference)
    written REAL NOT NULL        -- when this row was last written (reconcile bookkeeping)
);
CREATE INDEX IF NOT EXISTS annotations_updated ON annotations (updated DESC, id DESC);
CREATE INDEX IF NOT EXISTS annotations_task ON annotations (task_id);
CREATE TABLE IF NOT EXISTS tombstones (id INTEGER PRIMARY KEY, deleted REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class AnnotationIndexError(RuntimeError):
    """The annotation index cannot be read or written (disk full, corrupted file): delete the file to rebuild it."""


def stamp_seconds(stamp: str) -> float:
    """Epoch seconds of a Label Studio timestamp (backend.support.parse_time); unparseable ones sort first."""
    return parse_time(stamp).timestamp()


class AnnotationIndex:
    def __init__(self, data_dir: str | Path, project: int) -> None:
        self.project = int(project)
        self.path = project_dir(data_dir, project) / "annotations.sqlite"

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        """A connection in one transaction (committed on success, rolled back on error)."""
        return transaction(self.path, _SCHEMA, AnnotationIndexError, "annotation index")

    # --- writes: webhooks and reconciles ---------------------------------------------------------------------------

    def upsert(self, annotation: dict, task: dict) -> bool:
        """Record an annotation as Label Studio sent it (webhook ``annotation`` + ``task``); an older copy than the
        indexed one is ignored. Returns whether the row changed."""
        return self._upsert_many([(annotation, task)], time.time()) > 0

    def _upsert_many(self, pairs: Iterable[tuple[dict, dict]], now: float, db: sqlite3.Connection | None = None) -> int:
        rows = []
        for ann, task in pairs:
            ann_id = ann.get("id") if isinstance(ann, dict) else None
            task_id = task.get("id") if isinstance(task, dict) else None
            if not isinstance(task_id, int) and isinstance(ann, dict) and isinstance(ann.get("task"), int):
                task_id = ann["task"]
            if not isinstance(ann_id, int) or not isinstance(task_id, int):
                log.warning("project %s: annotation without an id or task id not indexed", self.project)
                continue
            stamp = str(ann.get("updated_at") or ann.get("created_at") or "")
            data = task.get("data") if isinstance(task, dict) and isinstance(task.get("data"), dict) else {}
            result = ann.get("result") if isinstance(ann.get("result"), list) else []
            rows.append(
                (ann_id, task_id, stamp_seconds(stamp), stamp, int(bool(ann.get("was_cancelled"))), json.dumps(result),
                 json.dumps(data), now)
            )  # fmt: skip
        if not rows:
            return 0
        sql = """INSERT INTO annotations (id, task_id, updated, stamp, cancelled, result, task_data, written)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT(id) DO UPDATE SET task_id=excluded.task_id, updated=excluded.updated, stamp=excluded.stamp,
                     cancelled=excluded.cancelled, result=excluded.result, task_data=excluded.task_data,
                     written=excluded.written
                 WHERE excluded.updated >= annotations.updated"""
        if db is not None:
            return db.executemany(sql, rows).rowcount
        with self._db() as conn:
            conn.executemany("DELETE FROM tombstones WHERE id = ?", [(r[0],) for r in rows])
            return conn.executemany(sql, rows).rowcount

    def add_tasks(self, tasks: Iterable[dict]) -> int:
        """Record the annotations of Label Studio task dicts (``{"id", "data", "annotations": [...]}``)."""
        pairs = [(ann, task) for task in tasks for ann in (task.get("annotations") or []) if isinstance(ann, dict)]
        return self._upsert_many(pairs, time.time()) if pairs else 0

    def delete(self, annotation_ids: Iterable[int]) -> int:
        """Forget annotations (deleted in Label Studio); a reconcile running now will not bring them back."""
        ids = [(int(i),) for i in annotation_ids]
        now = time.time()
        with self._db() as db:
            db.executemany("INSERT OR REPLACE INTO tombstones (id, deleted) VALUES (?, ?)", [(i, now) for (i,) in ids])
            return db.executemany("DELETE FROM annotations WHERE id = ?", ids).rowcount

    def delete_tasks(self, task_ids: Iterable[int]) -> int:
        """Forget every annotation of these tasks (deleted in Label Studio)."""
        tasks = [(int(t),) for t in task_ids]
        now = time.time()
        with self._db() as db:
            for (task,) in tasks:
                ids = [r[0] for r in db.execute("SELECT id FROM annotations WHERE task_id = ?", (task,))]
                db.executemany("INSERT OR REPLACE INTO tombstones (id, deleted) VALUES (?, ?)", [(i, now) for i in ids])
            return db.executemany("DELETE FROM annotations WHERE task_id = ?", tasks).rowcount

    def reconcile(self, tasks: Iterable[dict], started: float) -> dict[str, int]:
        """Make the index what Label Studio holds: ``tasks`` are every annotated task of the project with their
        ``annotations`` (read after ``started``, epoch seconds). Rows no reconcile or webhook wrote since ``started``
        are removed; annotations deleted (tombstoned) since ``started`` are not re-added."""
        # read every page first (Label Studio requests, no lock held), then tombstones and writes under one write
        # lock: a deletion webhook is either committed before (its tombstone is seen here) or after (it deletes the
        # row this writes). Tombstones read before the pages would miss a deletion made while they were read.
        read = [(ann, task) for task in tasks for ann in (task.get("annotations") or []) if isinstance(ann, dict)]
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            dead = {r[0] for r in db.execute("SELECT id FROM tombstones WHERE deleted >= ?", (started,))}
            pairs = [(ann, task) for ann, task in read if ann.get("id") not in dead]
            seen = len(pairs)
            written = self._upsert_many(pairs, time.time(), db)  # an unchanged row is rewritten too (same stamp: >=)
            removed = db.execute("DELETE FROM annotations WHERE written < ?", (started,)).rowcount
            db.execute("DELETE FROM tombstones WHERE deleted < ?", (started - 86400,))
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('reconciled_at', ?)", (str(time.time()),))
        log.info(
            "project %s: index reconciled, %d annotations seen, %d written, %d removed", self.project, seen, written, removed
        )
        return {"seen": seen, "written": written, "removed": removed}

    # --- reads: /setup and /predict --------------------------------------------------------------------------------

    @property
    def reconciled_at(self) -> float | None:
        """When the last reconcile finished (epoch seconds), None if the project was never reconciled."""
        if not self.path.is_file():
            return None
        with self._db() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'reconciled_at'").fetchone()
        return float(row[0]) if row else None

    def count(self) -> int:
        if not self.path.is_file():
            return 0
        with self._db() as db:
            return int(db.execute("SELECT COUNT(*) FROM annotations").fetchone()[0])

    def recent_tasks(self, limit: int = 50, offset: int = 0) -> list[dict]:
        """The not cancelled annotations, most recently updated first, each as a Label Studio task dict holding that
        one annotation (``{"id", "data", "annotations": [{"id", "result", "updated_at", "was_cancelled"}]}``)."""
        if not self.path.is_file():
            return []
        with self._db() as db:
            rows = db.execute(
                "SELECT id, task_id, stamp, result, task_data FROM annotations WHERE cancelled = 0 "
                "ORDER BY updated DESC, id DESC LIMIT ? OFFSET ?",
                (int(limit), int(offset)),
            ).fetchall()
        return [
            {
                "id": task_id,
                "data": json.loads(data),
                "annotations": [{"id": ann_id, "result": json.loads(result), "updated_at": stamp, "was_cancelled": False}],
            }
            for ann_id, task_id, stamp, result, data in rows
        ]

    def iter_recent(self, page: int = 50) -> Iterator[dict]:
        """recent_tasks page by page (the caller stops as soon as it has found what it needs)."""
        offset = 0
        while True:
            tasks = self.recent_tasks(page, offset)
            yield from tasks
            if len(tasks) < page:
                return
            offset += page


def reconcile_with(index: AnnotationIndex, client: LabelStudioClient, project: int) -> dict[str, int]:
    """Page through the project's annotated tasks once and reconcile the index with them."""
    started = time.time()
    return index.reconcile(client.annotated_tasks(project), started)


def reconcile_logged(index: AnnotationIndex, client: LabelStudioClient | None, project: int) -> None:
    """reconcile_with on a background thread (Redis down): a failure is logged, never lost."""
    if client is None:
        log.warning("project %s: no Label Studio URL: the annotation index cannot be reconciled", project)
        return
    try:
        reconcile_with(index, client, project)
    except Exception:
        log.exception("project %s: reconciling the annotation index failed; the next process start retries", project)


def reconcile_project(project: int, data_dir: str, ls_url: str = "") -> dict[str, int]:
    """RQ job: reconcile the project's annotation index with Label Studio (settings from the worker's environment)."""
    settings = Settings.from_env()
    url = ls_url or settings.label_studio_url
    if not url:
        raise LabelStudioError("no Label Studio URL for the worker: set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY)")
    redis = redis_connection(settings.redis_url)
    redis.delete(reconcile_key(settings.queue_name, project))  # webhooks from now on are in the index; restarts re-queue
    return reconcile_with(AnnotationIndex(data_dir, project), LabelStudioClient(url, settings.label_studio_api_key), project)
