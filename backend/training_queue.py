"""Queueing fine-tuning jobs on RQ: every event is first recorded durably (backend.events), then at most one
pending job per project is queued (debounced with a Redis key the job clears when it starts).

Redis down: the event stays recorded, the project is marked "enqueue pending" on disk and the webhook answers
202 "kept"; a background thread queues the job as soon as Redis answers again (``flush_pending``)."""

from __future__ import annotations

import logging
import threading
import time
import uuid

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from backend.events import EventLog, pending_projects
from backend.settings import Settings

log = logging.getLogger(__name__)

WAITING = (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED)


def pending_key(namespace: str, project: int) -> str:
    return f"{namespace}:pending:{project}"


def index_queue_name(queue_name: str) -> str:
    """The RQ queue of annotation-index reconciles, beside the training queue (workers listen to it first)."""
    return f"{queue_name}-index"


def reconcile_key(namespace: str, project: int) -> str:
    return f"{namespace}:reconcile:{project}"


def lock_key(namespace: str, project: int) -> str:
    return f"{namespace}:lock:{project}"


def redis_connection(url: str) -> Redis:
    """A client that fails fast: the webhook must answer within 100 ms even when Redis is gone."""
    return Redis.from_url(url, socket_connect_timeout=0.2, socket_timeout=2.0)


