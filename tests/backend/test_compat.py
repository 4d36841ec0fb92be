"""Each label-studio-ml 1.0.9 fix of backend.compat, through the Flask test client."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

import label_config
from backend.compat import create_app, parse_project
from backend.service import PredictionService
from backend.settings import Settings
from backend.support import SupportRef
from tests.conftest import blob_image

CONFIG = label_config.read("mouse_topview_4")


class LocalSupportService(PredictionService):
    """The real service with the support lookup pointed at a local image instead of a Label Studio."""

    def __init__(self, settings: Settings, support: SupportRef | None) -> None:
        super().__init__(settings)
        self.support = support

    def find_supports(self, project, controls, conn):
        return [self.support for _ in controls]


@pytest.fixture()
def images(tmp_path: Path) -> dict[str, str]:
    support, pts = blob_image()
    query, _ = blob_image(centre=(90, 60))
    paths = {"support": tmp_path / "s.png", "query": tmp_path / "q.png", "broken": tmp_path / "b.png"}
    cv2.imwrite(str(paths["support"]), support[..., ::-1])
    cv2.imwrite(str(paths["query"]), query[..., ::-1])
    paths["broken"].write_bytes(b"\x89PNG\r\n\x1a\n broken")
    h, w = support.shape[:2]
    out = {k: str(v) for k, v in paths.items()}
    out["pct"] = [(float(x) * 100 / w, float(y) * 100 / h) for x, y in pts]
    return out


def make_client(tmp_path: Path, support: SupportRef | None = None, **settings_kw: str):
    settings_kw.setdefault("queue_name", f"kpassist-test-{tmp_path.name}")
    settings = Settings(data_dir=str(tmp_path / "var"), local_root=str(tmp_path), **settings_kw)
    app = create_app(settings, LocalSupportService(settings, support))
    return app, app.test_client()


def test_fix1_get_versions(tmp_path: Path) -> None:
    _, client = make_client(tmp_path)
    for method in (client.get, client.post):
        resp = method("/versions", json={"project": "1.1"})
        assert resp.status_code == 200 and resp.json["versions"]


def test_fix2_is_training_and_train_answer(tmp_path: Path) -> None:
    _, client = make_client(tmp_path)
    assert client.get("/is_training?project=1.1").status_code == 200
    assert client.get("/is_training?project=1.1").json["is_training"] is False
    assert client.post("/train", json={"annotations": [], "project": "1.1"}).status_code == 200


def test_fix3_start_training_reaches_fit(tmp_path: Path, queue_name: str) -> None:
    _, client = make_client(tmp_path, queue_name=queue_name)
    client.post("/setup", json={"project": "3.1700000000", "schema": CONFIG})
    resp = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
    assert resp.status_code == 200
    assert resp.json["status"] == "queued" and resp.json["job_id"].startswith("train-3-")


def test_fix4_predict_before_setup(tmp_path: Path) -> None:
    _, client = make_client(tmp_path)
    resp = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": "x.png"}}], "label_config": CONFIG})
    assert resp.status_code == 200 and resp.json["results"] == [[]]  # no support yet: nothing, not an error
    resp = client.post("/predict", json={"tasks": [{"id": 1, "data": {}}], "project": "9.1"})
    assert resp.status_code == 400 and "/setup" in resp.json["detail"]


def test_fix5_setup_does_not_rebuild(tmp_path: Path) -> None:
    app, client = make_client(tmp_path)
    registry = app.config["KPASSIST_REGISTRY"]
    body = {"project": "5.1700000000", "schema": CONFIG, "hostname": "", "access_token": ""}
    v1 = client.post("/setup", json=body).json["model_version"]
    v2 = client.post("/setup", json=body).json["model_version"]
    assert v1 == v2 and registry.builds == 1
    client.post("/setup", json={**body, "schema": label_config.read("hand_21")})
    assert registry.builds == 2


def test_fix6_webhooks_answer_in_process(tmp_path: Path) -> None:
    _, client = make_client(tmp_path)
    client.post("/setup", json={"project": "6.1", "schema": CONFIG})
    for action in ("ANNOTATION_CREATED", "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED"):
        resp = client.post("/webhook", json={"action": action, "project": {"id": 6}, "annotation": {"id": 1}})
        assert resp.status_code == 200 and resp.json["status"] == "recorded"  # under the training threshold (5)
    assert (tmp_path / "var" / "projects" / "6" / "events.jsonl").read_text().count("\n") == 4
    resp = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 77}})
    assert resp.status_code == 200 and resp.json["status"] == "ignored"


def test_predictions_one_per_task_and_a_broken_image_fails_alone(tmp_path: Path, images: dict) -> None:
    ref = SupportRef(1, "2026-01-01T00:00:00Z", 1, images["support"], ("snout", "leftear", "rightear"), tuple(images["pct"]))
    _, client = make_client(tmp_path, ref)
    setup = client.post("/setup", json={"project": "2.1", "schema": CONFIG}).json["model_version"]
    tasks = [
        {"id": 10, "data": {"image": images["query"]}},
        {"id": 11, "data": {"image": images["broken"]}},
        {"id": 12, "data": {"image": "/nowhere/missing.png"}},
        {"id": 13, "data": {}},
        {"id": 15, "data": {"image": ["not", "a", "url"]}},
        {"id": 14, "data": {"image": images["support"]}},
    ]
    resp = client.post("/predict", json={"tasks": tasks, "project": "2.1", "label_config": CONFIG})
    assert resp.status_code == 200
    results = resp.json["results"]
    assert len(results) == 6 and results[1] == results[2] == results[3] == results[4] == []
    for good in (results[0], results[5]):
        labels = sorted(r["value"]["keypointlabels"][0] for r in good["result"])
        assert labels == ["leftear", "rightear", "snout"] and 0 <= good["score"] <= 1
        assert all("model_version" not in r for r in good["result"])
    assert resp.json["model_version"] == setup and "+support.1@" in setup


def test_bad_requests_are_4xx(tmp_path: Path) -> None:
    _, client = make_client(tmp_path)
    assert client.post("/predict", data="not json", content_type="application/json").status_code == 400
    assert client.post("/predict", json={"tasks": "x", "label_config": CONFIG}).status_code == 400
    assert client.post("/setup", json={"project": "1.1"}).status_code == 400
    bad = client.post("/setup", json={"project": "1.1", "schema": "<View><Image name='i' value='$i'/></View>"})
    assert bad.status_code == 400 and "KeyPointLabels" in bad.json["detail"]
    assert client.post("/webhook", json={"project": 1}).status_code == 400
    many = client.post("/predict", json={"tasks": [{"id": i} for i in range(1001)], "label_config": CONFIG})
    assert many.status_code == 413


@pytest.mark.parametrize(
    "value, expected", [("12.1700000000", 12), (7, 7), ({"id": 3}, 3), ("abc", None), (None, None), (True, None)]
)
def test_parse_project(value: object, expected: int | None) -> None:
    assert parse_project(value) == expected


def test_basic_auth_guards_every_endpoint(tmp_path: Path) -> None:
    import base64

    _, client = make_client(tmp_path, basic_auth_user="ann", basic_auth_password="s3cret")
    good = {"Authorization": "Basic " + base64.b64encode(b"ann:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"ann:nope").decode()}
    for method, path, body in [
        ("get", "/health", None),
        ("post", "/setup", {"project": "1.1", "schema": CONFIG}),
        ("post", "/predict", {"tasks": [], "label_config": CONFIG}),
        ("get", "/versions", None),
        ("post", "/webhook", {"action": "PROJECT_UPDATED", "project": {"id": 1}}),
    ]:
        call = getattr(client, method)
        assert call(path, json=body).status_code == 401
        assert call(path, json=body, headers=bad).status_code == 401
        resp = call(path, json=body, headers=good)
        assert resp.status_code == 200, (path, resp.json)
    assert client.get("/health").headers["WWW-Authenticate"].startswith("Basic")
    _, open_client = make_client(tmp_path)  # a later app without credentials is not guarded
    assert open_client.get("/health").status_code == 200
