"""Few-shot supports through a real Label Studio 1.23.2: after several annotations, "Retrieve predictions" reports a
new model_version naming the support set, and a task showing the OLDEST annotated frame is predicted from that
frame's own annotation (the nearest support), not only from the newest one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests

import label_config
from bench.devservers import LabelStudioAPI, kpassist_backend, label_studio

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.redis]

ANNOTATED = ["img0000.png", "img0040.png", "img0080.png"]  # annotated in this order: img0080 is the newest


def test_retrieve_uses_every_annotation_and_the_version_follows_the_set(tmp_path: Path, mouse_dir: Path) -> None:
    coco = json.loads((mouse_dir / "annotations.json").read_text())
    by_name = {img["file_name"]: img for img in coco["images"]}
    gt = {a["image_id"]: np.asarray(a["keypoints"]).reshape(-1, 3) for a in coco["annotations"]}
    names = coco["categories"][0]["keypoints"]
    everything = {"selectedItems": {"all": True, "excluded": []}}
    with label_studio(tmp_path) as (ls_url, token), kpassist_backend(tmp_path, ls_url, token) as backend_url:
        api = LabelStudioAPI(ls_url, token)
        pid = api.create_project("fewshot e2e", label_config.read("mouse_topview_4_smart"))
        tasks = api.import_images(pid, [mouse_dir / "images" / n for n in ANNOTATED])
        api("POST", f"/api/projects/{pid}/import", json=[{"image": tasks[0]["data"]["image"]}])  # the oldest frame again
        query = next(
            t
            for t in api("GET", f"/api/tasks/?project={pid}&page_size=100").json()["tasks"]
            if not t["total_annotations"] and t["id"] not in {x["id"] for x in tasks}
        )
        ml = api("POST", "/api/ml", json={"url": backend_url, "project": pid, "title": "kpassist", "is_interactive": True}).json()
        versions = []
        for task, name in zip(tasks, ANNOTATED, strict=True):
            info = by_name[name]
            api.annotate(task["id"], gt[info["id"]], names, info["width"], info["height"])
            api("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}", json=everything)
            versions.append(api("GET", f"/api/ml?project={pid}").json()[0]["model_version"])
        assert len(set(versions)) == 3 and "+support." in versions[0] and ".n3-" in versions[2], versions
        [pred] = [p for p in api("GET", f"/api/predictions/?task={query['id']}").json() if p["model_version"] == versions[2]]
        info = by_name[ANNOTATED[0]]
        xy = {r["value"]["keypointlabels"][0]: (r["value"]["x"], r["value"]["y"]) for r in pred["result"]}
        truth = gt[info["id"]]
        err = [
            np.hypot((xy[n][0] - truth[i, 0] * 100 / info["width"]), (xy[n][1] - truth[i, 1] * 100 / info["height"]))
            for i, n in enumerate(names)
            if truth[i, 2] > 0 and n in xy
        ]
        assert len(err) >= 3 and max(err) < 1.5, err  # percent of the image: the frame's own annotation answered

        # the tasks to label next: the only unlabelled task, which holds predictions (LS sorts by prediction score)
        suggested = requests.get(f"{backend_url}/kpassist/projects/{pid}/suggest?n=3", timeout=60)
        assert suggested.status_code == 200, suggested.text
        assert [s["task"] for s in suggested.json()["tasks"]] == [query["id"]]

        # smart keypoints: the annotator places the snout; LS sends it in params.context; it comes back unchanged
        placed = {
            "id": "smart1",
            "from_name": "kp",
            "to_name": "image",
            "type": "keypointlabels",
            "origin": "manual",
            "value": {"x": 41.234567, "y": 52.345678, "width": 0.8, "keypointlabels": ["snout"]},
        }
        body = {"task": query["id"], "context": {"result": [placed]}}
        answer = api("POST", f"/api/ml/{ml['id']}/interactive-annotating", json=body).json()
        assert "errors" not in answer, answer
        regions = {r["value"]["keypointlabels"][0]: r for r in answer["data"]["result"]}
        assert regions["snout"]["value"] == placed["value"] and set(regions) == set(names)
