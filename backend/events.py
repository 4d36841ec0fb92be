"""Durable record of a project's annotation events: an append-only, fsynced JSON-lines file per project, written
before anything else is done with the event (the annotation itself is re-read from Label Studio at training)."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kp_model.files import write_json_atomic

TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "ANNOTATIONS_DELETED", "START_TRAINING")


def project_dir(data_dir: str | Path, project: int) -> Path:
    return Path(data_dir) / "projects" / str(int(project))


class EventLog:
    """``<data_dir>/projects/<id>/events.jsonl`` + ``queue.json`` (how many events the last run started after,
    and whether a job still has to be queued because Redis was down).

    The web process and the training workers write both files: every write holds an exclusive ``flock`` on
    ``events.lock`` of the project, so appends are counted exactly and no update of queue.json is lost."""

    def __init__(self, data_dir: str | Path, project: int) -> None:
        self.dir = project_dir(data_dir, project)
        self.path = self.dir / "events.jsonl"
        self.state_path = self.dir / "queue.json"
        self.lock_path = self.dir / "events.lock"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive across threads and processes (flock locks an open file description, so threads that open the
        file separately exclude each other too)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def append(self, event: str, annotation_id: int | None = None, task_id: int | None = None) -> int:
        """Record one event (fsynced); returns the number of events recorded so far, this one included."""
        line = json.dumps({"event": event, "annotation": annotation_id, "task": task_id, "time": time.time()}) + "\n"
        with self._locked():
            with open(self.path, "a") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            return self.count()

    def count(self) -> int:
        if not self.path.is_file():
            return 0
        with open(self.path, "rb") as f:
            return sum(1 for _ in f)

    def state(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {"started_after": 0, "enqueue_pending": False}

    def update_state(self, **changes: object) -> None:
        """Merge ``changes`` into queue.json (read, merge and atomic replace under the project's lock)."""
        with self._locked():
            write_json_atomic(self.state_path, {**self.state(), **changes})

    def mark_run_started(self) -> int:
        """A training run starts now: events recorded so far count as seen by it. Returns that count."""
        with self._locked():
            seen = self.count()
            write_json_atomic(self.state_path, {**self.state(), "started_after": seen})
            return seen

    def since_last_run(self, count: int | None = None) -> int:
        """Events recorded after the start of the last training run (``count``: the total, when already known)."""
        return (self.count() if count is None else count) - int(self.state().get("started_after", 0))


def pending_projects(data_dir: str | Path) -> list[int]:
    """Projects whose training job could not be queued yet (Redis was down)."""
    root = Path(data_dir) / "projects"
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        if d.name.isdigit() and EventLog(data_dir, int(d.name)).state().get("enqueue_pending"):
            out.append(int(d.name))
    return sorted(out)
