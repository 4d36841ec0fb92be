import numpy as np
import pytest

from backend.convert import AnnotationFormatError, percent_to_pixels, pixels_to_percent, points_to_regions, regions_to_points
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
