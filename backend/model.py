"""The Label Studio model class, written in the label-studio-ml 2.x style on top of 1.0.9's base."""

from __future__ import annotations

import logging

from label_studio_ml.model import LabelStudioMLBase

from backend.label_config import parse_keypoint_controls
from backend.service import PredictionService

log = logging.getLogger(__name__)


class KeypointModel(LabelStudioMLBase):
    """One-shot keypoint pre-labelling for one project's labelling config.

    Built by backend.compat for each (project, config); the heavy state (support features, clients)
    lives in the shared :class:`PredictionService`, so rebuilding this object is cheap.

    Raises:
        LabelConfigError: the config has no usable KeyPointLabels control.
    """

    def __init__(
        self,
        label_config: str | None = None,
        train_output: dict | None = None,
        *,
        service: PredictionService,
        project: int | None = None,
        hostname: str = "",
        access_token: str = "",
        **kwargs: object,
    ) -> None:
        self.controls = parse_keypoint_controls(label_config or "")
        super().__init__(label_config=label_config, train_output=train_output, hostname=hostname, access_token=access_token)
        self.service = service
        self.project = project
        self.connection = service.connection(hostname, access_token)
        self.last_version = service.engine_version  # version of the latest predict() (support included)

    @property
    def model_version(self) -> str:
        return self.service.model_version(self.project, self.controls, self.connection)

    def predict(self, tasks: list[dict], context: dict | None = None, **kwargs: object) -> list:
        """Predictions for ``tasks``, one entry per task in order (see PredictionService.predict)."""
        project = self.project if self.project is not None else _task_project(tasks)
        results, self.last_version = self.service.predict(tasks, self.controls, project, self.connection)
        return results

    def fit(self, event: str, data: dict, **kwargs: object) -> dict:
        """Webhook events. Annotation changes drop the cached support (the next /predict re-reads it)."""
        project = self.project
        if project is None:
            project = _project_of(data)
        if event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "START_TRAINING"):
            if project is not None:
                self.service.supports.invalidate(project)
            log.info("project %s: %s received; support will be re-read on the next prediction", project, event)
            return {"status": "ok", "event": event, "project": project}
        return {"status": "ignored", "event": event}


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
