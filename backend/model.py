"""The Label Studio model class, in the label-studio-ml 2.x shape (``predict(tasks, context)``, ``fit(event, data)``),
with no base class: the HTTP layer is backend.app."""

from __future__ import annotations

import logging

from backend.events import TRAIN_EVENTS
from backend.label_config import parse_keypoint_controls
from backend.quality import QualityError
from backend.service import PredictionService
from kp_model.training.store import StoreError

log = logging.getLogger(__name__)


class KeypointModel:
    """One-shot keypoint pre-labelling for one project's labelling config.

    Built by backend.app for each (project, config); the heavy state (support features, clients)
    lives in the shared :class:`PredictionService`, so rebuilding this object is cheap.

    Raises:
        LabelConfigError: the config has no usable KeyPointLabels control.
    """

    def __init__(
        self,
        label_config: str,
        *,
        service: PredictionService,
        project: int | None = None,
        hostname: str = "",
        access_token: str = "",
    ) -> None:
        self.label_config = label_config
        self.controls = parse_keypoint_controls(label_config or "")
        self.service = service
        self.project = project
        self.connection = service.connection(hostname, access_token)
        self.last_version = service.engine_version  # version of the latest predict() (support included)

    @property
    def model_version(self) -> str:
        return self.service.model_version(self.project, self.controls, self.connection)

    def predict(self, tasks: list[dict], context: dict | None = None, **kwargs: object) -> list:
        """Predictions for ``tasks``, one entry per task in order (see PredictionService.predict). ``context``: LS's
        interactive pre-annotation sends ``{"result": [regions]}``, the keypoints the annotator just placed; they are
        kept exactly and the others re-solved given them (backend.service.placed_points)."""
        project = self.project if self.project is not None else _task_project(tasks)
        results, self.last_version = self.service.predict(tasks, self.controls, project, self.connection, context)
        return results

    def fit(self, event: str, data: dict, **kwargs: object) -> dict:
        """Webhook events. Annotation changes are recorded durably and may queue a fine-tuning job
        (backend.training_queue); created/updated annotations get a left/right label check when a fine-tuned model
        is served (backend.label_check). The support cache needs no invalidation: its key holds the annotation's
        id and updated_at, so the next /predict rebuilds a support only when its annotation changed."""
        project = self.project
        if project is None:
            project = _project_of(data)
        if project is None:
            return {"status": "ignored", "event": event, "reason": "no project id in the event"}
        self.service.index_event(project, event, data)
        if event not in TRAIN_EVENTS:
            return {"status": "ignored", "event": event}
        annotation = data.get("annotation") if isinstance(data.get("annotation"), dict) else {}
        task = data.get("task") if isinstance(data.get("task"), dict) else {}
        ann_id = annotation.get("id") if isinstance(annotation.get("id"), int) else None
        task_id = task.get("id") if isinstance(task.get("id"), int) else None
        if event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED") and annotation and task:
            self.service.label_checks.submit(project, task, annotation, self.controls, self.connection)
            try:
                self.service.record_correction(project, task, annotation, self.controls)
            except (QualityError, StoreError) as exc:  # live quality must not lose the webhook: logged
                log.error("project %s: live quality of annotation %s not recorded: %s", project, ann_id, exc)
        if self.service.training is None:
            return {"status": "recorded", "event": event, "project": project, "detail": "no training queue configured"}
        ls_url = self.connection.client.url if self.connection.client is not None else ""
        body = self.service.training.submit(project, event, ann_id, task_id, ls_url)
        log.info("project %s: %s -> %s", project, event, body["status"])
        return body


def _task_project(tasks: list[dict]) -> int | None:
    for task in tasks:
        if isinstance(task, dict) and isinstance(task.get("project"), int):
            return task["project"]
    return None


def _project_of(data: dict) -> int | None:
    project = data.get("project")
    if isinstance(project, dict):
        project = project.get("id")
    return project if isinstance(project, int) else None
