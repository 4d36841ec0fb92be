"""What a fine-tuning run trains on: every individual of every annotation (boxes + parentID), never a keypoint
whose box is missing."""

from __future__ import annotations

import numpy as np

from backend.jobs import annotations_to_samples
from backend.label_config import KeypointControl

BOXED = KeypointControl("kp", "image", "image", ("snout", "tailbase"), "box", ("mouse",))


def test_every_individual_is_a_training_sample() -> None:
    def kp(label: str, x: float, y: float, parent: str) -> dict:
        value = {"x": x, "y": y, "keypointlabels": [label]}
        return {"id": f"{label}{parent}", "from_name": "kp", "type": "keypointlabels", "value": value, "parentID": parent}

    def box(rid: str) -> dict:
        value = {"x": 0, "y": 0, "width": 10, "height": 10, "rectanglelabels": ["mouse"]}
        return {"id": rid, "from_name": "box", "type": "rectanglelabels", "value": value}

    result = [box("m1"), box("m2"), kp("snout", 10, 20, "m1"), kp("tailbase", 30, 40, "m1"), kp("snout", 50, 60, "m2")]
    result.append(kp("tailbase", 90, 90, "ghost"))  # its box is not in the annotation: not trained on
    task = {"id": 4, "data": {"image": "img"}, "annotations": [{"id": 9, "updated_at": "2026-01-01T00:00:00Z", "result": result}]}
    samples = annotations_to_samples([task], BOXED, lambda ref: np.zeros((100, 200, 3), np.uint8))
    assert [s.key for s in samples] == ["4/9", "4/9/1"]
    np.testing.assert_allclose(samples[0].keypoints, [[20, 20], [60, 40]])  # percent of a 200 x 100 image -> px
    assert samples[0].visible.tolist() == [True, True]
    np.testing.assert_allclose(samples[1].keypoints[0], [100, 60])
    assert samples[1].visible.tolist() == [True, False]
