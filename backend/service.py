"""Prediction for Label Studio tasks: support lookup, image fetching, conversion. No HTTP here."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from backend.convert import points_to_regions
from backend.events import project_dir
from backend.fetch import ImageFetcher
from backend.label_check import LabelChecker
from backend.label_config import KeypointControl
from backend.ls_client import LabelStudioClient, LabelStudioError
from backend.settings import Settings
from backend.support import SupportCache, SupportRef, select_support
from kp_model.build import ModelCache, PredictorConfig, build_predictor
from kp_model.images import ImageLoadError
from kp_model.predictor import Predictor, SupportError
from kp_model.training.store import ModelStore, StoreError

if TYPE_CHECKING:
    from backend.training_queue import TrainingQueue

log = logging.getLogger(__name__)


class BatchTooLargeError(ValueError):
    """More tasks in one /predict than KPASSIST_MAX_BATCH allows."""


@dataclass
class Connection:
    """How to reach the Label Studio server of one project."""

    client: LabelStudioClient | None
    fetcher: ImageFetcher


def project_store(data_dir: str | Path, project: int) -> ModelStore:
    """The project's fine-tuned versions (kp_model.training.store) under the backend's data directory."""
    return ModelStore(project_dir(data_dir, project) / "model")


class PredictionService:
    """Shared by every model instance of the process: support caches survive /setup calls."""

    def __init__(self, settings: Settings, predictor_cfg: PredictorConfig | None = None) -> None:
        self.settings = settings
        self.predictor_cfg = predictor_cfg or (
            PredictorConfig.from_file(settings.engine_config) if settings.engine_config else PredictorConfig()
        )
        self.supports = SupportCache(settings.max_supports)
        self.models = ModelCache(settings.max_loaded_models)  # fine-tuned checkpoints, shared by the supports using them
        self._connections: dict[tuple[str, str], Connection] = {}
        self._lock = threading.Lock()
        self.training: TrainingQueue | None = None  # set by the app (None: events are recorded nowhere, no training)
        self.label_checks = LabelChecker(self)

    @property
    def engine_version(self) -> str:
        return self.predictor_cfg.version

    def served_version(self, project: int | None) -> str | None:
        """The project's promoted fine-tuned version (read on every call: promotions need no restart), or None
        while the default engine is served (also when the store is unreadable, which is logged)."""
        if project is None:
            return None
        try:
            return project_store(self.settings.data_dir, project).served()
        except StoreError as exc:
            log.error("project %s: %s; serving the default engine", project, exc)
            return None

    def engine(self, project: int | None) -> tuple[str, Callable[[], Predictor]]:
        """(version, predictor factory) served for ``project``: its promoted fine-tuned version if any, else the
        configured default engine."""
        served = self.served_version(project)
        if served is None or project is None:
            return self.engine_version, lambda: build_predictor(self.predictor_cfg)
        cfg = project_store(self.settings.data_dir, project).predictor_config(self.predictor_cfg, served)
        return f"kptllm-p{project}-{served}", lambda: build_predictor(cfg, self.models)

    def served_predictor(self, project: int) -> Predictor | None:
        """A new predictor of the project's served fine-tuned version, or None while the default engine is served."""
        if self.served_version(project) is None:
            return None
        return self.engine(project)[1]()

    def connection(self, hostname: str = "", access_token: str = "") -> Connection:
        """Client + image fetcher for a Label Studio server (the /setup one, else the environment's)."""
        url = hostname or self.settings.label_studio_url
        key = access_token or self.settings.label_studio_api_key
        with self._lock:
            conn = self._connections.get((url, key))
            if conn is None:
                client = LabelStudioClient(url, key) if url else None
                root = Path(self.settings.local_root) if self.settings.local_root else None
                fetcher = ImageFetcher(
                    client, root, self.settings.allowed_host_list, self.settings.max_image_bytes, self.settings.max_image_pixels
                )
                conn = self._connections[(url, key)] = Connection(client, fetcher)
            return conn

    def find_supports(self, project: int | None, controls: list[KeypointControl], conn: Connection) -> list[SupportRef | None]:
        """The project's current support annotation for each control (None where there is none yet);
        the annotated tasks are read from Label Studio once for all controls."""
        if project is None or conn.client is None:
            why = (
                "unknown project"
                if project is None
                else "no Label Studio URL (connect from Label Studio or set LABEL_STUDIO_URL)"
            )
            log.warning("no support: %s", why)
            return [None] * len(controls)
        tasks = list(conn.client.annotated_tasks(project))
        return [select_support(tasks, control) for control in controls]

    def model_version(self, project: int | None, controls: list[KeypointControl], conn: Connection) -> str:
        """Engine version plus the support annotation(s) in use: LS re-predicts when the support changes."""
        try:
            refs = self.find_supports(project, controls, conn)
        except LabelStudioError as exc:
            log.warning("project %s: cannot look up the support annotation: %s", project, exc)
            return self.engine(project)[0]
        return self._version(refs, self.engine(project)[0])

    @staticmethod
    def _version(refs: list[SupportRef | None], engine_version: str) -> str:
        keys = [ref.key.replace(":", "").replace("+", "") for ref in refs if ref is not None]
        return engine_version + ("+support." + ".".join(keys) if keys else "")

    def predict(
        self, tasks: list[dict], controls: list[KeypointControl], project: int | None, conn: Connection
    ) -> tuple[list, str]:
        """Predictions and the model version they come from.

        Returns one entry per task, in order: ``{"result": regions, "score": s}``, or ``[]`` (no
        prediction stored) for a task that failed or when the project has no support annotation yet.
        """
        if len(tasks) > self.settings.max_batch:
            raise BatchTooLargeError(f"{len(tasks)} tasks in one request; at most {self.settings.max_batch} (KPASSIST_MAX_BATCH)")
        supports = []
        refs = self.find_supports(project, controls, conn)
        engine_version, make_predictor = self.engine(project)
        for control, ref in zip(controls, refs, strict=True):
            if ref is None:
                log.info(
                    "project %s: no annotation with %s keypoints yet: annotate one image to get predictions",
                    project,
                    control.from_name,
                )
                continue
            try:
                cached = self.supports.get(project or 0, control, ref, conn.fetcher.fetch, make_predictor, engine_version)
                supports.append((control, cached))
            except (ImageLoadError, SupportError) as exc:
                log.error("project %s: support annotation %s unusable: %s", project, ref.annotation_id, exc)
        t0 = time.perf_counter()
        if not supports:
            results: list = [[] for _ in tasks]
        else:
            with ThreadPoolExecutor(max_workers=self.settings.predict_threads, thread_name_prefix="predict") as pool:
                results = list(pool.map(lambda task: self._predict_task(task, supports, conn), tasks))
        log.info("project %s: %d tasks predicted in %.2fs", project, len(tasks), time.perf_counter() - t0)
        return results, self._version(refs, engine_version)

    def _predict_task(self, task: dict, supports: list, conn: Connection) -> dict | list:
        """One task's prediction, or ``[]`` when it fails (logged): a bad image or an engine error costs that task only."""
        regions, scores = [], []
        images: dict[str, np.ndarray] = {}
        task_id = task.get("id") if isinstance(task, dict) else None
        data = task.get("data") if isinstance(task, dict) else None
        for control, cached in supports:
            ref = data.get(control.image_field) if isinstance(data, dict) else None
            try:
                if not isinstance(ref, str):
                    raise ImageLoadError(
                        f"task needs data.{control.image_field}: the image URL for <Image name={control.to_name}>"
                    )
                if ref not in images:
                    images[ref] = conn.fetcher.fetch(ref)
            except ImageLoadError as exc:
                log.warning("task %s: skipped, %s", task_id, exc)
                return []
            image = images[ref]
            try:
                pred = cached.predictor.predict([image])[0]
            except Exception:  # one task's engine failure must not fail the batch: logged with its traceback
                log.exception("task %s: the %s engine failed on its image %s; no prediction", task_id, cached.engine_version, ref)
                return []
            h, w = image.shape[:2]
            found = points_to_regions(pred.names, pred.points, pred.scores, w, h, control, self.settings.score_threshold)
            regions.extend(found)
            scores.extend(r["score"] for r in found)
        return {"result": regions, "score": round(float(np.mean(scores)), 4) if scores else 0.0}
