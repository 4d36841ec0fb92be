"""The HTTP app: Label Studio's ML backend protocol on Flask, built by a factory (no module-level app).

Label Studio 1.23 calls (facts in ../shared/docs/label-studio-protocol.md, each kept by a test in tests/backend):
- ``GET /health`` (and ``GET /``) on connect and before every retrieve;
- ``POST /setup`` ``{"project": "<id>.<ts>", "schema", "hostname", "access_token"}`` -> ``{"model_version"}``;
- ``POST /predict`` ``{"tasks", "project", "label_config", "params": {"context"}}`` -> ``{"results", "model_version"}``,
  one result per task in order; interactive pre-annotation calls it without /setup first;
- ``POST /webhook`` ``{"action", "annotation", "task", "project"}``, "Start training" being ``START_TRAINING``;
- ``GET /versions``.
kpassist's own: ``GET /kpassist/projects/<id>/jobs`` (training jobs and versions), ``.../warnings`` (label checks),
``POST|GET|DELETE .../prelabel`` (start, follow, cancel whole-project pre-labelling on the RQ workers), ``.../quality``
(live quality per model version from the corrections, and rollbacks).
"""

from __future__ import annotations

import hmac
import logging
import threading
from dataclasses import dataclass

from flask import Flask, Response, current_app, jsonify, request
from redis.exceptions import RedisError
from werkzeug.exceptions import BadRequest, HTTPException

from backend.events import EventLog
from backend.jobs import read_train_config
from backend.label_config import LabelConfigError
from backend.ls_client import LabelStudioError
from backend.model import KeypointModel
from backend.prelabel import PrelabelError, Prelabels
from backend.service import BatchTooLargeError, PredictionService, project_store
from backend.settings import Settings, SettingsError
from backend.suggest import suggest
from backend.training_queue import TrainingQueue
from kp_model.config import ConfigError

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024 * 1024  # a /predict of 1000 tasks with their annotations is a few MB


class RequestError(ValueError):
    """The request body is not what the endpoint expects; answered 400 with the message."""


@dataclass
class _Entry:
    schema: str
    hostname: str
    access_token: str
    model: KeypointModel


class ModelRegistry:
    """One KeypointModel per Label Studio project, kept across /setup calls: LS calls /setup before every retrieve,
    and the model is rebuilt only when the config, host or token changes."""

    def __init__(self, service: PredictionService) -> None:
        self.service = service
        self._entries: dict[int | None, _Entry] = {}
        self._lock = threading.Lock()
        self.builds = 0

    def setup(self, project: int | None, schema: str, hostname: str = "", access_token: str = "") -> KeypointModel:
        with self._lock:
            entry = self._entries.get(project)
            if entry and (entry.schema, entry.hostname, entry.access_token) == (schema, hostname, access_token):
                return entry.model
            model = KeypointModel(schema, service=self.service, project=project, hostname=hostname, access_token=access_token)
            self.builds += 1
            self._entries[project] = _Entry(schema, hostname, access_token, model)
            return model

    def hostname(self, project: int | None) -> str:
        """The Label Studio URL the project's /setup sent ("" before any /setup)."""
        with self._lock:
            entry = self._entries.get(project)
        return entry.hostname if entry else ""

    def for_request(self, project: int | None, schema: str | None) -> KeypointModel:
        """The /setup model of the project; without one (interactive pre-annotation after a restart), a model built
        from the request's ``schema``, keeping the host and token of an earlier /setup."""
        with self._lock:
            entry = self._entries.get(project)
        if entry is not None and (not schema or schema == entry.schema):
            return entry.model
        if not schema:
            raise RequestError("no model for this project yet: call /setup first or send label_config with the request")
        hostname = entry.hostname if entry else ""
        token = entry.access_token if entry else ""
        return self.setup(project, schema, hostname, token)


