"""Property-based tests: the LS-JSON conversion layer and the HTTP endpoints never crash on odd input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import label_config
from backend.compat import create_app
from backend.convert import AnnotationFormatError, points_to_regions, regions_to_points
from backend.label_config import KeypointControl
from backend.settings import Settings

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


_app_cache: dict = {}


def _client(tmp: Path):
    if "client" not in _app_cache:
        _app_cache["client"] = create_app(Settings(data_dir=str(tmp))).test_client()
    return _app_cache["client"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/predict", "/setup", "/webhook", "/versions", "/train"]), body=json_values)
def test_endpoints_answer_4xx_not_5xx_on_any_json(tmp_path: Path, path: str, body: object) -> None:
    resp = _client(tmp_path).post(path, json=body)
    assert resp.status_code < 500, (path, body, resp.json)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tasks=st.lists(st.dictionaries(st.sampled_from(["id", "data", "project"]), json_values, max_size=3), max_size=4))
def test_predict_with_odd_tasks(tmp_path: Path, tasks: list) -> None:
    resp = _client(tmp_path).post("/predict", json={"tasks": tasks, "label_config": label_config.read("mouse_topview_4")})
    assert resp.status_code < 500 and (resp.status_code != 200 or len(resp.json["results"]) == len(tasks))
