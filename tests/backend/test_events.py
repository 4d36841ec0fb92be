"""The project's event log and queue state are written by the web process and the training workers at once: no
event is miscounted and no update of queue.json is lost, across processes."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from backend.events import EventLog

N = 150  # events / state keys per process


def _writer(data_dir: str, tag: str, out: str) -> None:
    """One process: append N events and merge N keys of its own into queue.json, recording the counts it got."""
    log = EventLog(data_dir, 1)
    counts = []
    for i in range(N):
        counts.append(log.append("ANNOTATION_CREATED", i, i))
        log.update_state(**{f"{tag}{i}": i})
    Path(out).write_text(json.dumps(counts))


def test_two_processes_lose_no_event_and_no_state_update(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, as gunicorn and rq workers are
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), tag, str(tmp_path / f"{tag}.json"))) for tag in ("web", "worker")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    log = EventLog(tmp_path, 1)
    assert log.count() == 2 * N
    counts = json.loads((tmp_path / "web.json").read_text()) + json.loads((tmp_path / "worker.json").read_text())
    assert sorted(counts) == list(range(1, 2 * N + 1))  # each append saw its own exact position
    state = log.state()
    assert all(state.get(f"{tag}{i}") == i for tag in ("web", "worker") for i in range(N))


def test_a_run_start_marks_every_event_so_far_as_seen(tmp_path: Path) -> None:
    log = EventLog(tmp_path, 2)
    for i in range(3):
        log.append("ANNOTATION_CREATED", i)
    assert log.since_last_run() == 3
    assert log.mark_run_started() == 3
    log.append("ANNOTATION_UPDATED", 1)
    assert log.since_last_run() == 1 and log.state()["started_after"] == 3
