"""Whole-project pre-labelling as RQ jobs: a plan job lists the project's task ids and queues one chunk job per
``KPASSIST_PRELABEL_CHUNK`` tasks on the pre-labelling queue, so any number of ``kpassist worker`` processes, on
any number of machines sharing one Redis, share the work.

A chunk prepares the project's supports once (features cached), then for each task: skip it when it already holds
a prediction of the version served now, else predict it and store the prediction in Label Studio
(``POST /api/predictions``). A re-run, or the retry of a chunk whose worker was killed, therefore writes no duplicate
and loses nothing. A task whose image fails is recorded with its reason and the chunk goes on; Label Studio being
unreachable fails the chunk (RQ retries it).

State of a project's latest run: one Redis hash (status, counts, rate), a set of the task ids done (so a retried
chunk does not count twice) and a capped list of failures. Cancelling marks the run: queued chunks are removed and
running ones stop at their next task.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import uuid
from dataclasses import replace
from pathlib import Path

from redis import Redis
from rq import Callback, Queue, Retry
from rq.registry import StartedJobRegistry

from backend.label_config import parse_keypoint_controls
from backend.settings import Settings
from backend.training_queue import TrainingQueue, redis_connection

log = logging.getLogger(__name__)

ACTIVE = ("planning", "running")
MAX_FAILURES_KEPT = 1000  # failure reasons kept per run (the count is exact)
COUNTS = ("total", "done", "written", "skipped", "failed", "chunks", "chunks_done", "repeated")  # repeated: tasks
# a retried chunk (its worker died) or a re-queued one met again: not counted twice


class PrelabelError(RuntimeError):
    """A pre-labelling run cannot start (one is already running, the project has no support annotation yet)."""


def prelabel_queue_name(queue_name: str) -> str:
    """The RQ queue of pre-labelling chunks, beside the training queue (workers take it last)."""
    return f"{queue_name}-prelabel"


def run_key(namespace: str, project: int) -> str:
    return f"{namespace}:prelabel:{project}"


class Prelabels:
    """Starts, reports and cancels projects' pre-labelling runs (the HTTP endpoint and ``kpassist prelabel``)."""

    def __init__(self, settings: Settings, redis: Redis | None = None) -> None:
        self.settings = settings
        self.redis = redis or redis_connection(settings.redis_url)
        self.queue = Queue(prelabel_queue_name(settings.queue_name), connection=self.redis)

    def start(self, project: int, ls_url: str = "", chunk_size: int = 0) -> dict:
        """Queue a run over every task of ``project``; returns its status.

        Raises:
            PrelabelError: a run of this project is still planning or running (cancel it first).
            redis.exceptions.RedisError: Redis is unreachable.
        """
        current = self.status(project)
        if current is not None and current["status"] in ACTIVE:
            raise PrelabelError(
                f"project {project}: pre-labelling run {current['run']} is {current['status']} "
                f"({current['done']}/{current['total']} tasks); cancel it first (DELETE .../prelabel)"
            )
        chunk_size = chunk_size or self.settings.prelabel_chunk
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        run = uuid.uuid4().hex[:10]
        key = run_key(self.settings.queue_name, project)
        with self.redis.pipeline() as pipe:
            pipe.delete(key, key + ":done", key + ":failures")
            fields = {"run": run, "status": "planning", "created_at": time.time(), "chunk_size": chunk_size, "ls_url": ls_url}
            pipe.hset(key, mapping={**fields, **dict.fromkeys(COUNTS, 0)})
            pipe.execute()
        self.queue.enqueue_call(
            "backend.prelabel.plan_prelabel",
            args=(project, run, self.settings.data_dir, ls_url, chunk_size),
            job_id=f"prelabel-{project}-{run}-plan",
            timeout=self.settings.job_timeout,
            result_ttl=86400,
            failure_ttl=7 * 86400,
            retry=Retry(max=2, interval=5),
            on_failure=Callback(plan_failed),
            description=f"plan pre-labelling run {run} of project {project}",
        )
        log.info("project %s: pre-labelling run %s queued (chunks of %d tasks)", project, run, chunk_size)
        return self.status(project) or {}

    def status(self, project: int) -> dict | None:
        """The project's latest run: status, counts, tasks/s, ETA (s) and up to 50 failures; None when it has none.
        Reading it also lets RQ re-queue the chunks of workers that died (their heartbeat expired)."""
        StartedJobRegistry(self.queue.name, connection=self.redis).get_job_ids()  # RQ's cleanup of abandoned jobs
        key = run_key(self.settings.queue_name, project)
        raw = self.redis.hgetall(key)
        if not raw:
            return None
        h = {k.decode(): v.decode() for k, v in raw.items()}
        out: dict = {"project": project, "run": h["run"], "status": h["status"], **{c: int(h.get(c, 0)) for c in COUNTS}}
        out["version"] = h.get("version")
        out["reason"] = h.get("reason")
        out.update(_progress(h))
        out["seconds"] = {k[len("seconds_") :]: round(float(v), 2) for k, v in h.items() if k.startswith("seconds_")}
        out["failures"] = [json.loads(f) for f in self.redis.lrange(key + ":failures", 0, 49)]
        return out

    def cancel(self, project: int) -> dict | None:
        """Stop the project's run: queued chunks are removed, running ones stop at their next task."""
        key = run_key(self.settings.queue_name, project)
        run = self.redis.hget(key, "run")
        if run is None:
            return None
        if self.redis.hget(key, "status") in (b"planning", b"running"):
            self.redis.hset(key, mapping={"status": "cancelled", "finished_at": time.time()})
        prefix = f"prelabel-{project}-{run.decode()}-"
        removed = [job_id for job_id in self.queue.get_job_ids() if job_id.startswith(prefix)]
        for job_id in removed:
            self.queue.remove(job_id)
        log.info("project %s: pre-labelling run %s cancelled (%d queued chunks removed)", project, run.decode(), len(removed))
        return self.status(project)


