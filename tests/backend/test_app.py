"""The HTTP app against the Label Studio protocol facts it relies on (../shared/docs/label-studio-protocol.md),
through Flask's test client. The e2e tests check the same against the real Label Studio 1.23.2."""

from __future__ import annotations

import base64
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

import label_config
from backend.app import create_app, parse_project
from backend.settings import Settings

CONFIG = label_config.read("mouse_topview_4")


def test_no_module_level_app_and_no_label_studio_ml() -> None:
    import backend.app

    assert not any(hasattr(backend.app, name) for name in ("app", "application"))
    assert "label_studio_ml" not in sys.modules
    with pytest.raises(ImportError):
        importlib.import_module("label_studio_ml")


def test_health_answers_get_on_both_paths(make_client) -> None:
    _, client = make_client()
    for path in ("/health", "/"):
        resp = client.get(path)
        assert resp.status_code == 200 and resp.json["status"] == "UP" and resp.json["model_class"] == "KeypointModel"


def test_versions_answers_get(make_client) -> None:
    _, client = make_client()
    assert client.get("/versions").json["versions"]
    assert client.get("/versions?project=4").json["versions"] == []  # no fine-tuned version yet


def test_setup_answers_the_model_version_and_does_not_rebuild(make_client) -> None:
    app, client = make_client()
    registry = app.extensions["kpassist"]["registry"]
    body = {"project": "5.1700000000", "schema": CONFIG, "hostname": "", "access_token": "", "extra_params": None}
    v1 = client.post("/setup", json=body).json["model_version"]
    v2 = client.post("/setup", json=body).json["model_version"]  # LS calls /setup before every retrieve
    assert v1 == v2 and isinstance(v1, str) and registry.builds == 1
    client.post("/setup", json={**body, "schema": label_config.read("hand_21")})
    assert registry.builds == 2


def test_predict_before_setup_uses_the_request_config(make_client) -> None:
    _, client = make_client()  # interactive pre-annotation and /predict/test call /predict without /setup
    body = {"tasks": [{"id": 1, "data": {"image": "x.png"}}], "label_config": CONFIG, "params": {"context": None}}
    resp = client.post("/predict", json=body)
    assert resp.status_code == 200 and resp.json["results"] == [[]]  # no support yet: nothing stored, not an error
    resp = client.post("/predict", json={"tasks": [{"id": 1, "data": {}}], "project": "9.1"})
    assert resp.status_code == 400 and "/setup" in resp.json["detail"]


def test_predict_one_result_per_task_in_order_and_a_broken_image_fails_alone(make_client, images, support_ref) -> None:
    _, client = make_client(support_ref)
    setup = client.post("/setup", json={"project": "2.1", "schema": CONFIG}).json["model_version"]
    tasks = [
        {"id": 10, "data": {"image": images["query"]}},
        {"id": 11, "data": {"image": images["broken"]}},
        {"id": 12, "data": {"image": "/nowhere/missing.png"}},
        {"id": 13, "data": {}},
        {"id": 15, "data": {"image": ["not", "a", "url"]}},
        {"id": 14, "data": {"image": images["support"]}},
    ]
    params = {"login": None, "password": None, "context": None}
    resp = client.post("/predict", json={"tasks": tasks, "project": "2.1", "label_config": CONFIG, "params": params})
    assert resp.status_code == 200
    results = resp.json["results"]
    assert len(results) == 6 and results[1] == results[2] == results[3] == results[4] == []
    for good in (results[0], results[5]):
        labels = sorted(r["value"]["keypointlabels"][0] for r in good["result"])
        assert labels == ["leftear", "rightear", "snout"] and 0 <= good["score"] <= 1
        assert all("model_version" not in r for r in good["result"])  # a per-region version made LS store duplicates
        for r in good["result"]:  # LS's keypoint region: percent coordinates, image size, one label
            assert (r["from_name"], r["to_name"], r["type"]) == ("kp", "image", "keypointlabels")
            assert 0 <= r["value"]["x"] <= 100 and 0 <= r["value"]["y"] <= 100 and r["original_width"] == 160
    assert resp.json["model_version"] == setup and "+support.1@" in setup


