import numpy as np
import pytest

from backend.convert import (
    AnnotationFormatError,
    instance_regions,
    percent_to_pixels,
    pixels_to_percent,
    points_to_regions,
    regions_to_instances,
    regions_to_points,
)
from backend.label_config import KeypointControl

CONTROL = KeypointControl("kp", "image", "image", ("snout", "leftear", "rightear", "tailbase"))


def region(label: str, x: float, y: float, from_name: str = "kp") -> dict:
    return {
        "id": label,
        "from_name": from_name,
        "to_name": "image",
        "type": "keypointlabels",
        "value": {"x": x, "y": y, "width": 0.8, "keypointlabels": [label]},
    }


def test_percent_pixel_round_trip() -> None:
    px = np.array([[0.0, 0.0], [640.0, 480.0], [320.0, 120.0]])
    pct = pixels_to_percent(px, 640, 480)
    np.testing.assert_allclose(pct, [[0, 0], [100, 100], [50, 25]])
    np.testing.assert_allclose(percent_to_pixels(pct, 640, 480), px)


def test_regions_to_points_keeps_valid_and_reports_the_rest() -> None:
    result = [
        region("snout", 10, 20),
        region("tailbase", 50.5, 60.25),
        region("whisker", 1, 1),  # unknown label
        region("leftear", float("nan"), 3),  # NaN
        region("rightear", 120, 3),  # outside the image
        region("snout", 11, 21),  # duplicate label
        region("snout", 5, 5, from_name="other"),  # another control: ignored silently
        {"from_name": "kp", "type": "rectanglelabels", "value": {}},
    ]
    pts = regions_to_points(result, CONTROL)
    assert pts.names == ["snout", "tailbase"]
    np.testing.assert_allclose(pts.xy_percent, [[10, 20], [50.5, 60.25]])
    assert len(pts.skipped) == 4
    assert any("whisker" in s for s in pts.skipped) and any("second point" in s for s in pts.skipped)


@pytest.mark.parametrize("bad", [None, {"a": 1}, "text", [1, 2]])
def test_regions_to_points_rejects_malformed_results(bad: object) -> None:
    with pytest.raises(AnnotationFormatError):
        regions_to_points(bad, CONTROL)


def test_points_to_regions_threshold_units_and_clipping() -> None:
    regions = points_to_regions(
        ["snout", "leftear", "rightear"],
        np.array([[320, 240], [700, -5], [10, 10]]),
        np.array([0.9, 0.8, 0.01]),
        640,
        480,
        CONTROL,
        min_score=0.1,
    )
    assert [r["value"]["keypointlabels"] for r in regions] == [["snout"], ["leftear"]]
    assert regions[0]["value"]["x"] == pytest.approx(50.0) and regions[0]["value"]["y"] == pytest.approx(50.0)
    assert (regions[1]["value"]["x"], regions[1]["value"]["y"]) == (100.0, 0.0)
    assert regions[0]["from_name"] == "kp" and regions[0]["to_name"] == "image" and regions[0]["type"] == "keypointlabels"
    assert regions[0]["original_width"] == 640 and regions[0]["score"] == pytest.approx(0.9)


BOXED = KeypointControl("kp", "image", "image", ("snout", "leftear", "rightear", "tailbase"), "box", ("mouse", "rat"))


def box(region_id: str, label: str = "mouse") -> dict:
    return {
        "id": region_id,
        "from_name": "box",
        "to_name": "image",
        "type": "rectanglelabels",
        "value": {"x": 1, "y": 1, "width": 40, "height": 40, "rectanglelabels": [label]},
    }


def child(label: str, x: float, y: float, parent: str | None) -> dict:
    r = region(label, x, y)
    r["id"] = f"{label}-{parent}"
    if parent is not None:
        r["parentID"] = parent
    return r


def test_regions_to_instances_groups_keypoints_by_their_box() -> None:
    result = [
        box("a"),
        box("b", "rat"),
        box("empty"),  # a box without keypoints: ignored
        child("snout", 10, 10, "a"),
        child("tailbase", 30, 30, "a"),
        child("snout", 60, 60, "b"),
        child("leftear", 5, 5, "gone"),  # its box is not in the annotation: left out, reported
    ]
    instances, skipped = regions_to_instances(result, BOXED)
    assert [(i.names, i.box_label) for i in instances] == [(["snout", "tailbase"], "mouse"), (["snout"], "rat")]
    np.testing.assert_allclose(instances[0].xy_percent, [[10, 10], [30, 30]])
    np.testing.assert_allclose(instances[1].xy_percent, [[60, 60]])
    assert len(skipped) == 1 and "'gone'" in skipped[0] and "no box" in skipped[0]


def test_a_repeated_label_without_boxes_is_refused_with_what_to_change() -> None:
    instances, skipped = regions_to_instances([region("snout", 10, 10), region("snout", 50, 50)], CONTROL)
    assert instances == []
    assert len(skipped) == 1 and "repeats a keypoint label" in skipped[0] and "RectangleLabels" in skipped[0]
    # one individual, no boxes: as regions_to_points, one instance
    instances, skipped = regions_to_instances([region("snout", 10, 10), region("tailbase", 50, 50)], CONTROL)
    assert [i.names for i in instances] == [["snout", "tailbase"]] and skipped == []


def test_instance_regions_box_around_the_points_linked_by_parent_id() -> None:
    regions = instance_regions(
        ["snout", "tailbase"], np.array([[100, 100], [300, 200]]), np.array([0.8, 0.6]), 400, 400, BOXED, "mouse"
    )
    box_region, *points = regions
    assert box_region["type"] == "rectanglelabels" and box_region["from_name"] == "box"
    assert box_region["value"]["rectanglelabels"] == ["mouse"]
    # points at x 25..75 %, y 25..50 %; grown by 10 % of that extent on each side
    v = box_region["value"]
    np.testing.assert_allclose([v["x"], v["y"], v["width"], v["height"]], [20, 22.5, 60, 30])
    assert box_region["score"] == pytest.approx(0.7)
    assert [p["parentID"] for p in points] == [box_region["id"]] * 2
    assert [p["value"]["keypointlabels"] for p in points] == [["snout"], ["tailbase"]]
    assert instance_regions(["snout"], np.array([[1, 1]]), np.array([0.01]), 10, 10, BOXED, "mouse", min_score=0.5) == []
