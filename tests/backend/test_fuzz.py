"""Property-based tests: the LS-JSON conversion layer and the HTTP endpoints never crash on odd input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import label_config
from backend.app import create_app
from backend.convert import AnnotationFormatError, points_to_regions, regions_to_instances, regions_to_points
from backend.label_config import KeypointControl
from backend.settings import Settings
from backend.support import SupportRef

CONTROL = KeypointControl("kp", "image", "image", ("snout", "leftear", "rightear", "tailbase"))
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=20
)
regions = st.fixed_dictionaries(
    {"from_name": st.sampled_from(["kp", "other", ""]), "type": st.sampled_from(["keypointlabels", "KeyPointLabels", "x"])},
    optional={
        "value": st.fixed_dictionaries(
            {},
            optional={
                "x": st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.text(max_size=3),
                "y": st.floats(allow_nan=True, allow_infinity=True) | st.integers(),
                "keypointlabels": st.lists(st.sampled_from(["snout", "leftear", "rightear", "tailbase", "zzz"]), max_size=2)
                | json_values,
            },
        )
        | json_values,
        "id": json_scalars,
    },
)


@given(st.lists(regions, max_size=12) | json_values)
def test_regions_to_points_only_keeps_valid_points(result: object) -> None:
    try:
        pts = regions_to_points(result, CONTROL)
    except AnnotationFormatError:
        return
    assert len(pts.names) == len(set(pts.names)) == len(pts.xy_percent)
    assert set(pts.names) <= set(CONTROL.labels)
    assert np.isfinite(pts.xy_percent).all() and ((pts.xy_percent >= 0) & (pts.xy_percent <= 100)).all()


BOXED = KeypointControl("kp", "image", "image", ("snout", "leftear", "rightear", "tailbase"), "box", ("mouse",))
boxed_regions = st.one_of(
    regions.map(lambda r: r if "parentID" in r else {**r, "parentID": "b1"}),
    regions,
    st.fixed_dictionaries(
        {
            "from_name": st.sampled_from(["box", "kp"]),
            "type": st.sampled_from(["rectanglelabels", "x"]),
            "id": st.sampled_from(["b1", "b2", 3]),
        },
        optional={"value": st.fixed_dictionaries({}, optional={"rectanglelabels": json_values}) | json_values},
    ),
)


@given(st.lists(boxed_regions, max_size=12) | json_values)
def test_regions_to_instances_never_crashes_and_each_individual_is_valid(result: object) -> None:
    try:
        instances, skipped = regions_to_instances(result, BOXED)
    except AnnotationFormatError:
        return
    assert all(isinstance(s, str) for s in skipped)
    for pts in instances:
        assert 1 <= len(pts.names) == len(set(pts.names)) == len(pts.xy_percent)
        assert set(pts.names) <= set(BOXED.labels) and isinstance(pts.box_label, str)
        assert np.isfinite(pts.xy_percent).all() and ((pts.xy_percent >= 0) & (pts.xy_percent <= 100)).all()


@given(
    st.lists(
        st.tuples(st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True, allow_infinity=True)),
        min_size=4,
        max_size=4,
    ),
    st.lists(st.floats(min_value=-1, max_value=2) | st.just(float("nan")), min_size=4, max_size=4),
    st.integers(1, 5000),
    st.integers(1, 5000),
)
def test_points_to_regions_stay_inside_the_image(xy: list, scores: list, width: int, height: int) -> None:
    out = points_to_regions(list(CONTROL.labels), np.array(xy, float), np.array(scores, float), width, height, CONTROL, 0.1)
    for r in out:
        assert 0 <= r["value"]["x"] <= 100 and 0 <= r["value"]["y"] <= 100 and math.isfinite(r["score"])
        assert r["score"] >= 0.1


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory, blob_image, local_service) -> dict:
    """One app for all examples, its support set on a local blob image, so /predict reaches the engine."""
    import cv2

    tmp = tmp_path_factory.mktemp("fuzz")
    image, pts = blob_image()
    cv2.imwrite(str(tmp / "s.png"), image[..., ::-1])
    pct = tuple((float(x) * 100 / 160, float(y) * 100 / 120) for x, y in pts)
    support = SupportRef(1, "2026-01-01T00:00:00Z", 1, str(tmp / "s.png"), ("snout", "leftear", "rightear"), pct)
    settings = Settings(data_dir=str(tmp / "var"), local_root=str(tmp), queue_name="kpassist-fuzz")
    app = create_app(settings, local_service(settings, support))
    return {"client": app.test_client(), "image": str(tmp / "s.png"), "service": app.extensions["kpassist"]["service"]}


@settings(max_examples=60, deadline=None)
@given(path=st.sampled_from(["/predict", "/setup", "/webhook", "/versions"]), body=json_values)
def test_endpoints_answer_4xx_not_5xx_on_any_json(fuzz_app: dict, path: str, body: object) -> None:
    resp = fuzz_app["client"].post(path, json=body)
    assert resp.status_code < 500, (path, body, resp.json)


@settings(max_examples=40, deadline=None)
@given(
    odd=st.lists(st.dictionaries(st.sampled_from(["id", "data", "project"]), json_values, max_size=3), max_size=4),
    at=st.integers(0, 4),
)
def test_predict_with_odd_tasks_beside_a_good_one(fuzz_app: dict, odd: list, at: int) -> None:
    good = {"id": 99, "data": {"image": fuzz_app["image"]}}
    tasks = [*odd[:at], good, *odd[at:]]
    config = label_config.read("mouse_topview_4")
    resp = fuzz_app["client"].post("/predict", json={"tasks": tasks, "project": "1.1", "label_config": config})
    assert resp.status_code == 200 and len(resp.json["results"]) == len(tasks)
    reached = resp.json["results"][min(at, len(odd))]
    assert reached["result"], "the good task must reach the engine and get keypoints"
    assert fuzz_app["service"].supports.builds == 1  # the support was set once and reused