class TrainingQueue:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = redis_connection(settings.redis_url)
        self.queue = Queue(settings.queue_name, connection=self.redis)
        self.index_queue = Queue(index_queue_name(settings.queue_name), connection=self.redis)  # reconciles: short, first
        self._flusher: threading.Thread | None = None

    def submit(self, project: int, event: str, annotation_id: int | None, task_id: int | None, ls_url: str) -> dict:
        """Record the event; queue a training job when due. Returns the webhook's answer body
        ({"status": "recorded" | "queued" | "debounced" | "kept", ...})."""
        events = EventLog(self.settings.data_dir, project)
        changes = events.since_last_run(events.append(event, annotation_id, task_id))
        body: dict = {"event": event, "project": project, "changes_since_last_run": changes}
        if event != "START_TRAINING" and changes < self.settings.train_threshold:
            return {**body, "status": "recorded", "threshold": self.settings.train_threshold}
        try:
            job_id, created = self.enqueue(project, ls_url)
        except RedisError as exc:
            events.update_state(enqueue_pending=True, ls_url=ls_url)
            self._start_flusher()
            log.warning(
                "project %s: Redis unreachable (%s); event kept, the training job is queued when it is back", project, exc
            )
            return {
                **body,
                "status": "kept",
                "detail": f"Redis at {self.settings.redis_url} is unreachable: the event is recorded and the training job "
                "will be queued as soon as Redis answers (start redis-server or fix REDIS_URL)",
            }
        if events.state().get("enqueue_pending"):  # an earlier event was kept while Redis was down: now queued
            events.update_state(enqueue_pending=False)
        return {**body, "status": "queued" if created else "debounced", "job_id": job_id}

    def enqueue(self, project: int, ls_url: str) -> tuple[str, bool]:
        """Queue ``train_project`` for ``project`` unless one is already waiting; returns (job id, created)."""
        key = pending_key(self.settings.queue_name, project)
        job_id = f"train-{project}-{uuid.uuid4().hex[:12]}"
        ttl = self.settings.job_timeout * 4
        if not self.redis.set(key, job_id, nx=True, ex=ttl):
            existing = self.redis.get(key)
            existing_id = existing.decode() if existing else ""
            try:
                status = Job.fetch(existing_id, connection=self.redis).get_status() if existing_id else None
            except NoSuchJobError:  # the job expired or was deleted: queue a new one
                status = None
            if status in WAITING:
                return existing_id, False
            self.redis.set(key, job_id, ex=ttl)  # the pending job is gone (failed before starting, expired): replace it
        try:
            self.queue.enqueue_call(
                "backend.jobs.train_project",
                args=(project, self.settings.data_dir, ls_url),
                job_id=job_id,
                timeout=self.settings.job_timeout,
                result_ttl=7 * 86400,
                failure_ttl=7 * 86400,
                meta={"project": project},
                description=f"fine-tune kptllm for project {project}",
            )
        except BaseException:
            self.redis.delete(key)
            raise
        log.info("project %s: training job %s queued on %r", project, job_id, self.settings.queue_name)
        return job_id, True

    def enqueue_reconcile(self, project: int, ls_url: str) -> str | None:
        """Queue ``backend.annotation_index.reconcile_project`` unless one is already waiting; returns its job id."""
        job_id = f"index-{project}-{uuid.uuid4().hex[:12]}"
        if not self.redis.set(reconcile_key(self.settings.queue_name, project), job_id, nx=True, ex=self.settings.job_timeout):
            return None
        self.index_queue.enqueue_call(
            "backend.annotation_index.reconcile_project",
            args=(project, self.settings.data_dir, ls_url),
            job_id=job_id,
            timeout=self.settings.job_timeout,
            result_ttl=86400,
            failure_ttl=7 * 86400,
            meta={"project": project},
            description=f"reconcile the annotation index of project {project}",
        )
        log.info("project %s: annotation index reconcile %s queued", project, job_id)
        return job_id

    def flush_pending(self) -> list[int]:
        """Queue the jobs of projects marked "enqueue pending"; returns the projects queued."""
        done = []
        for project in pending_projects(self.settings.data_dir):
            events = EventLog(self.settings.data_dir, project)
            self.enqueue(project, str(events.state().get("ls_url") or ""))
            events.update_state(enqueue_pending=False)
            done.append(project)
        return done

    def _start_flusher(self, interval_s: float = 2.0) -> None:
        if self._flusher is not None and self._flusher.is_alive():
            return

        def loop() -> None:
            while True:
                time.sleep(interval_s)
                try:
                    queued = self.flush_pending()
                except RedisError:
                    continue
                if queued:
                    log.info("Redis is back: training jobs queued for projects %s", queued)
                if not pending_projects(self.settings.data_dir):
                    return

        self._flusher = threading.Thread(target=loop, name="kpassist-enqueue-retry", daemon=True)
        self._flusher.start()

    def jobs(self, project: int) -> list[dict]:
        """The project's RQ jobs (waiting, running, finished, failed) with their state, progress and failure reason."""
        prefix = f"train-{project}-"
        ids: list[str] = [j for j in self.queue.get_job_ids() if j.startswith(prefix)]
        for registry in (StartedJobRegistry, FinishedJobRegistry, FailedJobRegistry):
            reg = registry(self.settings.queue_name, connection=self.redis)
            ids += [j for j in reg.get_job_ids() if j.startswith(prefix)]
        out = []
        for job in Job.fetch_many(list(dict.fromkeys(ids)), connection=self.redis):
            if job is None:
                continue
            failure = job.latest_result().exc_string if job.is_failed and job.latest_result() else None
            out.append(
                {
                    "id": job.id,
                    "status": getattr(job.get_status(), "value", str(job.get_status())),
                    "enqueued_at": job.enqueued_at,
                    "started_at": job.started_at,
                    "ended_at": job.ended_at,
                    "progress": job.meta.get("progress"),
                    "stage": job.meta.get("stage"),
                    "failure": failure.strip().splitlines()[-1] if failure else None,
                }
            )
        return sorted(out, key=lambda j: str(j["enqueued_at"]))


def clear_namespace(url: str, name: str) -> None:
    """Delete the RQ queues' jobs (training, index, pre-labelling) and kpassist's keys of that namespace (tests and benchmarks on
    a shared Redis)."""
    r = Redis.from_url(url)
    for queue_name in (name, index_queue_name(name), f"{name}-prelabel"):
        q = Queue(queue_name, connection=r)
        ids = set(q.get_job_ids())
        for reg in (StartedJobRegistry, FinishedJobRegistry, FailedJobRegistry):
            ids |= set(reg(queue_name, connection=r).get_job_ids())
        q.empty()
        for job_id in ids:
            r.delete(f"rq:job:{job_id}", f"rq:results:{job_id}")
        for key in r.scan_iter(f"rq:*:{queue_name}"):
            r.delete(key)
    for key in r.scan_iter(f"{name}:*"):
        r.delete(key)
