"""The whole product against a real Label Studio 1.23.2: annotate one frame, retrieve predictions for the rest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import label_config
from bench.devservers import LabelStudioAPI, kpassist_backend, label_studio
from kp_model.evaluation.metrics import pck

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.redis]

FRAMES = ["img0000.png", "img0023.png", "img0046.png", "img0069.png", "img0092.png"]  # evenly spread; the first is annotated


def test_retrieve_predictions_from_one_annotated_frame(tmp_path: Path, mouse_dir: Path) -> None:
    coco = json.loads((mouse_dir / "annotations.json").read_text())
    by_name = {img["file_name"]: img for img in coco["images"]}
    gt = {a["image_id"]: a for a in coco["annotations"]}
    names = coco["categories"][0]["keypoints"]

    with label_studio(tmp_path) as (ls_url, token), kpassist_backend(tmp_path, ls_url, token) as backend_url:
        api = LabelStudioAPI(ls_url, token)
        pid = api.create_project("mouse e2e", label_config.read("mouse_topview_4"))
        tasks = api.import_images(pid, [mouse_dir / "images" / n for n in FRAMES])
        assert len(tasks) == len(FRAMES)
        frame_of = {t["id"]: n for n, t in zip(FRAMES, tasks, strict=True)}

        support_task = tasks[0]
        info = by_name[FRAMES[0]]
        kps = np.asarray(gt[info["id"]]["keypoints"]).reshape(-1, 3)
        annotation = api.annotate(support_task["id"], kps, names, info["width"], info["height"])
        result = annotation["result"]

        api("POST", "/api/ml", json={"url": backend_url, "project": pid, "title": "kpassist"})
        everything = {"selectedItems": {"all": True, "excluded": []}}
        api("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}", json=everything)

        ours, copy = [], []
        versions = set()
        for task in tasks:
            if task["id"] == support_task["id"]:
                continue
            preds = api("GET", f"/api/predictions/?task={task['id']}").json()
            assert len(preds) == 1, f"task {task['id']} ({frame_of[task['id']]}): expected one prediction, got {preds}"
            regions = preds[0]["result"]
            versions.add(preds[0]["model_version"])
            labels = [r["value"]["keypointlabels"][0] for r in regions]
            assert sorted(labels) == sorted(names), f"{frame_of[task['id']]}: labels {labels}"
            assert all(0 <= r["value"]["x"] <= 100 and 0 <= r["value"]["y"] <= 100 for r in regions)
            assert all(0 <= r["score"] <= 1 for r in regions) and 0 <= preds[0]["score"] <= 1
            qinfo = by_name[frame_of[task["id"]]]
            qann = gt[qinfo["id"]]
            qkps = np.asarray(qann["keypoints"]).reshape(-1, 3)
            pred = np.array(
                [
                    [r["value"]["x"] * qinfo["width"] / 100, r["value"]["y"] * qinfo["height"] / 100]
                    for r in sorted(regions, key=lambda r: names.index(r["value"]["keypointlabels"][0]))
                ]
            )
            ours.append(pck(pred, qkps[:, :2], qkps[:, 2] > 0, qann["bbox"]))
            copy.append(pck(kps[:, :2], qkps[:, :2], qkps[:, 2] > 0, qann["bbox"]))

        # the version LS stored is the one /setup reported, and it names the support annotation
        ml = api("GET", f"/api/ml?project={pid}").json()[0]
        assert versions == {ml["model_version"]} and "+support." in ml["model_version"]
        print(f"e2e PCK@0.2 kpassist {np.mean(ours):.3f} vs copy {np.mean(copy):.3f} per frame {ours}")
        assert np.mean(ours) > np.mean(copy)

        # the annotator corrects the support: the next retrieve re-predicts every task with the new support
        moved = [dict(r, value=dict(r["value"], x=min(r["value"]["x"] + 0.5, 100.0))) for r in result]
        api("PATCH", f"/api/annotations/{annotation['id']}", json={"result": moved})
        api("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}", json=everything)
        new_version = api("GET", f"/api/ml?project={pid}").json()[0]["model_version"]
        assert new_version != ml["model_version"] and f"+support.{annotation['id']}@" in new_version
        for task in tasks:
            if task["id"] != support_task["id"]:
                preds = api("GET", f"/api/predictions/?task={task['id']}").json()
                assert {p["model_version"] for p in preds} == {ml["model_version"], new_version}, preds