def plan_failed(job, connection, type, value, traceback) -> None:  # noqa: A002 - RQ's callback signature
    """RQ failure callback of the plan job: the run is marked failed with the reason (once its retries are spent)."""
    if job.retries_left:
        return
    project, run = job.args[0], job.args[1]
    key = run_key(Settings.from_env().queue_name, project)
    if connection.hget(key, "run") == run.encode():
        connection.hset(key, mapping={"status": "failed", "reason": f"{type.__name__}: {value}", "finished_at": time.time()})


def _chunk_finished(redis: Redis, key: str, run: str) -> dict:
    """Count a finished chunk; the last one marks the run done. Returns the run's counts."""
    chunks_done = redis.hincrby(key, "chunks_done", 1)
    raw = {k.decode(): v.decode() for k, v in redis.hgetall(key).items()}
    if raw.get("run") == run and raw.get("status") == "running" and chunks_done >= int(raw.get("chunks", 0)):
        redis.hset(key, mapping={"status": "done", "finished_at": time.time()})
    return {"done": int(raw.get("done", 0)), "total": int(raw.get("total", 0)), **_progress(raw)}


def _progress(h: dict[str, str]) -> dict:
    """elapsed_s, tasks_per_s and eta_s (None once the run ended) of a run's decoded Redis hash."""
    done, total = int(h.get("done", 0)), int(h.get("total", 0))
    started = float(h.get("started_at") or 0)
    end = float(h.get("finished_at") or 0) or time.time()
    rate = round(done / (end - started), 3) if started and end > started else 0.0
    eta = round((total - done) / rate, 1) if rate > 0 and h.get("status") in ACTIVE else None
    return {"elapsed_s": round(end - started, 1) if started else 0.0, "tasks_per_s": rate, "eta_s": eta}


