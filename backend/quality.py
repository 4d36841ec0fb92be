"""Live quality of what kpassist predicted, measured on the annotators' own corrections.

Every prediction kpassist hands to Label Studio (/predict, pre-labelling) is remembered per task with its model
version (the newest one per task: what the annotator opened). When an annotation of that task is submitted or
updated, its final keypoints are compared with the predicted ones, matched by label within matched individuals:

- a predicted point is *accepted at a* when the final point of its label lies within a x the individual's size
  (the longer side of its reference box: the final keypoints' extent grown by 10 % on each side,
  kp_model.evaluation.metrics.reference_box); a predicted point whose label the annotator removed is not accepted;
- the mean error is over the points present in both (same unit).

Per model version, over the last N corrected tasks: the acceptance rates at 0.05 and 0.1, the mean error, the count.
``<data_dir>/projects/<id>/quality.sqlite`` holds predictions (one row per task) and corrections (one per annotation).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.convert import LabelledPoints, percent_to_pixels, regions_to_instances
from backend.events import project_dir
from backend.label_config import KeypointControl
from backend.sqlite_db import transaction
from kp_model.evaluation.assignment import assign
from kp_model.evaluation.metrics import normalised_errors, reference_box
from kp_model.training.store import ModelStore

log = logging.getLogger(__name__)

ACCEPT = (0.05, 0.1)  # acceptance radii, x the individual's size

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    task_id INTEGER PRIMARY KEY,
    version TEXT NOT NULL,       -- the model version that predicted it
    result TEXT NOT NULL,        -- JSON list of the predicted regions
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS corrections (
    annotation_id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL,
    version TEXT NOT NULL,
    points INTEGER NOT NULL,     -- predicted points compared
    accepted_005 INTEGER NOT NULL,
    accepted_01 INTEGER NOT NULL,
    matched INTEGER NOT NULL,    -- predicted points whose label the annotation has
    error_sum REAL NOT NULL,     -- sum of the matched points' normalised errors
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS corrections_at ON corrections (at DESC);
"""


class QualityError(RuntimeError):
    """The quality log cannot be read or written (disk full, corrupted file): delete the file to start over."""


@dataclass(frozen=True)
class Comparison:
    """Predicted points of one task against the annotator's final ones."""

    points: int  # predicted points compared
    accepted_005: int
    accepted_01: int
    matched: int  # predicted points whose label the final annotation has (in the matched individual)
    error_sum: float  # their normalised errors summed


def compare(predicted: list[LabelledPoints], final: list[LabelledPoints], width: int, height: int) -> Comparison:
    """Match predicted individuals to final ones (Hungarian on mean normalised error over shared labels) and count
    the accepted points. Coordinates are percent of a ``width`` x ``height`` px image."""

    def px(p: LabelledPoints) -> np.ndarray:
        return percent_to_pixels(p.xy_percent, width, height)

    points = sum(len(p) for p in predicted)
    if not predicted or not final:
        return Comparison(points, 0, 0, 0, 0.0)
    errors: dict[tuple[int, int], np.ndarray] = {}
    cost = np.full((len(predicted), len(final)), 10.0)
    for i, p in enumerate(predicted):
        for j, f in enumerate(final):
            shared = [n for n in p.names if n in f.names]
            if not shared:
                continue
            fxy = px(f)
            box = reference_box(fxy, np.ones(len(f), bool))
            a = px(p)[[p.names.index(n) for n in shared]]
            b = fxy[[f.names.index(n) for n in shared]]
            errors[i, j] = normalised_errors(a, b, box)
            cost[i, j] = float(np.mean(np.minimum(errors[i, j], 1.0)))
    acc5 = acc10 = matched = 0
    total = 0.0
    for i, j in assign(cost):
        e = errors.get((i, j))
        if e is None:
            continue
        acc5 += int((e <= ACCEPT[0]).sum())
        acc10 += int((e <= ACCEPT[1]).sum())
        matched += len(e)
        total += float(e.sum())
    return Comparison(points, acc5, acc10, matched, total)


