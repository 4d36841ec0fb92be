"""label-studio-ml 1.0.9 made to work with Label Studio 1.23.

Each fix names the break it mends (numbers as in ../shared/docs/label-studio-protocol.md):
1. ``GET /versions`` answered 405: a GET route is added beside the POST one.
2. ``/is_training`` and ``/train`` answered 500: both are replaced by working views.
3. START_TRAINING never reached ``fit()``: /webhook hands every event, START_TRAINING included, to ``fit(event, data)``.
4. ``/predict`` before any ``/setup`` answered 500: the model is built from the request's label_config.
5. Every ``/setup`` rebuilt the model: it is rebuilt only when the config, host or token changes.
6. Webhooks ran training through multiprocessing/RQ with second-resolution job ids: /webhook calls
   ``fit`` in-process and never uses 1.0.9's job manager.
7. ``label-studio-ml start`` ran whatever ``python`` was on PATH and exited 0 on failure: ``kpassist serve``
   runs gunicorn with this interpreter and exits non-zero when it fails (backend/cli.py).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from flask import Flask, jsonify, request
from redis.exceptions import RedisError
from werkzeug.exceptions import BadRequest, HTTPException

from backend.events import EventLog
from backend.label_config import LabelConfigError
from backend.ls_client import LabelStudioError
from backend.model import KeypointModel
from backend.service import BatchTooLargeError, PredictionService, project_store
from backend.settings import Settings, SettingsError

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """The request body is not what the endpoint expects; answered 400 with the message."""


@dataclass
class _Entry:
    schema: str
    hostname: str
    access_token: str
    model: KeypointModel


class ModelRegistry:
    """One KeypointModel per Label Studio project, kept across /setup calls (fix 5)."""

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

    def for_request(self, project: int | None, schema: str | None) -> KeypointModel:
        """The /setup model of the project; without one, a model built from ``schema`` (fix 4)."""
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


def _check_basic_auth():
    """Before every request: the credentials of KPASSIST_BASIC_AUTH_USER/PASSWORD when they are set."""
    import hmac

    from flask import current_app

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


def create_app(settings: Settings | None = None, service: PredictionService | None = None) -> Flask:
    """The label-studio-ml 1.0.9 Flask app with kpassist's model and the fixes above."""
    from label_studio_ml import api  # imported here: it builds its Flask app and manager at import

    settings = settings or Settings.from_env()
    service = service or PredictionService(settings)
    if service.training is None:
        from backend.training_queue import TrainingQueue

        service.training = TrainingQueue(settings)
    registry = ModelRegistry(service)
    app: Flask = api.init_app(KeypointModel, model_dir=settings.data_dir)
    app.config["KPASSIST_REGISTRY"] = registry
    app.config["KPASSIST_SERVICE"] = service
    # label-studio-ml's app is a module global: the hook is added once and reads this app's settings
    app.config["KPASSIST_BASIC_AUTH"] = (
        (settings.basic_auth_user, settings.basic_auth_password) if settings.basic_auth_user else None
    )
    if _check_basic_auth not in app.before_request_funcs.setdefault(None, []):
        app.before_request(_check_basic_auth)

    def setup():
        data = _json_body()
        schema = data.get("schema")
        if not isinstance(schema, str):
            raise RequestError("/setup needs 'schema': the project's labelling config XML")
        project = parse_project(data.get("project"))
        model = registry.setup(project, schema, data.get("hostname") or "", data.get("access_token") or "")
        return jsonify({"model_version": model.model_version})

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

    def versions():
        project = parse_project(request.args.get("project"))
        if project is None:
            return jsonify({"versions": [service.engine_version], "model_dir": settings.data_dir, "v2": True})
        return jsonify({"versions": [r["version"] for r in project_store(settings.data_dir, project).records()], "v2": True})

    def is_training():
        return jsonify({"is_training": False, "model_version": service.engine_version})

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
            }
        )

    def project_warnings(project: int):
        return jsonify({"project": project, "warnings": service.label_checks.warnings(project)})

    def train():
        return jsonify({"status": "ignored", "detail": "use the project's 'Start training' button (START_TRAINING webhook)"}), 200

    def health():
        return jsonify({"status": "UP", "model_class": KeypointModel.__name__, "engine": service.engine_version})

    views = {
        "_setup": setup,
        "_predict": predict,
        "webhook": webhook,
        "get_version": versions,
        "_is_training": is_training,
        "_train": train,
        "health": health,
    }
    for endpoint, view in views.items():
        app.view_functions[endpoint] = view
    if not any(r.rule == "/versions" and "GET" in r.methods for r in app.url_map.iter_rules()):
        app.add_url_rule("/versions", endpoint="get_version", methods=["GET"])
    extra = (
        ("/kpassist/projects/<int:project>/jobs", "kpassist_jobs"),
        ("/kpassist/projects/<int:project>/warnings", "kpassist_warnings"),
    )
    for rule, endpoint in extra:
        if endpoint not in app.view_functions:
            app.add_url_rule(rule, endpoint=endpoint, methods=["GET"])
    app.view_functions["kpassist_jobs"] = project_jobs
    app.view_functions["kpassist_warnings"] = project_warnings

    @app.errorhandler(RequestError)
    @app.errorhandler(LabelConfigError)
    @app.errorhandler(SettingsError)
    def bad_request(exc: Exception):
        return jsonify({"status": 400, "detail": str(exc)}), 400

    @app.errorhandler(BadRequest)
    def bad_json(exc: BadRequest):
        return jsonify({"status": 400, "detail": "request body must be a JSON object"}), 400

    @app.errorhandler(BatchTooLargeError)
    def too_large(exc: BatchTooLargeError):
        return jsonify({"status": 413, "detail": str(exc)}), 413

    @app.errorhandler(LabelStudioError)
    def upstream(exc: LabelStudioError):
        log.error("Label Studio: %s", exc)
        return jsonify({"status": 502, "detail": str(exc)}), 502

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return jsonify({"status": exc.code, "detail": exc.description}), exc.code

    return app