def chunk_failed(job, connection, type, value, traceback) -> None:  # noqa: A002 - RQ's callback signature
    """RQ failure callback of a chunk: once its retries are spent, the chunk is recorded as failed with the reason
    and counted, so the run still ends (a re-run takes the tasks it left)."""
    if job.retries_left:
        return
    project, run = job.args[0], job.args[1]
    key = run_key(Settings.from_env().queue_name, project)
    if connection.hget(key, "run") != run.encode():
        return
    reason = json.dumps({"chunk": job.id, "tasks": len(job.args[2]), "reason": f"{type.__name__}: {value}"})
    connection.lpush(key + ":failures", reason)
    connection.ltrim(key + ":failures", 0, MAX_FAILURES_KEPT - 1)
    _chunk_finished(connection, key, run)


def _job_context(data_dir: str, ls_url: str):
    """(settings, PredictionService, Connection) of a job process, from the worker's environment."""
    from backend.job_process import start_job
    from backend.service import PredictionService

    settings = replace(Settings.from_env(), data_dir=data_dir)
    start_job(settings.prelabel_threads, settings.job_nice)
    service = PredictionService(settings)
    service.training = TrainingQueue(settings)  # a project this process indexes first gets its reconcile queued
    conn = service.connection(ls_url)
    if conn.client is None:
        raise PrelabelError("no Label Studio URL for the worker: set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY)")
    return settings, service, conn


def plan_prelabel(project: int, run: str, data_dir: str, ls_url: str, chunk_size: int) -> dict:
    """RQ job: list the project's tasks and queue one ``prelabel_chunk`` per ``chunk_size`` of them."""
    settings, service, conn = _job_context(data_dir, ls_url)
    redis = redis_connection(settings.redis_url)
    key = run_key(settings.queue_name, project)
    if redis.hmget(key, "run", "status") != [run.encode(), b"planning"]:
        return {"run": run, "status": "superseded or cancelled"}
    controls = parse_keypoint_controls(conn.client.project(project).get("label_config") or "")
    supports, version = service.prepare(project, controls, conn)
    if not supports:
        raise PrelabelError(f"project {project} has no annotation with keypoints yet: annotate one image first")
    ids = conn.client.task_ids(project)
    chunks = [ids[i : i + chunk_size] for i in range(0, len(ids), chunk_size)]
    queue = Queue(prelabel_queue_name(settings.queue_name), connection=redis)
    redis.hset(
        key,
        mapping={"total": len(ids), "chunks": len(chunks), "version": version, "status": "running", "started_at": time.time()},
    )
    for i, chunk in enumerate(chunks):
        queue.enqueue_call(
            "backend.prelabel.prelabel_chunk",
            args=(project, run, chunk, data_dir, ls_url),
            job_id=f"prelabel-{project}-{run}-{i:05d}",
            timeout=settings.job_timeout,
            result_ttl=86400,
            failure_ttl=7 * 86400,
            retry=Retry(max=3, interval=[5, 30, 120]),
            on_failure=Callback(chunk_failed),
            description=f"pre-label tasks {chunk[0]}-{chunk[-1]} of project {project} (run {run}, chunk {i + 1}/{len(chunks)})",
        )
    if not chunks:
        redis.hset(key, mapping={"status": "done", "finished_at": time.time()})
    log.info("project %s: pre-labelling run %s: %d tasks in %d chunks queued (%s)", project, run, len(ids), len(chunks), version)
    return {"run": run, "total": len(ids), "chunks": len(chunks), "version": version}


