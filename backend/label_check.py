"""Left/right label check of submitted annotations, with the served fine-tuned model's understanding task: a
pair whose two points both read as the other side is reported as a warning (logged, and listed at
GET /kpassist/projects/<id>/warnings). Runs on one background thread so the webhook returns at once."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from backend.convert import AnnotationFormatError, percent_to_pixels, regions_to_instances
from backend.label_config import KeypointControl
from kp_model.images import ImageLoadError
from kp_model.kptllm.predictor import KptLLMPredictor

log = logging.getLogger(__name__)


class LabelChecker:
    def __init__(self, service, keep: int = 100) -> None:
        self.service = service
        self.keep = keep  # warnings kept per project (newest)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="label-check")
        self._warnings: dict[int, deque] = {}
        self._lock = threading.Lock()

    def submit(self, project: int, task: dict, annotation: dict, controls: list[KeypointControl], conn) -> Future | None:
        """Check in the background when the project serves a fine-tuned model (the default engine cannot describe)."""
        if self.service.served_version(project) is None:
            return None
        future = self._pool.submit(self._check, project, task, annotation, controls, conn)
        future.add_done_callback(lambda done: _log_failure(done, project, annotation.get("id")))
        return future

    def _check(self, project: int, task: dict, annotation: dict, controls: list[KeypointControl], conn) -> list[dict]:
        found = []
        try:
            predictor = self.service.served_predictor(project)
            if not isinstance(predictor, KptLLMPredictor):  # the default engine cannot read what is at a point
                return []
            for control in controls:
                ref = (task.get("data") or {}).get(control.image_field)
                instances, _ = regions_to_instances(annotation.get("result") or [], control)
                if not isinstance(ref, str) or not any(len(points) >= 2 for points in instances):
                    continue
                image = conn.fetcher.fetch(ref)
                h, w = image.shape[:2]
                for points in (p for p in instances if len(p) >= 2):  # every individual
                    px = percent_to_pixels(np.asarray(points.xy_percent), w, h)
                    found.extend(self._warn(project, task, annotation, predictor.check_labels(image, px, list(points.names))))
        except (AnnotationFormatError, ImageLoadError) as exc:
            log.warning("project %s: label check of annotation %s skipped: %s", project, annotation.get("id"), exc)
            return []
        with self._lock:
            self._warnings.setdefault(project, deque(maxlen=self.keep)).extend(found)
        return found

    @staticmethod
    def _warn(project: int, task: dict, annotation: dict, warnings: list) -> list[dict]:
        """The entries (logged) of ``check_labels`` warnings on one individual of ``annotation``."""
        found = []
        for warning in warnings:
            entry = {
                "project": project,
                "task": task.get("id"),
                "annotation": annotation.get("id"),
                "labels": list(warning.names),
                "read_as": list(warning.read_as),
                "message": warning.message,
                "time": time.time(),
            }
            log.warning("project %s task %s annotation %s: %s", project, task.get("id"), annotation.get("id"), warning.message)
            found.append(entry)
        return found

    def warnings(self, project: int) -> list[dict]:
        with self._lock:
            return list(self._warnings.get(project, ()))


def _log_failure(done: Future, project: int, annotation_id: object) -> None:
    """A check that raised is logged with its traceback (a background thread's failure must not vanish)."""
    exc = done.exception()
    if exc is not None:
        log.error(
            "project %s: label check of annotation %s failed: %s",
            project,
            annotation_id,
            exc,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
