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
from redis.exceptions import RedisError

from backend.annotation_index import AnnotationIndex, reconcile_logged
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


BOOTSTRAP_TASKS = 50  # newest annotated tasks read at a project's first use, before its index is reconciled


class BatchTooLargeError(ValueError):
    """More tasks in one /predict than KPASSIST_MAX_BATCH allows."""


class TaskPredictionError(RuntimeError):
    """One task got no prediction: its image is missing or unreadable, or the engine failed on it (the reason)."""


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
        self.supports = SupportCache(settings.max_supports, settings.max_support_mb << 20)
        self.models = ModelCache(
            settings.max_loaded_models, settings.max_model_mb << 20
        )  # fine-tuned checkpoints, shared by the supports using them
        self._connections: dict[tuple[str, str], Connection] = {}
        self._lock = threading.Lock()
        self.training: TrainingQueue | None = None  # set by the app (None: events are recorded nowhere, no training)
        self._indexed: set[int] = set()  # projects whose annotation index this process has checked (ensure_indexed)
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
        version, make = self.engine(project)
        return None if version == self.engine_version else make()

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
        """The project's current support annotation for each control (None where there is none yet), read from the
        project's annotation index (newest first, stopping at the first usable one): no Label Studio request, so
        the cost does not grow with the project (see ``ensure_indexed`` for the first use)."""
        if project is None:
            log.warning("no support: unknown project")
            return [None] * len(controls)
        index = self.index(project)
        self.ensure_indexed(project, index, conn)
        found: list[SupportRef | None] = [None] * len(controls)
        for task in index.iter_recent():
            for i, control in enumerate(controls):
                if found[i] is None:
                    found[i] = select_support([task], control)
            if all(ref is not None for ref in found):
                break
        return found

    def index(self, project: int) -> AnnotationIndex:
        return AnnotationIndex(self.settings.data_dir, project)

    def ensure_indexed(self, project: int, index: AnnotationIndex, conn: Connection) -> None:
        """Once per project and process: a project never reconciled gets its newest annotations with ONE bounded
        request (so the first retrieve has a support at once), and a reconcile is queued (this process may have
        missed webhooks while it was down). Raises LabelStudioError when that one request fails."""
        if project in self._indexed:
            return
        if index.reconciled_at is None and conn.client is not None:
            newest = list(conn.client.annotated_tasks(project, page_size=BOOTSTRAP_TASKS, newest_first=True, max_pages=1))
            index.add_tasks(newest)
            log.info("project %s: %d newest annotated tasks indexed; a reconcile pages through the rest", project, len(newest))
        ls_url = conn.client.url if conn.client is not None else ""
        if self.training is None:
            log.warning("project %s: no job queue: the annotation index is fed by webhooks only", project)
        else:
            try:
                self.training.enqueue_reconcile(project, ls_url)
            except RedisError as exc:
                log.warning("project %s: Redis unreachable (%s): reconciling the annotation index on a thread", project, exc)
                threading.Thread(
                    target=reconcile_logged, args=(index, conn.client, project), name=f"reconcile-{project}", daemon=True
                ).start()
        self._indexed.add(project)

    def index_event(self, project: int, event: str, data: dict) -> None:
        """Keep the project's annotation index current with a webhook (the events LS 1.23 sends for annotations)."""
        index = self.index(project)
        task = data.get("task") if isinstance(data.get("task"), dict) else {}
        annotation = data.get("annotation")
        if event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED") and isinstance(annotation, dict):
            index.upsert(annotation, task)
        elif event == "ANNOTATIONS_CREATED" and isinstance(annotation, list):
            tasks = {t.get("id"): t for t in data.get("task") or [] if isinstance(t, dict)}
            for ann in annotation:
                if isinstance(ann, dict):
                    index.upsert(ann, tasks.get(ann.get("task"), {}))
        elif event == "ANNOTATION_DELETED" and isinstance(annotation, dict) and isinstance(annotation.get("id"), int):
            index.delete([annotation["id"]])
        elif event == "ANNOTATIONS_DELETED":
            index.delete(_ids(data.get("annotations")))
        elif event == "TASKS_DELETED":
            index.delete_tasks(_ids(data.get("tasks")))

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

    def prepare(self, project: int | None, controls: list[KeypointControl], conn: Connection) -> tuple[list, str]:
        """The supports of ``project`` ready to predict with (features computed once, cached) and the model version
        they give: ``([(control, CachedSupport), ...], version)``; a control without a usable support is left out
        (logged)."""
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
        return supports, self._version(refs, engine_version)

    def predict(
        self, tasks: list[dict], controls: list[KeypointControl], project: int | None, conn: Connection
    ) -> tuple[list, str]:
        """Predictions and the model version they come from.

        Returns one entry per task, in order: ``{"result": regions, "score": s}``, or ``[]`` (no
        prediction stored) for a task that failed or when the project has no support annotation yet.
        """
        if len(tasks) > self.settings.max_batch:
            raise BatchTooLargeError(f"{len(tasks)} tasks in one request; at most {self.settings.max_batch} (KPASSIST_MAX_BATCH)")
        supports, version = self.prepare(project, controls, conn)
        t0 = time.perf_counter()
        if not supports:
            results: list = [[] for _ in tasks]
        else:
            with ThreadPoolExecutor(max_workers=self.settings.predict_threads, thread_name_prefix="predict") as pool:
                results = list(pool.map(lambda task: self._predict_task(task, supports, conn), tasks))
        log.info("project %s: %d tasks predicted in %.2fs", project, len(tasks), time.perf_counter() - t0)
        return results, version

    def _predict_task(self, task: dict, supports: list, conn: Connection) -> dict | list:
        """One task's prediction, or ``[]`` when it fails (logged): a bad image or an engine error costs that task only."""
        try:
            return self.predict_one(task, supports, conn)
        except TaskPredictionError as exc:
            log.warning("task %s: no prediction: %s", task.get("id") if isinstance(task, dict) else None, exc)
            return []

    def predict_one(self, task: dict, supports: list, conn: Connection, seconds: dict[str, float] | None = None) -> dict:
        """One task's prediction ``{"result": regions, "score": s}`` with ``supports`` from ``prepare``; ``seconds``
        (optional) accumulates the time spent reading images ("image": download + decode) and in the engine.

        Raises:
            TaskPredictionError: the task's image is missing or unreadable, or the engine failed on it (the
                engine's traceback is logged).
        """
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
                    t0 = time.perf_counter()
                    images[ref] = conn.fetcher.fetch(ref)
                    if seconds is not None:
                        seconds["image"] = seconds.get("image", 0.0) + time.perf_counter() - t0
            except ImageLoadError as exc:
                raise TaskPredictionError(str(exc)) from exc
            image = images[ref]
            try:
                t0 = time.perf_counter()
                pred = cached.predictor.predict([image])[0]
                if seconds is not None:
                    seconds["engine"] = seconds.get("engine", 0.0) + time.perf_counter() - t0
            except Exception as exc:  # one task's engine failure must not fail the batch: logged with its traceback
                log.exception("task %s: the %s engine failed on its image %s", task_id, cached.engine_version, ref)
                raise TaskPredictionError(f"the {cached.engine_version} engine failed: {exc!r}") from exc
            h, w = image.shape[:2]
            found = points_to_regions(pred.names, pred.points, pred.scores, w, h, control, self.settings.score_threshold)
            regions.extend(found)
            scores.extend(r["score"] for r in found)
        return {"result": regions, "score": round(float(np.mean(scores)), 4) if scores else 0.0}


def _ids(items: object) -> list[int]:
    """The integer ids of a webhook's list of ``{"id": ...}`` objects."""
    return [i["id"] for i in items if isinstance(i, dict) and isinstance(i.get("id"), int)] if isinstance(items, list) else []