class QualityLog:
    def __init__(self, data_dir: str | Path, project: int) -> None:
        self.project = int(project)
        self.path = project_dir(data_dir, project) / "quality.sqlite"

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        """A connection in one transaction (committed on success, rolled back on error)."""
        return transaction(self.path, _SCHEMA, QualityError, "quality log")

    def record_predictions(self, items: Iterable[tuple[object, str, list]]) -> None:
        """Remember (task id, model version, predicted regions) per task (items without an integer id or regions are
        left out); a newer prediction replaces the older.
        Quality is grouped by the version's engine part (``engine_of``)."""
        rows = [(int(t), str(v), json.dumps(r), time.time()) for t, v, r in items if isinstance(t, int) and r]
        if rows:
            with self._db() as db:
                db.executemany("INSERT OR REPLACE INTO predictions VALUES (?, ?, ?, ?)", rows)

    def record_annotation(self, annotation: dict, task: dict, controls: list[KeypointControl]) -> dict | None:
        """Compare a submitted (or updated) annotation with the prediction its task showed; the row of that
        annotation is replaced on each update. Returns the comparison row, or None when the task has no remembered
        prediction or the annotation was cancelled."""
        task_id = task.get("id") if isinstance(task, dict) else annotation.get("task")
        annotation_id = annotation.get("id")
        if not isinstance(task_id, int) or not isinstance(annotation_id, int) or annotation.get("was_cancelled"):
            return None
        with self._db() as db:
            row = db.execute("SELECT version, result FROM predictions WHERE task_id = ?", (task_id,)).fetchone()
        if row is None:
            return None
        version, predicted_regions = engine_of(row[0]), json.loads(row[1])
        final_regions = annotation.get("result") or []
        if not isinstance(final_regions, list):
            return None
        width, height = _image_size(final_regions) or _image_size(predicted_regions) or (100, 100)
        totals = [0, 0, 0, 0, 0.0]
        for control in controls:
            predicted, _ = regions_to_instances(predicted_regions, control)
            final, _ = regions_to_instances(final_regions, control)
            c = compare(predicted, final, width, height)
            for k, v in enumerate((c.points, c.accepted_005, c.accepted_01, c.matched, c.error_sum)):
                totals[k] += v
        if not totals[0]:
            return None
        entry = (annotation_id, task_id, version, *totals, time.time())
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO corrections VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", entry)
        keys = ("annotation", "task", "version", "points", "accepted_005", "accepted_01", "matched", "error_sum", "at")
        return dict(zip(keys, entry, strict=True))

    def summary(self, last: int = 200) -> dict[str, dict]:
        """Per model version, over the ``last`` corrected tasks (newest): tasks, points, acceptance@0.05 and @0.1
        (fraction of predicted points), mean normalised error of the points kept (None: none kept), newest correction
        time."""
        with self._db() as db:
            rows = db.execute(
                "SELECT version, points, accepted_005, accepted_01, matched, error_sum, at FROM corrections "
                "ORDER BY at DESC LIMIT ?",
                (int(last),),
            ).fetchall()
        out: dict[str, dict] = {}
        for version, points, a5, a10, matched, err, at in rows:
            s = out.setdefault(version, {"tasks": 0, "points": 0, "a5": 0, "a10": 0, "matched": 0, "err": 0.0, "newest": at})
            s["tasks"] += 1
            s["points"] += points
            s["a5"] += a5
            s["a10"] += a10
            s["matched"] += matched
            s["err"] += err
        return {
            v: {
                "tasks": s["tasks"],
                "points": s["points"],
                "acceptance@0.05": s["a5"] / s["points"],  # rows always hold points (record_annotation)
                "acceptance@0.1": s["a10"] / s["points"],
                "mean_error": s["err"] / s["matched"] if s["matched"] else None,
                "newest": s["newest"],
            }
            for v, s in out.items()
        }


def _image_size(regions: list) -> tuple[int, int] | None:
    """(width, height) px from the first region that carries ``original_width`` and ``original_height``."""
    for r in regions:
        if isinstance(r, dict) and isinstance(r.get("original_width"), int) and isinstance(r.get("original_height"), int):
            if r["original_width"] > 0 and r["original_height"] > 0:
                return r["original_width"], r["original_height"]
    return None


@dataclass(frozen=True)
class RollbackRule:
    min_tasks: int = 8  # corrected tasks each of the two versions needs before they are compared
    margin: float = 0.15  # the served version is rolled back when its acceptance@0.1 is below the previous one's by more

    def __post_init__(self) -> None:
        if self.min_tasks < 1:
            raise ValueError(f"min_tasks must be >= 1, got {self.min_tasks}")
        if not 0 <= self.margin <= 1:
            raise ValueError(f"margin must be in [0, 1], got {self.margin}")


def finetuned_name(project: int, version: str) -> str:
    """The engine name (model version without the support part) of a project's fine-tuned ``version``."""
    return f"kptllm-p{project}-{version}"


def engine_of(model_version: str) -> str:
    """The engine part of a model version (what quality is grouped by): without its ``+support...`` suffix, which
    changes with every label."""
    return model_version.split("+support.")[0]


def rollback_decision(served: dict | None, previous: dict | None, rule: RollbackRule) -> str | None:
    """The reason to roll the served version back, or None. ``served`` and ``previous``: their ``summary`` rows."""
    if not served or not previous or served["tasks"] < rule.min_tasks or previous["tasks"] < rule.min_tasks:
        return None
    drop = previous["acceptance@0.1"] - served["acceptance@0.1"]
    if not drop > rule.margin:  # NaN compares False: never evidence
        return None
    return (
        f"live acceptance@0.1 {served['acceptance@0.1']:.2f} over {served['tasks']} corrected tasks, "
        f"{drop:.2f} below the previous version's {previous['acceptance@0.1']:.2f} over {previous['tasks']}"
    )


def rollback_if_worse(quality: QualityLog, store: ModelStore, default_engine: str, rule: RollbackRule, window: int) -> str | None:
    """Roll the project's served fine-tuned version back to the one served before it (the default engine
    ``default_engine`` when none) when ``rollback_decision`` says so over the ``window`` newest corrections; logged
    and noted in the version's record. Returns the reason, or None (nothing served, or no clear drop)."""
    served = store.served()
    if served is None:
        return None
    previous = (store.record(served).get("metrics") or {}).get("served_version")
    summary = quality.summary(window)
    served_name = finetuned_name(quality.project, served)
    previous_name = finetuned_name(quality.project, previous) if previous else default_engine
    reason = rollback_decision(summary.get(served_name), summary.get(previous_name), rule)
    if reason is not None:
        store.serve_previous(served, previous, reason)
        log.warning("project %s: %s rolled back to %s: %s", quality.project, served, previous or "the default engine", reason)
    return reason