def test_an_engine_error_fails_its_task_alone_and_is_logged(
    make_client, local_service, images, support_ref, tmp_path, blob_image, caplog
):
    import cv2

    class FailingEngineService(local_service):
        """Its engine raises on one image (a stand-in for any engine bug): that task must fail alone."""

        def engine(self, project):
            version, make = super().engine(project)

            def make_failing():
                predictor = make()
                predict = predictor.predict

                def predict_or_fail(queries: list[np.ndarray]):
                    if any(q.shape[1] == 161 for q in queries):
                        raise RuntimeError("engine bug on a 161 px wide image")
                    return predict(queries)

                predictor.predict = predict_or_fail
                return predictor

            return version, make_failing

    odd, _ = blob_image(width=161)
    cv2.imwrite(str(tmp_path / "odd.png"), odd[..., ::-1])
    _, client = make_client(support_ref, service_class=FailingEngineService)
    tasks = [{"id": 1, "data": {"image": images["query"]}}, {"id": 2, "data": {"image": str(tmp_path / "odd.png")}}]
    resp = client.post("/predict", json={"tasks": tasks, "project": "2.1", "label_config": CONFIG})
    assert resp.status_code == 200
    assert resp.json["results"][0]["result"] and resp.json["results"][1] == []
    assert any("task 2" in r.getMessage() and r.exc_info for r in caplog.records)


def test_webhook_events_reach_fit_in_process(make_client) -> None:
    _, client = make_client()
    client.post("/setup", json={"project": "6.1", "schema": CONFIG})
    for action in ("ANNOTATION_CREATED", "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED"):
        body = {"action": action, "project": {"id": 6}, "annotation": {"id": 1}, "task": {"id": 3}}
        resp = client.post("/webhook", json=body)
        assert resp.status_code == 200 and resp.json["status"] == "recorded"  # under the training threshold (5)
    resp = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 77}})
    assert resp.status_code == 200 and resp.json["status"] == "ignored"


@pytest.mark.redis
def test_start_training_webhook_queues_a_job(make_client, queue_name: str) -> None:
    _, client = make_client(queue_name=queue_name)
    client.post("/setup", json={"project": "3.1700000000", "schema": CONFIG})
    resp = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
    assert resp.status_code == 200
    assert resp.json["status"] == "queued" and resp.json["job_id"].startswith("train-3-")


def test_annotation_webhooks_cost_no_support_rebuild(make_client, images, support_ref) -> None:
    app, client = make_client(support_ref)
    supports = app.extensions["kpassist"]["service"].supports
    client.post("/setup", json={"project": "2.1", "schema": CONFIG})
    task = {"id": 10, "data": {"image": images["query"]}}
    client.post("/predict", json={"tasks": [task], "project": "2.1"})
    assert supports.builds == 1
    for ann in (7, 8):  # unrelated annotations: the support (annotation 1, unchanged) stays cached
        client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 2}, "annotation": {"id": ann}})
    client.post("/predict", json={"tasks": [task], "project": "2.1"})
    assert supports.builds == 1


def test_bad_requests_are_4xx_with_the_reason(make_client) -> None:
    _, client = make_client()
    assert client.post("/predict", data="not json", content_type="application/json").status_code == 400
    assert client.post("/predict", json={"tasks": "x", "label_config": CONFIG}).status_code == 400
    assert client.post("/setup", json={"project": "1.1"}).status_code == 400
    bad = client.post("/setup", json={"project": "1.1", "schema": "<View><Image name='i' value='$i'/></View>"})
    assert bad.status_code == 400 and "KeyPointLabels" in bad.json["detail"]
    assert client.post("/webhook", json={"project": 1}).status_code == 400
    many = client.post("/predict", json={"tasks": [{"id": i} for i in range(1001)], "label_config": CONFIG})
    assert many.status_code == 413
    assert client.get("/nowhere").status_code == 404 and client.get("/nowhere").json["status"] == 404
    assert client.get("/predict").status_code == 405


