"""``kpassist`` command line: serve the backend (+ RQ worker) and run workers; ``kpassist bench`` is forwarded to
bench.cli, which the server never imports."""

from __future__ import annotations

import argparse
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


def worker_command(settings: Settings) -> list[str]:
    """An RQ worker on the index queue (short reconciles first) and the training queue."""
    from backend.training_queue import index_queue_name

    queues = [index_queue_name(settings.queue_name), settings.queue_name]
    return [sys.executable, "-m", "rq.cli", "worker", "--url", settings.redis_url, *queues]


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
    from backend.settings import Settings

    settings = Settings.from_env()
    return subprocess.call(worker_command(settings))


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
    sub.add_parser("bench", help="benchmarks writing JSON reports (kpassist bench --help)")
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
