"""``kpassist serve``: runs this interpreter's gunicorn and exits non-zero on failure."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from bench.devservers import free_port

pytestmark = pytest.mark.slow


def serve(port: int, tmp_path: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--no-worker"],
        env={**os.environ, "KPASSIST_DATA_DIR": str(tmp_path / "var"), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_bad_setting_exits_non_zero_with_the_reason(tmp_path: Path) -> None:
    proc = serve(free_port(), tmp_path, KPASSIST_SCORE_THRESHOLD="7")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KPASSIST_SCORE_THRESHOLD" in out


def test_busy_port_exits_non_zero(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = serve(taken.getsockname()[1], tmp_path)
        proc.communicate(timeout=120)
    assert proc.returncode != 0


def test_serves_health_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    proc = serve(port, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = requests.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                break
            except requests.RequestException:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.5)
        assert health["status"] == "UP" and health["model_class"] == "KeypointModel"
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    assert proc.returncode == 0
