"""What every compute-bound RQ job process sets up first (``start_job``): logging for kpassist's loggers, bounded
compute threads and a background CPU priority."""

from __future__ import annotations

import logging
import os

from kp_model.threads import limit_threads

log = logging.getLogger(__name__)


def job_logging() -> None:
    """rq configures only its own logger: give kpassist's loggers (progress lines) a handler in the job process."""
    if not logging.getLogger().handlers:
        level = os.environ.get("KPASSIST_LOG_LEVEL", "INFO").upper()
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def background_priority(nice: int) -> int:
    """Raise this process's niceness to at least ``nice`` (0-19) and return it. RQ forks a work horse per job, so
    only the job is affected; the scheduler then gives /predict the CPU first whenever both want it, and the job
    every cycle /predict leaves idle. Niceness only weighs processes of one scheduling group (one session under
    Linux's autogroup, one cgroup under systemd), as ``kpassist serve`` runs its server and worker; a worker started
    apart needs its group's CPU weight lowered instead. A niceness is never lowered (that needs privileges)."""
    if not 0 <= nice <= 19:
        raise ValueError(f"niceness must be in [0, 19], got {nice}")
    now = os.getpriority(os.PRIO_PROCESS, 0)
    if now < nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        log.debug("job process %d: niceness %d -> %d", os.getpid(), now, nice)
    return max(now, nice)


def start_job(threads: int, nice: int) -> int:
    """Set up a compute-bound job's process: ``job_logging``, at most ``threads`` compute threads
    (kp_model.threads.limit_threads), niceness at least ``nice`` (``background_priority``); returns the niceness."""
    job_logging()
    limit_threads(threads)
    return background_priority(nice)