@pytest.mark.parametrize(
    "value, expected", [("12.1700000000", 12), (7, 7), ({"id": 3}, 3), ("abc", None), (None, None), (True, None)]
)
def test_parse_project(value: object, expected: int | None) -> None:
    assert parse_project(value) == expected


def test_basic_auth_guards_every_endpoint(make_client) -> None:
    _, client = make_client(basic_auth_user="ann", basic_auth_password="s3cret")
    good = {"Authorization": "Basic " + base64.b64encode(b"ann:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"ann:nope").decode()}
    for method, path, body in [
        ("get", "/health", None),
        ("post", "/setup", {"project": "1.1", "schema": CONFIG}),
        ("post", "/predict", {"tasks": [], "label_config": CONFIG}),
        ("get", "/versions", None),
        ("post", "/webhook", {"action": "PROJECT_UPDATED", "project": {"id": 1}}),
        ("get", "/kpassist/projects/1/warnings", None),
    ]:
        call = getattr(client, method)
        assert call(path, json=body).status_code == 401
        assert call(path, json=body, headers=bad).status_code == 401
        resp = call(path, json=body, headers=good)
        assert resp.status_code == 200, (path, resp.json)
    assert client.get("/health").headers["WWW-Authenticate"].startswith("Basic")
    _, open_client = make_client()  # another app of the process without credentials is not guarded
    assert open_client.get("/health").status_code == 200


def test_a_typo_in_the_train_config_fails_at_app_start(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text('{"train": {"stepz": 10}}')
    with pytest.raises(ValueError, match=r"train\.stepz"):
        create_app(Settings(data_dir=str(tmp_path), train_config=str(path)))


def test_interactive_context_keeps_the_placed_points(make_client, images, support_ref) -> None:
    """LS's interactive pre-annotation sends the points just placed in params.context.result: they come back exactly;
    placed points that do not reverse the pose leave the others where they were (kp_model.interactive)."""
    _, client = make_client(support_ref)
    client.post("/setup", json={"project": "2.1", "schema": CONFIG})
    task = {"id": 10, "data": {"image": images["query"]}}

    def predict(context: dict | None) -> dict:
        body = {"tasks": [task], "project": "2.1", "label_config": CONFIG, "params": {"context": context}}
        result = client.post("/predict", json=body).json["results"][0]["result"]
        return {r["value"]["keypointlabels"][0]: r for r in result}

    free = predict(None)
    placed = {
        "id": "u1",
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
        "value": {"x": 12.345678, "y": 67.891234, "width": 0.8, "keypointlabels": ["snout"]},
    }
    fixed = predict({"result": [placed]})
    assert fixed["snout"]["value"] == placed["value"] and fixed["snout"]["id"] == "u1"
    for name in ("leftear", "rightear"):
        assert fixed[name]["value"] == free[name]["value"]
    # two placed points, both shifted by the same (dx, dy) from where they were predicted: no turn, the third stays
    dx, dy = 3.0, -2.0
    second = {**placed, "id": "u2", "value": {**placed["value"], "keypointlabels": ["leftear"]}}
    second["value"]["x"], second["value"]["y"] = free["leftear"]["value"]["x"] + dx, free["leftear"]["value"]["y"] + dy
    first = {**placed, "value": {**placed["value"]}}
    first["value"]["x"], first["value"]["y"] = free["snout"]["value"]["x"] + dx, free["snout"]["value"]["y"] + dy
    both = predict({"result": [first, second]})
    assert both["snout"]["value"] == first["value"] and both["leftear"]["value"] == second["value"]
    assert both["rightear"]["value"] == free["rightear"]["value"]
    assert predict({"result": "not a list"}).keys() == free.keys()  # a malformed context is ignored


def test_a_config_with_boxes_gets_individuals_as_boxes_with_linked_keypoints(make_client, images, support_ref) -> None:
    """RectangleLabels + KeyPointLabels: each individual comes back as a box region and its keypoints, linked by
    parentID, each with a score (LS's convention for instances)."""
    _, client = make_client(support_ref, max_instances=3)
    config = label_config.read("mouse_topview_4_instances")
    client.post("/setup", json={"project": "2.1", "schema": config})
    body = {"tasks": [{"id": 10, "data": {"image": images["query"]}}], "project": "2.1", "label_config": config}
    [prediction] = client.post("/predict", json=body).json["results"]
    boxes = [r for r in prediction["result"] if r["type"] == "rectanglelabels"]
    points = [r for r in prediction["result"] if r["type"] == "keypointlabels"]
    assert 1 <= len(boxes) <= 3  # KPASSIST_MAX_INSTANCES caps them
    assert {b["from_name"] for b in boxes} == {"box"} and all(b["value"]["rectanglelabels"] == ["mouse"] for b in boxes)
    assert sorted(p["parentID"] for p in points) == sorted(b["id"] for b in boxes for _ in range(3))
    for b in boxes:  # the box holds its own keypoints
        v = b["value"]
        for p in (p for p in points if p["parentID"] == b["id"]):
            assert v["x"] <= p["value"]["x"] <= v["x"] + v["width"] and v["y"] <= p["value"]["y"] <= v["y"] + v["height"]
        assert 0 <= b["score"] <= 1
    assert prediction["score"] == pytest.approx(float(np.mean([b["score"] for b in boxes])), abs=1e-3)


def test_a_submitted_annotation_is_compared_with_the_prediction_its_task_showed(make_client, images, support_ref) -> None:
    _, client = make_client(support_ref)
    client.post("/setup", json={"project": "2.1", "schema": CONFIG})
    task = {"id": 10, "data": {"image": images["query"]}}
    body = client.post("/predict", json={"tasks": [task], "project": "2.1", "label_config": CONFIG}).json
    shown = body["results"][0]["result"]
    # the annotator accepts every point but moves the first far away
    final = [dict(r) for r in shown]
    final[0] = {**final[0], "value": {**final[0]["value"], "x": (final[0]["value"]["x"] + 50) % 100}}
    webhook = {"action": "ANNOTATION_CREATED", "project": {"id": 2}, "annotation": {"id": 5, "result": final}, "task": {"id": 10}}
    assert client.post("/webhook", json=webhook).status_code == 200
    quality = client.get("/kpassist/projects/2/quality").json
    [(engine, row)] = quality["versions"].items()
    assert body["model_version"].startswith(engine) and "+support" not in engine
    assert row["tasks"] == 1 and row["points"] == len(shown)
    assert row["acceptance@0.1"] == pytest.approx((len(shown) - 1) / len(shown))
    assert quality["rollbacks"] == [] and client.get("/kpassist/projects/2/jobs").json["quality"] == quality["versions"]
    assert client.get("/kpassist/projects/2/quality?last=0").status_code == 400
    # an interactive answer (the annotator's placed point inside) is not remembered as what the task showed
    placed = {**shown[0], "id": "u1", "value": {**shown[0]["value"], "x": 1.0, "y": 1.0}}
    body = {"tasks": [task], "project": "2.1", "label_config": CONFIG, "params": {"context": {"result": [placed]}}}
    assert client.post("/predict", json=body).status_code == 200
    webhook["annotation"] = {"id": 6, "result": shown}
    client.post("/webhook", json=webhook)
    row = client.get("/kpassist/projects/2/quality").json["versions"][engine]
    assert row["tasks"] == 2 and row["points"] == 2 * len(shown)  # compared with the first prediction, all kept
    assert row["acceptance@0.1"] == pytest.approx((2 * len(shown) - 1) / (2 * len(shown)))
