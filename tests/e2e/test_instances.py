"""Several animals per image through a real Label Studio 1.23.2: an annotation of two mice, each a RectangleLabels
box with its keypoints linked by parentID, is the support; "Retrieve predictions" on an image of two other mice gives
two boxes, each with its keypoints linked to it, which LS stores and returns with the task."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import label_config
from bench.devservers import LabelStudioAPI, kpassist_backend, label_studio
from kp_model.coco import load_coco_keypoints
from kp_model.images import load_image_rgb

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.redis]


def individual(box_id: str, keypoints: np.ndarray, names: list[str], width: int, height: int) -> list[dict]:
    """A box region around (K, 2) px keypoints and the keypoint regions linked to it, in LS's JSON."""
    lo, hi = keypoints.min(axis=0) - 10, keypoints.max(axis=0) + 10
    common = {"to_name": "image", "original_width": width, "original_height": height, "image_rotation": 0}
    box = {
        **common,
        "id": box_id,
        "from_name": "box",
        "type": "rectanglelabels",
        "value": {
            "x": lo[0] * 100 / width,
            "y": lo[1] * 100 / height,
            "width": (hi - lo)[0] * 100 / width,
            "height": (hi - lo)[1] * 100 / height,
            "rotation": 0,
            "rectanglelabels": ["mouse"],
        },
    }
    points = [
        {
            **common,
            "id": f"{box_id}-{name}",
            "from_name": "kp",
            "type": "keypointlabels",
            "parentID": box_id,
            "value": {"x": x * 100 / width, "y": y * 100 / height, "width": 0.8, "keypointlabels": [name]},
        }
        for name, (x, y) in zip(names, keypoints, strict=True)
    ]
    return [box, *points]


def test_two_boxed_mice_support_and_two_boxed_mice_predicted(tmp_path: Path, mouse_dir: Path) -> None:
    samples = load_coco_keypoints(mouse_dir)
    names = samples[0].keypoint_names
    w, h = samples[0].width, samples[0].height

    def pair(i: int, j: int, name: str) -> tuple[Path, list[np.ndarray]]:
        """Frames i | j side by side, written under tmp_path; the two mice's (K, 2) px keypoints."""
        image = np.concatenate([load_image_rgb(samples[i].image_path), load_image_rgb(samples[j].image_path)], axis=1)
        path = tmp_path / name
        cv2.imwrite(str(path), image[..., ::-1])
        return path, [samples[i].instances[0].keypoints[:, :2], samples[j].instances[0].keypoints[:, :2] + [w, 0]]

    support_path, support_mice = pair(0, 10, "two_mice_support.png")
    query_path, query_mice = pair(1, 11, "two_mice_query.png")
    with label_studio(tmp_path) as (ls_url, token), kpassist_backend(tmp_path, ls_url, token) as backend_url:
        api = LabelStudioAPI(ls_url, token)
        pid = api.create_project("instances e2e", label_config.read("mouse_topview_4_instances"))
        support, query = api.import_images(pid, [support_path, query_path])
        result = individual("m1", support_mice[0], names, 2 * w, h) + individual("m2", support_mice[1], names, 2 * w, h)
        api("POST", f"/api/tasks/{support['id']}/annotations", json={"result": result})
        api("POST", "/api/ml", json={"url": backend_url, "project": pid, "title": "kpassist", "is_interactive": False})
        everything = {"selectedItems": {"all": False, "included": [query["id"]]}}
        api("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}", json=everything)

        [pred] = api("GET", f"/api/predictions/?task={query['id']}").json()
        assert ".n2-" in pred["model_version"]  # both mice of the annotation are supports
        boxes = [r for r in pred["result"] if r["type"] == "rectanglelabels"]
        points = [r for r in pred["result"] if r["type"] == "keypointlabels"]
        assert len(boxes) == 2 and all(b["from_name"] == "box" and b["value"]["rectanglelabels"] == ["mouse"] for b in boxes)
        assert {p["parentID"] for p in points} == {b["id"] for b in boxes}
        found = []
        for b in boxes:
            xy = np.array(
                [[p["value"]["x"] * 2 * w / 100, p["value"]["y"] * h / 100] for p in points if p["parentID"] == b["id"]]
            )
            found.append(np.median(xy, axis=0))
        for mouse in query_mice:  # each mouse has one predicted individual within 5 % of the frame width
            assert min(np.linalg.norm(f - np.median(mouse, axis=0)) for f in found) < 0.05 * w

        # LS shows them: the task it serves to the labelling UI carries the prediction with its linked regions
        shown = api("GET", f"/api/tasks/{query['id']}").json()
        [stored] = [p for p in shown["predictions"] if p["model_version"] == pred["model_version"]]
        assert sorted(r["id"] for r in stored["result"]) == sorted(r["id"] for r in pred["result"])
        assert all(r.get("parentID") in {b["id"] for b in boxes} for r in stored["result"] if r["type"] == "keypointlabels")