def _fault_once(data_dir: str) -> None:
    """Fault injection for tests: KPASSIST_FAULT_AT=prelabel SIGKILLs this job process after its first stored
    prediction, once per data directory (the retry then completes)."""
    if os.environ.get("KPASSIST_FAULT_AT") != "prelabel":
        return
    try:
        os.close(os.open(Path(data_dir) / "fault-prelabel.done", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    log.warning("KPASSIST_FAULT_AT=prelabel: killing the job process mid-chunk")
    os.kill(os.getpid(), signal.SIGKILL)


def prelabel_chunk(project: int, run: str, task_ids: list[int], data_dir: str, ls_url: str) -> dict:
    """RQ job: predict and store the tasks ``task_ids`` that hold no prediction of the served version yet."""
    from backend.service import TaskPredictionError

    settings, service, conn = _job_context(data_dir, ls_url)
    redis = redis_connection(settings.redis_url)
    key = run_key(settings.queue_name, project)

    def live() -> bool:
        return redis.hmget(key, "run", "status") == [run.encode(), b"running"]

    counts = dict.fromkeys(("written", "skipped", "failed"), 0)
    if not live():
        return {"run": run, "status": "cancelled", **counts}
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}  # where the chunk's time goes (summed over the run: the per-task cost breakdown)
    controls = parse_keypoint_controls(conn.client.project(project).get("label_config") or "")
    supports, version = service.prepare(project, controls, conn)
    seconds["support"] = time.perf_counter() - t0
    tick = time.perf_counter()
    tasks = conn.client.tasks(project, task_ids)
    seconds["read_tasks"] = time.perf_counter() - tick
    gone = sorted(set(task_ids) - {t["id"] for t in tasks})
    for task in [*tasks, *({"id": i, "gone": True} for i in gone)]:
        if not live():
            log.info("project %s: pre-labelling run %s cancelled; chunk stopped", project, run)
            return {"run": run, "status": "cancelled", **counts}
        versions = {p.get("model_version") for p in task.get("predictions") or [] if isinstance(p, dict)}
        reason = None
        if task.get("gone"):
            outcome, reason = "failed", "the task no longer exists in Label Studio"
        elif version in versions:
            outcome = "skipped"
        elif not supports:
            outcome, reason = "failed", "the project has no usable support annotation"
        else:
            try:
                pred = service.predict_one(task, supports, conn, seconds)
            except TaskPredictionError as exc:
                outcome, reason = "failed", str(exc)
            else:
                tick = time.perf_counter()
                conn.client.create_prediction(task["id"], pred["result"], pred["score"], version)
                service.remember_predictions(project, [(task["id"], version, pred["result"])])
                seconds["store"] = seconds.get("store", 0.0) + time.perf_counter() - tick
                outcome = "written"
                _fault_once(data_dir)
        counts[outcome] += 1
        if not redis.sadd(key + ":done", task["id"]):  # a retried chunk does not count its tasks twice
            redis.hincrby(key, "repeated", 1)
        else:
            with redis.pipeline() as pipe:
                pipe.hincrby(key, "done", 1)
                pipe.hincrby(key, outcome, 1)
                if reason is not None:
                    pipe.lpush(key + ":failures", json.dumps({"task": task["id"], "reason": reason}))
                    pipe.ltrim(key + ":failures", 0, MAX_FAILURES_KEPT - 1)
                pipe.execute()
        if reason is not None:
            log.warning("project %s: task %s not pre-labelled: %s", project, task["id"], reason)
    with redis.pipeline() as pipe:
        for part, value in seconds.items():
            pipe.hincrbyfloat(key, f"seconds_{part}", value)
        pipe.execute()
    state = _chunk_finished(redis, key, run)
    log.info(
        "project %s: pre-labelling run %s: chunk of %d tasks in %.1fs (%d written, %d skipped, %d failed); run %d/%d tasks, "
        "%.2f tasks/s, ETA %s s",
        project,
        run,
        len(task_ids),
        time.perf_counter() - t0,
        counts["written"],
        counts["skipped"],
        counts["failed"],
        state.get("done", 0),
        state.get("total", 0),
        state.get("tasks_per_s", 0.0),
        state.get("eta_s"),
    )
    return {"run": run, "version": version, **counts}
