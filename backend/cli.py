"""``kpassist`` command line: serve the backend (+ RQ worker) and run workers; ``kpassist bench`` is forwarded to
bench.cli, which the server never imports."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backend.settings import Settings

log = logging.getLogger("kpassist")


def _redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


MAINTENANCE_INTERVAL_S = 60  # how often a worker re-queues the jobs of workers that died (after their heartbeat expired)


def worker_queues(settings: Settings) -> list[str]:
    """The RQ queues a kpassist worker takes jobs from, in order: index reconciles (short), training, pre-labelling."""
    from backend.prelabel import prelabel_queue_name
    from backend.training_queue import index_queue_name

    return [index_queue_name(settings.queue_name), settings.queue_name, prelabel_queue_name(settings.queue_name)]


def worker_command(settings: Settings) -> list[str]:
    """``kpassist worker`` as a child process of ``kpassist serve``."""
    return [sys.executable, "-m", "backend.cli", "worker"]


def serve(args: argparse.Namespace) -> int:
    """Run gunicorn (and an RQ worker) in the foreground; exit non-zero as soon as one of them fails."""
    from backend.settings import Settings

    settings = Settings.from_env()  # fail fast on bad settings, before starting anything
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    cmds = [
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"{args.host}:{args.port}",
            "--workers",
            str(args.workers),
            "--threads",
            str(args.threads),
            "--timeout",
            str(args.timeout),
            "--access-logfile",
            "-",
            "backend.wsgi:create()",
        ]
    ]
    if args.no_worker:
        log.info("RQ worker not started (--no-worker)")
    elif _redis_reachable(settings.redis_url):
        cmds.append(worker_command(settings))
    else:
        log.warning("Redis at %s is not reachable: serving predictions without the training worker", settings.redis_url)
    procs = [subprocess.Popen(cmd) for cmd in cmds]
    log.info("kpassist backend on http://%s:%d (%d process(es))", args.host, args.port, len(procs))

    def stop(*_: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    finally:
        stop()
        for p in procs:
            p.wait(timeout=30)
    codes = [p.returncode for p in procs]
    failed = [c for c in codes if c not in (0, -signal.SIGTERM, -signal.SIGINT)]
    if failed:
        log.error("a kpassist process exited with %s", failed[0])
        return failed[0] if failed[0] > 0 else 1
    return 0


def worker(args: argparse.Namespace) -> int:
    """An RQ worker on ``worker_queues``. The job modules (and torch, OpenCV) are imported here, once: RQ forks a work
    horse per job, which inherits them instead of importing them again for every chunk."""
    from redis import Redis
    from rq import Worker

    import backend.annotation_index
    import backend.jobs
    import backend.prelabel  # noqa: F401 - preloaded for the forked work horses
    from backend.settings import Settings

    settings = Settings.from_env()
    queues = worker_queues(settings)
    w = Worker(queues, connection=Redis.from_url(settings.redis_url), maintenance_interval=MAINTENANCE_INTERVAL_S)
    log.info("kpassist worker on %s (Redis %s)", ", ".join(queues), settings.redis_url)
    # with_scheduler: retries wait their interval in RQ's scheduled registry (one worker at a time moves them back)
    w.work(with_scheduler=True)
    return 0


def prelabel(args: argparse.Namespace) -> int:
    """Start (or report, or cancel) a whole-project pre-labelling run; ``--wait`` follows it to the end."""
    from backend.prelabel import PrelabelError, Prelabels
    from backend.settings import Settings

    settings = Settings.from_env()
    runs = Prelabels(settings)
    if args.cancel:
        state = runs.cancel(args.project)
    elif args.status:
        state = runs.status(args.project)
    else:
        try:
            state = runs.start(args.project, args.ls_url or settings.label_studio_url, args.chunk_size)
        except PrelabelError as exc:
            log.error("%s", exc)
            return 2
    if state is None:
        log.error("project %s has no pre-labelling run", args.project)
        return 1
    while args.wait and state["status"] in ("planning", "running"):
        time.sleep(args.poll)
        state = runs.status(args.project) or state
        log.info(
            "run %s: %s, %d/%d tasks (%d written, %d skipped, %d failed), %.2f tasks/s, ETA %s s",
            state["run"], state["status"], state["done"], state["total"], state["written"], state["skipped"],
            state["failed"], state["tasks_per_s"], state["eta_s"],
        )  # fmt: skip
    print(json.dumps(state, indent=2))
    return 0 if state["status"] != "failed" else 1


def _bench(argv: list[str]) -> int:
    """``kpassist bench ...``: the benchmarks live in the bench package, imported only for this command."""
    from bench.cli import main as bench_main

    return bench_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="kpassist", description="One-shot keypoint pre-labelling backend for Label Studio")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the ML backend (gunicorn) and an RQ training worker")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--workers", type=int, default=1, help="gunicorn worker processes (each holds its own support cache)")
    p.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    p.add_argument("--timeout", type=int, default=300, help="seconds before gunicorn restarts a stuck worker")
    p.add_argument("--no-worker", action="store_true", help="do not start the RQ worker")
    p.set_defaults(func=serve)
    p = sub.add_parser("worker", help="run an RQ worker on the training queue")
    p.set_defaults(func=worker)
    p = sub.add_parser("prelabel", help="pre-label every task of a project on the RQ workers (kpassist worker)")
    p.add_argument("--project", type=int, required=True, help="Label Studio project id")
    p.add_argument("--ls-url", default="", help="Label Studio URL (default: LABEL_STUDIO_URL)")
    p.add_argument("--chunk-size", type=int, default=0, help="tasks per RQ job (default: KPASSIST_PRELABEL_CHUNK)")
    p.add_argument("--wait", action="store_true", help="follow the run's progress until it ends")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between progress lines with --wait")
    p.add_argument("--status", action="store_true", help="only report the project's latest run")
    p.add_argument("--cancel", action="store_true", help="cancel the project's run")
    p.set_defaults(func=prelabel)
    sub.add_parser("bench", help="benchmarks writing JSON reports (kpassist bench --help)")
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
