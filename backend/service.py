"""Prediction for Label Studio tasks: support lookup, image fetching, conversion. No HTTP here."""

from __future__ import annotations

import hashlib
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
from backend.convert import AnnotationFormatError, instance_regions, percent_to_pixels, points_to_regions, regions_to_points
from backend.events import project_dir
from backend.fetch import ImageFetcher
from backend.label_check import LabelChecker
from backend.label_config import KeypointControl
from backend.ls_client import LabelStudioClient, LabelStudioError
from backend.quality import QualityError, QualityLog, RollbackRule, finetuned_name, rollback_if_worse
from backend.settings import Settings
from backend.support import SupportCache, SupportRef, select_supports
from kp_model.build import ModelCache, PredictorConfig, build_predictor
from kp_model.images import ImageLoadError
from kp_model.interactive import constrain
from kp_model.parallel import PoolConfig, PredictorPool, Shipped
from kp_model.predictor import Predictor, SupportError, predict_instances
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
        self.supports = SupportCache(settings.max_supports, settings.max_support_mb << 20, self.predictor_cfg.fewshot)
        self.models = ModelCache(
            settings.max_loaded_models, settings.max_model_mb << 20
        )  # fine-tuned checkpoints, shared by the supports using them
        self._connections: dict[tuple[str, str], Connection] = {}
        self._lock = threading.Lock()
        self.training: TrainingQueue | None = None  # set by the app (None: events are recorded nowhere, no training)
        self._indexed: set[int] = set()  # projects whose annotation index this process has checked (ensure_indexed)
        self.label_checks = LabelChecker(self)
        self.pool = PredictorPool(PoolConfig(processes=settings.predict_processes))  # batches' engine work, per core

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
        return finetuned_name(project, served), lambda: build_predictor(cfg, self.models)

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

    def find_supports(self, project: int | None, controls: list[KeypointControl], conn: Connection) -> list[list[SupportRef]]:
        """The project's support annotations for each control, newest first, at most ``fewshot.max_supports`` (one per
        labelled task: its newest annotation), read from the project's annotation index: no Label Studio request, so
        the cost does not grow with the project (see ``ensure_indexed`` for the first use)."""
        if project is None:
            log.warning("no support: unknown project")
            return [[] for _ in controls]
        cap = self.predictor_cfg.fewshot.max_supports
        index = self.index(project)
        self.ensure_indexed(project, index, conn)
        found: list[list[SupportRef]] = [[] for _ in controls]
        for task in index.iter_recent():
            for i, control in enumerate(controls):
                if len(found[i]) < cap:
                    found[i].extend(select_supports([task], control)[: cap - len(found[i])])
            if all(len(refs) >= cap for refs in found):
                break
        return found

    def quality(self, project: int) -> QualityLog:
        return QualityLog(self.settings.data_dir, project)

    def remember_predictions(self, project: int | None, items: list[tuple[object, str, list]]) -> None:
        """Keep (task id, model version, regions) of predictions handed to Label Studio, for live quality (items
        without an integer task id are left out by QualityLog); a failure to write is logged, never raised (the
        predictions were already answered)."""
        if project is None:
            return
        try:
            self.quality(project).record_predictions(items)
        except QualityError as exc:
            log.warning("project %s: predictions not remembered for live quality: %s", project, exc)

    def record_correction(self, project: int, task: dict, annotation: dict, controls: list[KeypointControl]) -> dict | None:
        """Live quality: compare a submitted annotation with what its task was shown (backend.quality), then roll
        the served fine-tuned version back to the previous one when its live acceptance fell clearly below it
        (logged, and noted in the version's record). Returns the comparison row (None: nothing to compare)."""
        quality = self.quality(project)
        row = quality.record_annotation(annotation, task, controls)
        if row is not None:  # rollback_if_worse does nothing while the default engine is served
            rule = RollbackRule(self.settings.rollback_min_tasks, self.settings.rollback_margin)
            store = project_store(self.settings.data_dir, project)
            rollback_if_worse(quality, store, self.engine_version, rule, self.settings.quality_window)
        return row

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
            refsets = self.find_supports(project, controls, conn)
        except LabelStudioError as exc:
            log.warning("project %s: cannot look up the support annotation: %s", project, exc)
            return self.engine(project)[0]
        return self._version(refsets, self.engine(project)[0])

    @staticmethod
    def _version(refsets: list[list[SupportRef]], engine_version: str) -> str:
        """``<engine>+support.<newest annotation id>@<updated_at>[.n<count>-<digest of all>]`` per control."""
        parts = []
        for refs in refsets:
            if not refs:
                continue
            part = refs[0].key
            if len(refs) > 1:
                digest = hashlib.sha1(" ".join(sorted(r.key for r in refs)).encode()).hexdigest()[:8]
                part += f".n{len(refs)}-{digest}"
            parts.append(part.replace(":", "").replace("+", ""))
        return engine_version + ("+support." + ".".join(parts) if parts else "")

    def prepare(self, project: int | None, controls: list[KeypointControl], conn: Connection) -> tuple[list, str]:
        """The supports of ``project`` ready to predict with (features computed once, cached) and the model version
        they give: ``([(control, CachedSupport), ...], version)``; a control without a usable support is left out
        (logged)."""
        supports = []
        refsets = self.find_supports(project, controls, conn)
        engine_version, make_predictor = self.engine(project)
        for control, refs in zip(controls, refsets, strict=True):
            if not refs:
                log.info(
                    "project %s: no annotation with %s keypoints yet: annotate one image to get predictions",
                    project,
                    control.from_name,
                )
                continue
            try:
                cached = self.supports.get(project or 0, control, refs, conn.fetcher.fetch, make_predictor, engine_version)
                supports.append((control, cached))
            except (ImageLoadError, SupportError) as exc:
                log.error("project %s: no usable support annotation of %s: %s", project, control.from_name, exc)
        return supports, self._version(refsets, engine_version)

    def predict(
        self,
        tasks: list[dict],
        controls: list[KeypointControl],
        project: int | None,
        conn: Connection,
        context: dict | None = None,
    ) -> tuple[list, str]:
        """Predictions and the model version they come from.

        Returns one entry per task, in order: ``{"result": regions, "score": s}``, or ``[]`` (no
        prediction stored) for a task that failed or when the project has no support annotation yet.
        """
        if len(tasks) > self.settings.max_batch:
            raise BatchTooLargeError(f"{len(tasks)} tasks in one request; at most {self.settings.max_batch} (KPASSIST_MAX_BATCH)")
        supports, version = self.prepare(project, controls, conn)
        placed = placed_points(context, controls)
        t0 = time.perf_counter()
        if not supports:
            results: list = [[] for _ in tasks]
        else:
            # a batch's engine work goes to the worker processes (each predictor pickled once); one task stays here
            shipped = {id(cached): self.pool.ship(cached.predictor) for _, cached in supports} if len(tasks) > 1 else {}
            threads = self.settings.predict_threads
            if any(shipped.values()):  # threads fetch images and wait on the workers: two per worker keep them busy
                threads = max(threads, 2 * self.pool.cfg.processes)
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="predict") as pool:
                results = list(pool.map(lambda task: self._predict_task(task, supports, conn, placed, shipped), tasks))
        log.info("project %s: %d tasks predicted in %.2fs", project, len(tasks), time.perf_counter() - t0)
        if not placed:  # an interactive answer holds the annotator's own points: not what the task showed
            pairs = zip(tasks, results, strict=True)
            shown = [(t.get("id"), version, r["result"]) for t, r in pairs if r and isinstance(t, dict)]
            self.remember_predictions(project, shown)
        return results, version

    def _predict_task(
        self, task: dict, supports: list, conn: Connection, placed: dict | None = None, shipped: dict | None = None
    ) -> dict | list:
        """One task's prediction, or ``[]`` when it fails (logged): a bad image or an engine error costs that task only."""
        try:
            return self.predict_one(task, supports, conn, placed=placed, shipped=shipped)
        except TaskPredictionError as exc:
            log.warning("task %s: no prediction: %s", task.get("id") if isinstance(task, dict) else None, exc)
            return []

    def predict_one(
        self,
        task: dict,
        supports: list,
        conn: Connection,
        seconds: dict[str, float] | None = None,
        placed: dict[str, dict[str, dict]] | None = None,
        shipped: dict[int, Shipped | None] | None = None,
    ) -> dict:
        """One task's prediction ``{"result": regions, "score": s}`` with ``supports`` from ``prepare``; ``seconds``
        (optional) accumulates the time spent reading images ("image": download + decode) and in the engine;
        ``placed`` (``placed_points``): per control, the regions the annotator placed, kept exactly; ``shipped``:
        per support (``id``), its predictor shipped to the worker processes (``PredictorPool.ship``), or in-process.

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
            boxed = bool(control.box_from_name)
            try:
                t0 = time.perf_counter()
                ship = (shipped or {}).get(id(cached))
                if ship is not None:
                    preds = self.pool.predict(ship, image, instances=boxed)
                elif boxed:  # several individuals, each a box with its keypoints
                    preds = predict_instances(cached.predictor, [image])[0]
                else:
                    preds = cached.predictor.predict([image])
                preds = preds[: self.settings.max_instances]
                if seconds is not None:
                    seconds["engine"] = seconds.get("engine", 0.0) + time.perf_counter() - t0
            except Exception as exc:  # one task's engine failure must not fail the batch: logged with its traceback
                log.exception("task %s: the %s engine failed on its image %s", task_id, cached.engine_version, ref)
                raise TaskPredictionError(f"the {cached.engine_version} engine failed: {exc!r}") from exc
            h, w = image.shape[:2]
            min_score = self.settings.score_threshold
            if boxed:
                label = cached.ref.box_label or (control.box_labels[0] if control.box_labels else "")
                for pred in preds:
                    found = instance_regions(pred.names, pred.points, pred.scores, w, h, control, label, min_score)
                    regions.extend(found)
                    scores.extend(r["score"] for r in found[:1])  # the task's score: the mean of its individuals'
                continue
            pred = preds[0]
            fixed = (placed or {}).get(control.from_name) or {}
            if fixed:  # interactive: the placed points are hard constraints, the others re-solved given them
                xy = {
                    n: percent_to_pixels(np.array([[r["value"]["x"], r["value"]["y"]]], float), w, h)[0] for n, r in fixed.items()
                }
                pred = constrain(pred, {n: (float(p[0]), float(p[1])) for n, p in xy.items()})
            found = points_to_regions(pred.names, pred.points, pred.scores, w, h, control, min_score)
            if fixed:  # returned exactly as placed (no percent -> pixel -> percent rounding)
                found = [r for r in found if r["value"]["keypointlabels"][0] not in fixed] + [
                    {**r, "value": dict(r["value"]), "score": 1.0} for r in fixed.values()
                ]
            regions.extend(found)
            scores.extend(r["score"] for r in found)
        return {"result": regions, "score": round(float(np.mean(scores)), 4) if scores else 0.0}


def placed_points(context: object, controls: list[KeypointControl]) -> dict[str, dict[str, dict]]:
    """The keypoints an annotator placed, from interactive pre-annotation's ``context`` (``{"result": [regions]}``):
    ``{control from_name: {label: region}}``, the regions of each control that ``regions_to_points`` accepts."""
    result = context.get("result") if isinstance(context, dict) else None
    if not isinstance(result, list):
        return {}
    out: dict[str, dict[str, dict]] = {}
    for control in controls:
        try:
            points = regions_to_points(result, control)
        except AnnotationFormatError as exc:
            log.warning("interactive context ignored: %s", exc)
            return {}
        regions = {}
        for region in result:
            labels = (region.get("value") or {}).get("keypointlabels") if isinstance(region, dict) else None
            if region.get("from_name") == control.from_name and labels and labels[0] in points.names and labels[0] not in regions:
                regions[labels[0]] = region
        if regions:
            out[control.from_name] = regions
    return out


def _ids(items: object) -> list[int]:
    """The integer ids of a webhook's list of ``{"id": ...}`` objects."""
    return [i["id"] for i in items if isinstance(i, dict) and isinstance(i.get("id"), int)] if isinstance(items, list) else []
