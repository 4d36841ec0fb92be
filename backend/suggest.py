"""Which tasks to label next: unlabelled tasks whose predictions scored lowest (the likeliest to be wrong), spread over
different-looking images (global image descriptor), after SLEAP's prediction-score and image-feature suggestions.

Bounded cost whatever the project's size: ONE Label Studio request (its Data Manager sorts by prediction score) for
``pool x n`` candidates, whose images are then read to spread the choice."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from backend.ls_client import LabelStudioClient
from kp_model.fewshot import global_descriptor
from kp_model.images import ImageLoadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    task_id: int
    score: float  # the task's newest prediction score, in [0, 1]
    descriptor: np.ndarray | None  # global image descriptor (None: image unreadable)


def low_score_candidates(client: LabelStudioClient, project: int, limit: int, model_version: str = "") -> list[dict]:
    """Up to ``limit`` unlabelled tasks holding predictions, lowest prediction score first (one request)."""
    items = [
        {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0},
        {"filter": "filter:tasks:total_predictions", "operator": "greater", "type": "Number", "value": 0},
    ]
    query = {"filters": {"conjunction": "and", "items": items}, "ordering": ["tasks:predictions_score"]}
    params = {"project": project, "fields": "all", "page": 1, "page_size": limit, "query": json.dumps(query)}
    tasks = client.tasks_query(params)
    if model_version:  # only predictions of the served version say how the served model does
        tasks = [t for t in tasks if any(p.get("model_version") == model_version for p in t.get("predictions") or [])]
    return tasks


def task_score(task: dict, model_version: str = "") -> float:
    """The score of the task's newest prediction (of ``model_version`` when given)."""
    preds = [p for p in task.get("predictions") or [] if not model_version or p.get("model_version") == model_version]
    if not preds:
        return 0.0
    newest = max(preds, key=lambda p: (str(p.get("created_at") or ""), p.get("id") or 0))
    return float(newest.get("score") or 0.0)


def choose(candidates: list[Candidate], n: int) -> list[Candidate]:
    """``n`` candidates: the lowest score first, then each next one maximising (1 - score) x its descriptor distance
    to the nearest one chosen (1 - correlation), so that low scores on different-looking images come first."""
    left = list(candidates)
    chosen: list[Candidate] = []
    while left and len(chosen) < n:
        if not chosen:
            best = min(left, key=lambda c: c.score)
        else:

            def gain(c: Candidate) -> float:
                if c.descriptor is None:
                    return 0.0
                seen = [x.descriptor for x in chosen if x.descriptor is not None]
                far = min((1.0 - float(c.descriptor @ d) for d in seen), default=1.0)
                return (1.0 - c.score) * max(far, 0.0)

            best = max(left, key=gain)
        chosen.append(best)
        left.remove(best)
    return chosen


def suggest(
    client: LabelStudioClient, project: int, fetch: Callable[[str], np.ndarray], image_field: str, n: int = 10,
    pool: int = 5, model_version: str = "",
) -> list[dict]:  # fmt: skip
    """The ``n`` tasks to label next: ``[{"task": id, "score": s, "image": ref}]``, in the order to label them."""
    tasks = low_score_candidates(client, project, n * pool, model_version)
    candidates, refs = [], {}
    for task in tasks:
        ref = (task.get("data") or {}).get(image_field)
        descriptor = None
        if isinstance(ref, str):
            try:
                descriptor = global_descriptor(fetch(ref))
            except ImageLoadError as exc:
                log.warning("task %s: image unreadable for suggestions: %s", task.get("id"), exc)
        candidates.append(Candidate(int(task["id"]), task_score(task, model_version), descriptor))
        refs[int(task["id"])] = ref
    return [{"task": c.task_id, "score": round(c.score, 4), "image": refs[c.task_id]} for c in choose(candidates, n)]
