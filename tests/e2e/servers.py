"""Real servers for end-to-end tests: Label Studio (own virtualenv) and the kpassist backend."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
LS_VERSION = "1.23.2"
LS_USER, LS_PASSWORD, LS_TOKEN = "e2e@kpassist.local", "kpassist-e2e-pass", "kpassiste2etoken0123456789abcdef01234567"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def label_studio_venv() -> Path:
    """The Label Studio virtualenv (KPASSIST_LS_VENV or .lsvenv), created on first use (~1 GB, a few minutes)."""
    venv = Path(os.environ.get("KPASSIST_LS_VENV", REPO / ".lsvenv"))
    exe = venv / "bin" / "label-studio"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"label-studio=={LS_VERSION}"], check=True, timeout=1800)
    return venv


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}; log:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s; log:\n{log.read_text()[-3000:]}")


@contextmanager
def running(cmd: list[str], env: dict, health_url: str, log: Path, timeout_s: float) -> Iterator[subprocess.Popen]:
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(health_url, timeout_s, proc, log)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def label_studio(workdir: Path) -> Iterator[tuple[str, str]]:
    """A fresh Label Studio on a free loopback port with sqlite; yields (url, legacy token)."""
    venv = label_studio_venv()
    port = free_port()
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(workdir / "ls-data"),
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "ML_TIMEOUT_SETUP": "30",
        "ML_TIMEOUT_HEALTH": "10",
        "WEBHOOK_TIMEOUT": "10",
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    cmd = [
        str(venv / "bin" / "label-studio"),
        "start",
        "--no-browser",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--username",
        LS_USER,
        "--password",
        LS_PASSWORD,
        "--user-token",
        LS_TOKEN,
        "--enable-legacy-api-token",
    ]
    url = f"http://127.0.0.1:{port}"
    with running(cmd, env, f"{url}/health", workdir / "label-studio.log", 300):
        yield url, LS_TOKEN


@contextmanager
def kpassist_backend(workdir: Path, ls_url: str, token: str) -> Iterator[str]:
    """``kpassist serve`` (gunicorn) on a free loopback port; yields its URL."""
    port = free_port()
    env = {
        **os.environ,
        "LABEL_STUDIO_URL": ls_url,
        "LABEL_STUDIO_API_KEY": token,
        "KPASSIST_DATA_DIR": str(workdir / "kpassist"),
    }
    cmd = [sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--no-worker"]
    url = f"http://127.0.0.1:{port}"
    with running(cmd, env, f"{url}/health", workdir / "backend.log", 120):
        yield url
