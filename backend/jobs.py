"""RQ jobs (top-level functions taking ids and paths; settings from the worker's environment at run time).

train_project: under the project's lock, re-read its human annotations from Label Studio (deleted ones are
gone, cancelled ones skipped), fine-tune the kptllm engine (kp_model.training.finetune) and promote the new version if it is
not worse on the held-out split. Progress (stage, step, loss, ETA) goes to the job's meta and the log.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from redis.exceptions import LockError, RedisError

from backend.convert import percent_to_pixels
from backend.events import EventLog
from backend.job_process import start_job
from backend.label_config import KeypointControl, parse_keypoint_controls
from backend.service import PredictionService, project_store
from backend.settings import Settings
from backend.support import labelled_annotations
from backend.training_queue import lock_key, pending_key, redis_connection
from kp_model.config import ConfigError, config_from_dict
from kp_model.images import ImageLoadError
from kp_model.kptllm.configuration import KptLLMConfig, tiny_config
from kp_model.training.data import TrainSample
from kp_model.training.finetune import FinetuneSettings, run_finetune
from kp_model.training.loop import TrainConfig
from kp_model.training.promotion import PromotionRule

log = logging.getLogger(__name__)

FAULT_STAGES = ("read", "train", "checkpoint", "record", "promote")


class TrainingJobError(RuntimeError):
    """The project cannot be trained (no Label Studio connection, no keypoint control, no annotation)."""


def _fault(stage: str) -> None:
    """Fault injection for tests: KPASSIST_FAULT_AT=<stage> kills this process with SIGKILL at that stage."""
    if os.environ.get("KPASSIST_FAULT_AT") == stage:
        log.warning("KPASSIST_FAULT_AT=%s: killing the job process now", stage)
        os.kill(os.getpid(), signal.SIGKILL)


def _set_meta(**meta: object) -> None:
    from rq import get_current_job

    job = get_current_job()
    if job is not None:
        job.meta.update(meta)
        job.save_meta()


def annotations_to_samples(tasks: list[dict], control: KeypointControl, fetch) -> list[TrainSample]:
    """Every individual of the human annotations of ``control`` as TrainSamples, oldest first; key
    "<task id>/<annotation id>[/<individual>]".

    Keypoints are in the order of ``control.labels``; unlabelled ones are invisible. Annotations left out by
    ``labelled_annotations`` and tasks whose image cannot be read are skipped (logged)."""
    names = list(control.labels)
    images: dict[str, np.ndarray | None] = {}
    found = []
    for item in labelled_annotations(tasks, control):
        if item.image_ref not in images:
            try:
                images[item.image_ref] = fetch(item.image_ref)
            except ImageLoadError as exc:
                log.warning("task %s: not trained on, %s", item.task.get("id"), exc)
                images[item.image_ref] = None
        image = images[item.image_ref]
        if image is None:
            continue
        h, w = image.shape[:2]
        kps = np.zeros((len(names), 2))
        vis = np.zeros(len(names), bool)
        px = percent_to_pixels(np.asarray(item.points.xy_percent), w, h)
        for name, p in zip(item.points.names, px, strict=True):
            kps[names.index(name)] = p
            vis[names.index(name)] = True
        key = f"{item.task.get('id')}/{item.annotation.get('id')}" + (f"/{item.instance}" if item.instance else "")
        found.append((item.when, TrainSample(image, kps, vis, names, "object", key)))
    return [s for _, s in sorted(found, key=lambda pair: pair[0])]


def read_train_config(settings: Settings) -> tuple[KptLLMConfig, TrainConfig]:
    """The model and training configs of new fine-tuning runs: KPASSIST_TRAIN_CONFIG's ``{"model": KptLLMConfig,
    "train": TrainConfig}`` (each optional) over the tiny preset, with KPASSIST_TRAIN_STEPS steps.

    Raises:
        ConfigError: the file is not JSON or names a key the configs do not have.
    """
    train_cfg = TrainConfig(steps=settings.train_steps, log_every=max(1, settings.train_steps // 10))
    if not settings.train_config:
        return tiny_config(), train_cfg
    where = f"KPASSIST_TRAIN_CONFIG ({settings.train_config})"
    try:
        data = json.loads(Path(settings.train_config).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where} is not a readable JSON file: {exc}") from exc
    if not isinstance(data, dict) or set(data) - {"model", "train"}:
        raise ConfigError(f'{where} must be a JSON object with keys "model" and/or "train", got {sorted(data)}')
    if "train" in data:
        train_cfg = config_from_dict(TrainConfig, {"steps": settings.train_steps, **data["train"]}, "train.")
    return config_from_dict(KptLLMConfig, data.get("model", {}), "model."), train_cfg


class LockLostError(TrainingJobError):
    """The project lock expired or was taken while the job ran: the job stops before it writes or serves anything more."""


class LockKeeper:
    """Holds the project's Redis lock, renewing its TTL every ttl/3 s while the job lives (a killed worker's lock
    expires). A renewal that fails marks the lock lost; ``check()`` then raises LockLostError, and the job calls it
    at every progress report and stage, so it stops before promoting without the lock. Releasing a lock that
    already expired is logged, never raised: a job that finished is not failed for it."""

    def __init__(self, redis, name: str, ttl: int, wait_s: int) -> None:
        self.lock = redis.lock(name, timeout=ttl, blocking_timeout=wait_s, thread_local=False)
        self.ttl = ttl
        self.lost = threading.Event()
        self._stop = threading.Event()

    def __enter__(self) -> LockKeeper:
        if not self.lock.acquire():
            raise TrainingJobError(f"another training job of this project held {self.lock.name} for too long")
        threading.Thread(target=self._renew, name="kpassist-lock-renew", daemon=True).start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.lock.extend(self.ttl, replace_ttl=True)
            except (LockError, RedisError) as exc:
                log.error("project lock %s lost (%s): the training job stops at its next check", self.lock.name, exc)
                self.lost.set()
                return

    def check(self) -> None:
        """Raises LockLostError once a renewal failed."""
        if self.lost.is_set():
            raise LockLostError(
                f"lost the project lock {self.lock.name} (renewal failed): stopped; the served model is unchanged"
            )

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        try:
            self.lock.release()
        except LockError as err:  # expired (or taken) already: nothing of ours to release
            log.warning("project lock %s had expired before release: %s", self.lock.name, err)


def train_project(project: int, data_dir: str, ls_url: str = "") -> dict:
    """Fine-tune the project's model from its Label Studio annotations; returns the version record."""
    settings = Settings.from_env()
    nice = start_job(settings.train_threads, settings.job_nice)
    log.info("project %s: training job with %d thread(s) at niceness %d", project, settings.train_threads, nice)
    redis = redis_connection(settings.redis_url)
    _set_meta(stage="waiting for the project lock")
    with LockKeeper(redis, lock_key(settings.queue_name, project), settings.lock_ttl, settings.job_timeout) as keeper:
        redis.delete(pending_key(settings.queue_name, project))  # events from now on queue a new job
        events = EventLog(data_dir, project)
        seen = events.mark_run_started()
        _set_meta(stage="reading annotations")
        service = PredictionService(replace(settings, data_dir=data_dir))
        conn = service.connection(ls_url)
        if conn.client is None:
            raise TrainingJobError("no Label Studio URL for the worker: set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY)")
        controls = parse_keypoint_controls(conn.client.project(project).get("label_config") or "")
        tasks = list(conn.client.annotated_tasks(project))
        samples = annotations_to_samples(tasks, controls[0], conn.fetcher.fetch)
        if not samples:
            raise TrainingJobError(f"project {project} has no annotation with keypoints of {controls[0].from_name}")
        _fault("read")
        model_cfg, train_cfg = read_train_config(settings)
        t0 = time.time()

        def progress(report: dict) -> None:
            _set_meta(stage="training", progress={k: report[k] for k in ("step", "steps", "loss", "eta_s")})
            log.info(
                "project %s: step %d/%d loss %.4f, about %.0fs left",
                project,
                report["step"],
                report["steps"],
                report["loss"],
                report["eta_s"],
            )
            _fault("train")
            keeper.check()

        def stage(name: str) -> None:
            keeper.check()
            _set_meta(stage=name)
            _fault(name)

        from rq import get_current_job

        job = get_current_job()
        record = run_finetune(
            samples,
            project_store(data_dir, project),
            FinetuneSettings(
                model_cfg,
                train_cfg,
                service.predictor_cfg,
                salt=str(project),
                promote=settings.promote,
                rule=PromotionRule(settings.promote_min_images, settings.promote_margin),
                evidence_processes=settings.train_threads,  # the job's cores: the served side runs before the steps
                device=settings.train_device,
                budget_s=settings.train_budget_s,
            ),
            progress=progress,
            stage=stage,
            info={"project": project, "job_id": job.id if job else None, "queued_events_seen": seen},
        )
        _set_meta(stage="done", version=record["version"], decision=record["decision"])
        log.info(
            "project %s: training job done in %.0fs: %s %s", project, time.time() - t0, record["version"], record["decision"]
        )
        if record["decision"] == "promote" and settings.prelabel_on_promote:
            _prelabel_after_promotion(settings, project, conn.client.url)
        return {k: record[k] for k in ("version", "decision", "reason", "metrics")}


def _prelabel_after_promotion(settings: Settings, project: int, ls_url: str) -> None:
    """KPASSIST_PRELABEL_ON_PROMOTE: pre-label the whole project with the version just promoted (a run still going
    is cancelled: its remaining chunks would write the old version's predictions)."""
    from backend.prelabel import Prelabels

    runs = Prelabels(settings)
    runs.cancel(project)
    state = runs.start(project, ls_url)
    log.info("project %s: pre-labelling run %s started with the promoted version", project, state.get("run"))