def parse_project(value: object) -> int | None:
    """Project id from LS's ``"<id>.<created_ts>"`` string, an int, or a project dict."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.split(".")[0].isdigit():
        return int(value.split(".")[0])
    return None


def _json_body() -> dict:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise RequestError("request body must be a JSON object (Content-Type: application/json)")
    return data


def _check_basic_auth() -> Response | None:
    """Before every request: the credentials of KPASSIST_BASIC_AUTH_USER/PASSWORD when they are set."""
    expected = current_app.config.get("KPASSIST_BASIC_AUTH")
    if not expected:
        return None
    auth = request.authorization
    user, password = expected
    if (
        auth is not None
        and hmac.compare_digest(str(auth.username or ""), user)
        and hmac.compare_digest(str(auth.password or ""), password)
    ):
        return None
    resp = jsonify({"status": 401, "detail": "basic auth required: set the ML backend's user and password in Label Studio"})
    resp.status_code = 401
    resp.headers["WWW-Authenticate"] = 'Basic realm="kpassist"'
    return resp


def create_app(
    settings: Settings | None = None, service: PredictionService | None = None, training: TrainingQueue | None = None
) -> Flask:
    """The backend app. ``settings`` default to the environment's; ``service`` (supports, predictors) and
    ``training`` (the RQ queue) are built from them unless given."""
    settings = settings or Settings.from_env()
    read_train_config(settings)  # a typo in KPASSIST_TRAIN_CONFIG fails here, not in the first training job
    service = service or PredictionService(settings)
    if service.training is None:
        service.training = training or TrainingQueue(settings)
    registry = ModelRegistry(service)
    runs: list[Prelabels] = []

    def prelabels() -> Prelabels:
        """Built on first use: the app starts without Redis."""
        if not runs:
            runs.append(Prelabels(settings, service.training.redis if service.training else None))
        return runs[0]

    app = Flask("kpassist")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.config["KPASSIST_BASIC_AUTH"] = (
        (settings.basic_auth_user, settings.basic_auth_password) if settings.basic_auth_user else None
    )
    app.extensions["kpassist"] = {"settings": settings, "service": service, "registry": registry}
    app.before_request(_check_basic_auth)

    @app.get("/")
    @app.get("/health")
    def health():
        return jsonify({"status": "UP", "model_class": KeypointModel.__name__, "engine": service.engine_version})

    @app.post("/setup")
    def setup():
        data = _json_body()
        schema = data.get("schema")
        if not isinstance(schema, str):
            raise RequestError("/setup needs 'schema': the project's labelling config XML")
        project = parse_project(data.get("project"))
        model = registry.setup(project, schema, data.get("hostname") or "", data.get("access_token") or "")
        return jsonify({"model_version": model.model_version})

    @app.post("/predict")
    def predict():
        data = _json_body()
        tasks = data.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise RequestError("/predict needs 'tasks': a list of Label Studio task objects")
        project = parse_project(data.get("project"))
        model = registry.for_request(project, data.get("label_config"))
        params = data.get("params") or {}
        results = model.predict(tasks, context=params.get("context") if isinstance(params, dict) else None)
        return jsonify({"results": results, "model_version": model.last_version})

    @app.post("/webhook")
    def webhook():
        data = _json_body()
        event = data.get("action")
        if not isinstance(event, str):
            raise RequestError("/webhook needs 'action': the Label Studio event name")
        project_data = data.get("project") if isinstance(data.get("project"), dict) else {}
        project = parse_project(data.get("project"))
        try:
            model = registry.for_request(project, project_data.get("label_config"))
        except (RequestError, LabelConfigError) as exc:
            log.info("webhook %s for project %s: no model to notify (%s)", event, project, exc)
            return jsonify({"status": "ignored", "event": event, "reason": str(exc)}), 200
        body = model.fit(event, data)
        return jsonify(body), 202 if body.get("status") == "kept" else 200

    @app.get("/versions")
    def versions():
        project = parse_project(request.args.get("project"))
        if project is None:
            return jsonify({"versions": [service.engine_version], "model_dir": settings.data_dir})
        return jsonify({"versions": [r["version"] for r in project_store(settings.data_dir, project).records()]})

    @app.get("/kpassist/projects/<int:project>/jobs")
    def project_jobs(project: int):
        """A project's training jobs (RQ state, stage, progress, failure) and versions (metrics, served)."""
        store = project_store(settings.data_dir, project)
        try:
            jobs, queue_error = service.training.jobs(project), None
        except RedisError as exc:
            jobs, queue_error = [], f"Redis unreachable ({exc}): job states unavailable, versions below are from disk"
        events = EventLog(settings.data_dir, project)
        return jsonify(
            {
                "project": project,
                "served": store.served(),
                "serving": service.engine(project)[0],
                "versions": store.records(),
                "jobs": jobs,
                "queue_error": queue_error,
                "events": events.count(),
                "changes_since_last_run": events.since_last_run(),
                "enqueue_pending": bool(events.state().get("enqueue_pending")),
                "quality": service.quality(project).summary(settings.quality_window),
            }
        )

    @app.get("/kpassist/projects/<int:project>/quality")
    def project_quality(project: int):
        """Live quality per model version from the annotators' corrections (backend.quality), over the ``?last=N``
        newest corrected tasks (default KPASSIST_QUALITY_WINDOW), and the rollbacks it caused."""
        last = request.args.get("last", str(settings.quality_window))
        if not last.isdigit() or not 1 <= int(last) <= 100_000:
            raise RequestError("last must be an integer from 1 to 100000")
        store = project_store(settings.data_dir, project)
        rollbacks = [{"version": r["version"], **r["rolled_back"]} for r in store.records() if r.get("rolled_back")]
        return jsonify(
            {
                "project": project,
                "serving": service.engine(project)[0],
                "last": int(last),
                "versions": service.quality(project).summary(int(last)),
                "rollbacks": rollbacks,
            }
        )

    @app.get("/kpassist/projects/<int:project>/warnings")
    def project_warnings(project: int):
        return jsonify({"project": project, "warnings": service.label_checks.warnings(project)})

    @app.get("/kpassist/projects/<int:project>/suggest")
    def suggest_next(project: int):
        """The tasks to label next (``?n=10``): unlabelled, lowest prediction score first, spread over different-looking
        images. Needs the project's /setup (its labelling config and Label Studio connection)."""
        n = request.args.get("n", "10")
        if not n.isdigit() or not 1 <= int(n) <= 200:
            raise RequestError("n must be an integer from 1 to 200")
        model = registry.for_request(project, None)
        if model.connection.client is None:
            raise RequestError("no Label Studio URL for this project: connect it from Label Studio or set LABEL_STUDIO_URL")
        control = model.controls[0]
        found = suggest(model.connection.client, project, model.connection.fetcher.fetch, control.image_field, int(n))
        return jsonify({"project": project, "tasks": found})

    @app.post("/kpassist/projects/<int:project>/prelabel")
    def prelabel_start(project: int):
        """Pre-label every task of the project on the RQ workers; body (optional): ``{"chunk_size": n}``."""
        data = request.get_json(silent=True) or {}
        chunk = data.get("chunk_size", 0) if isinstance(data, dict) else 0
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 0:
            raise RequestError("chunk_size must be a positive integer (tasks per RQ job)")
        ls_url = registry.hostname(project) or settings.label_studio_url
        if not ls_url:
            raise RequestError("no Label Studio URL for this project: connect it from Label Studio or set LABEL_STUDIO_URL")
        try:
            state = prelabels().start(project, ls_url, chunk)
        except PrelabelError as exc:
            return jsonify({"status": 409, "detail": str(exc)}), 409
        return jsonify(state), 202

    @app.get("/kpassist/projects/<int:project>/prelabel")
    def prelabel_status(project: int):
        """The project's latest pre-labelling run: status, done / total, written / skipped / failed, tasks/s, ETA."""
        state = prelabels().status(project)
        if state is None:
            return jsonify({"status": 404, "detail": f"project {project} has no pre-labelling run"}), 404
        return jsonify(state)

    @app.delete("/kpassist/projects/<int:project>/prelabel")
    def prelabel_cancel(project: int):
        state = prelabels().cancel(project)
        if state is None:
            return jsonify({"status": 404, "detail": f"project {project} has no pre-labelling run"}), 404
        return jsonify(state)

    @app.errorhandler(RedisError)
    def redis_down(exc: RedisError):
        log.error("Redis: %s", exc)
        return jsonify({"status": 503, "detail": f"Redis at {settings.redis_url} is unreachable: {exc}"}), 503

    @app.errorhandler(RequestError)
    @app.errorhandler(LabelConfigError)
    @app.errorhandler(ConfigError)
    @app.errorhandler(SettingsError)
    def bad_request(exc: Exception):
        return jsonify({"status": 400, "detail": str(exc)}), 400

    @app.errorhandler(BatchTooLargeError)
    def too_large(exc: BatchTooLargeError):
        return jsonify({"status": 413, "detail": str(exc)}), 413

    @app.errorhandler(LabelStudioError)
    def upstream(exc: LabelStudioError):
        log.error("Label Studio: %s", exc)
        return jsonify({"status": 502, "detail": str(exc)}), 502

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        detail = "request body must be a JSON object" if isinstance(exc, BadRequest) else exc.description
        return jsonify({"status": exc.code, "detail": detail}), exc.code

    return app
