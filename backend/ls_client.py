"""The little of Label Studio's REST API the backend needs: auth, task images, annotated tasks, task ids and
predictions (pre-labelling)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from urllib.parse import urljoin

import requests

log = logging.getLogger(__name__)


class LabelStudioError(RuntimeError):
    """Label Studio could not be reached, refused the credentials, or answered something unexpected."""


class LabelStudioClient:
    """Talks to one Label Studio server.

    ``api_key`` is either a legacy token (sent as ``Authorization: Token ...``) or a personal access
    token (a JWT refresh token, exchanged at /api/token/refresh for short-lived access tokens).
    """

    def __init__(self, url: str, api_key: str, timeout_s: float = 10.0) -> None:
        if not url:
            raise LabelStudioError(
                "no Label Studio URL: connect the backend from Label Studio (it sends its hostname) or set LABEL_STUDIO_URL"
            )
        self.url = url.rstrip("/") + "/"
        self.api_key = api_key or ""
        self.timeout_s = timeout_s
        self._session = requests.Session()
        self._access: tuple[str, float] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show the key
        return f"LabelStudioClient({self.url!r})"

    @property
    def is_jwt(self) -> bool:
        return self.api_key.count(".") == 2

    def auth_header(self) -> dict[str, str]:
        if not self.api_key:
            raise LabelStudioError("no Label Studio API key: set LABEL_STUDIO_API_KEY (Account & Settings -> Access token)")
        if not self.is_jwt:
            return {"Authorization": f"Token {self.api_key}"}
        with self._lock:
            if self._access is None or self._access[1] < time.monotonic():
                resp = self._request("POST", "api/token/refresh", json={"refresh": self.api_key}, auth=False)
                self._access = (resp.json()["access"], time.monotonic() + 240)
            return {"Authorization": f"Bearer {self._access[0]}"}

    def absolute(self, path_or_url: str) -> str:
        return urljoin(self.url, path_or_url.lstrip("/"))

    def get_bytes(self, path: str, max_bytes: int) -> bytes:
        """Download a file served by Label Studio (``/data/upload/...``), at most ``max_bytes``."""
        resp = self._request("GET", path, stream=True)
        return read_limited(resp, max_bytes, self.absolute(path))

    def project(self, project_id: int) -> dict:
        """The project object (title, label_config, ...)."""
        return self._request("GET", f"api/projects/{int(project_id)}/").json()

    def annotated_tasks(
        self, project_id: int, page_size: int = 100, newest_first: bool = False, max_pages: int = 0
    ) -> Iterator[dict]:
        """Tasks of a project that have at least one annotation, with their annotations. ``newest_first``: ordered by
        their newest annotation's creation time, newest first; ``max_pages`` > 0 stops after that many requests."""
        query: dict = {
            "filters": {
                "conjunction": "and",
                "items": [{"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}],
            }
        }
        if newest_first:
            query["ordering"] = ["-tasks:completed_at"]
        page = 1
        while True:
            params = {"project": project_id, "fields": "all", "page": page, "page_size": page_size, "query": json.dumps(query)}
            resp = self._request("GET", "api/tasks/", params=params, allow_404=True)
            if resp.status_code == 404:  # past the last page
                return
            body = resp.json()
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            yield from tasks
            if len(tasks) < page_size or page == max_pages:
                return
            page += 1

    def task_ids(self, project_id: int, page_size: int = 1000) -> list[int]:
        """Every task id of a project, in id order (``include=id``: a few bytes per task, 10 requests for 10,000)."""
        ids: list[int] = []
        page = 1
        while True:
            params = {"project": project_id, "fields": "task_only", "include": "id", "page": page, "page_size": page_size}
            resp = self._request("GET", "api/tasks/", params=params, allow_404=True)
            if resp.status_code == 404:  # past the last page
                break
            body = resp.json()
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            ids.extend(int(t["id"]) for t in tasks)
            if len(tasks) < page_size:
                break
            page += 1
        return sorted(set(ids))

    def tasks(self, project_id: int, ids: list[int]) -> list[dict]:
        """The tasks ``ids`` of a project with their annotations and predictions (one request; LS's page size is
        the number of ids)."""
        query = {"selectedItems": {"all": False, "included": [int(i) for i in ids]}}
        params = {"project": project_id, "fields": "all", "page": 1, "page_size": max(1, len(ids)), "query": json.dumps(query)}
        return self.tasks_query(params)

    def tasks_query(self, params: dict) -> list[dict]:
        """One page of ``GET /api/tasks/`` with Data Manager ``params`` (project, fields, page, page_size, query)."""
        resp = self._request("GET", "api/tasks/", params=params, allow_404=True)
        if resp.status_code == 404:  # past the last page
            return []
        body = resp.json()
        return body.get("tasks", []) if isinstance(body, dict) else body

    def create_prediction(self, task_id: int, result: list, score: float, model_version: str) -> dict:
        """Store a prediction on a task (``POST /api/predictions``); returns LS's prediction object."""
        body = {"task": int(task_id), "result": result, "score": score, "model_version": model_version}
        return self._request("POST", "api/predictions/", json=body).json()

    def _request(self, method: str, path: str, auth: bool = True, allow_404: bool = False, **kwargs) -> requests.Response:
        url = self.absolute(path)
        headers = self.auth_header() if auth else {}
        try:
            resp = self._session.request(method, url, headers=headers, timeout=self.timeout_s, allow_redirects=False, **kwargs)
        except requests.RequestException as exc:
            raise LabelStudioError(f"cannot reach Label Studio at {self.url}: {exc}") from exc
        if resp.status_code in (401, 403):
            raise LabelStudioError(
                f"Label Studio refused the API key ({resp.status_code} on {path}): check LABEL_STUDIO_API_KEY; "
                "legacy tokens must be enabled in Organization settings, or use a personal access token"
            )
        if resp.status_code == 404 and allow_404:
            return resp
        if resp.status_code >= 400:
            raise LabelStudioError(f"Label Studio answered {resp.status_code} to {method} {path}: {resp.text[:200]}")
        return resp


def read_limited(resp: requests.Response, max_bytes: int, source: str) -> bytes:
    """Body of a streamed response, refusing more than ``max_bytes``."""
    declared = resp.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ValueError(f"{source}: {declared} bytes is over the {max_bytes}-byte image limit")
    chunks, total = [], 0
    for chunk in resp.iter_content(1 << 16):
        total += len(chunk)
        if total > max_bytes:
            raise ValueError(f"{source}: more than the {max_bytes}-byte image limit")
        chunks.append(chunk)
    return b"".join(chunks)
