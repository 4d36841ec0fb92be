"""Real servers for end-to-end tests and the HTTP benchmarks: Label Studio (own virtualenv) and the kpassist backend."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
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
def running(
    cmd: list[str], env: dict, health_url: str, log: Path, timeout_s: float, cwd: Path | None = None
) -> Iterator[subprocess.Popen]:
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)
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
def serve_backend(
    workdir: Path,
    env_extra: dict[str, str],
    args: tuple[str, ...] = ("--no-worker",),
    port: int = 0,
    python: str = sys.executable,
    cwd: Path | None = None,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``kpassist serve`` (gunicorn) on ``port`` (0: a free one) of loopback, run by ``python`` in ``cwd`` (another
    checkout's code, for before/after benchmarks); yields (URL, the serve process)."""
    port = port or free_port()
    env = {**os.environ, "KPASSIST_DATA_DIR": str(workdir / "kpassist"), **env_extra}
    cmd = [python, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    url = f"http://127.0.0.1:{port}"
    with running(cmd, env, f"{url}/health", workdir / f"backend-{port}.log", 120, cwd=cwd) as proc:
        yield url, proc


@contextmanager
def kpassist_backend(workdir: Path, ls_url: str, token: str) -> Iterator[str]:
    """``kpassist serve`` connected to a Label Studio, with an RQ queue of its own (emptied after); yields its URL."""
    from backend.training_queue import clear_namespace

    queue = f"kpassist-e2e-{uuid.uuid4().hex[:8]}"
    env = {"LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": token, "KPASSIST_QUEUE": queue}
    try:
        with serve_backend(workdir, env) as (url, _):
            yield url
    finally:
        clear_namespace("redis://127.0.0.1:6379/0", queue)


class LabelStudioAPI:
    """Token-authenticated calls to a Label Studio server, with the few project steps tests and benchmarks need."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def __call__(self, method: str, path: str, **kwargs) -> requests.Response:
        resp = self.session.request(method, self.url + path, timeout=120, **kwargs)
        if resp.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {resp.status_code} {resp.text[:500]}")
        return resp

    def create_project(self, title: str, label_config: str) -> int:
        return self("POST", "/api/projects", json={"title": title, "label_config": label_config}).json()["id"]

    def import_images(self, project: int, paths: list[Path]) -> list[dict]:
        """One task per image (one file per request: several parts would become one task), in ``paths`` order."""
        for path in paths:
            with path.open("rb") as fh:
                self("POST", f"/api/projects/{project}/import", files={"file": (path.name, fh, "image/png")})
        tasks = self("GET", f"/api/tasks/?project={project}&page_size=1000").json()["tasks"]
        return [
            next(t for t in tasks if t["data"]["image"].endswith("-" + p.name) or t["data"]["image"].endswith("/" + p.name))
            for p in paths
        ]

    def annotate(self, task_id: int, keypoints, names: list[str], width: int, height: int, control: str = "kp") -> dict:
        """Post an annotation of (K, 3) pixel keypoints (x, y, v; v > 0 labelled) for the KeyPointLabels ``control``."""
        result = [
            {
                "id": f"kp{i}",
                "from_name": control,
                "to_name": "image",
                "type": "keypointlabels",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {"x": float(x) * 100 / width, "y": float(y) * 100 / height, "width": 0.8, "keypointlabels": [names[i]]},
            }
            for i, (x, y, v) in enumerate(keypoints)
            if v > 0
        ]
        return self("POST", f"/api/tasks/{task_id}/annotations", json={"result": result}).json()
