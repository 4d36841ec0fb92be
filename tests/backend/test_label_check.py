"""The left/right label check wired into the backend: a served learned model, an annotation webhook whose
labels are swapped, a warning logged and listed at /kpassist/projects/<id>/warnings."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

import label_config
from backend.app import create_app
from backend.convert import pixels_to_percent
from backend.label_check import LabelChecker
from backend.service import project_store
from backend.settings import Settings
from kp_model.kptllm.checkpoint import save_checkpoint


def regions(points, names, w: int, h: int) -> list[dict]:
    pct = pixels_to_percent(points, w, h)
    return [
        {"id": f"r{i}", "from_name": "kp", "to_name": "image", "type": "keypointlabels",
         "original_width": w, "original_height": h,
         "value": {"x": float(x), "y": float(y), "width": 0.8, "keypointlabels": [n]}}
        for i, ((x, y), n) in enumerate(zip(pct, names, strict=True))
    ]  # fmt: skip


@pytest.mark.slow
def test_swapped_left_right_labels_are_flagged(tmp_path: Path, mouse_overfit, mouse_dir: Path, queue_name: str) -> None:
    model, samples, _ = mouse_overfit
    settings = Settings(data_dir=str(tmp_path / "var"), local_root=str(mouse_dir / "images"), queue_name=queue_name)
    store = project_store(settings.data_dir, 9)
    save_checkpoint(model, store.checkpoint_dir("v0001"))
    store.write_record("v0001", {"decision": "promote"})
    store.promote("v0001")
    client = create_app(settings).test_client()
    config = label_config.read("mouse_topview_4")
    assert client.post("/setup", json={"project": "9.1", "schema": config}).json["model_version"].startswith("kptllm-p9-v0001")
    s = samples[2]  # img0060.png
    task = {"id": 60, "data": {"image": str(mouse_dir / "images" / "img0060.png")}}

    def hook(points, ann_id: int) -> None:
        annotation = {"id": ann_id, "result": regions(points, s.names, 640, 480)}
        body = {"action": "ANNOTATION_UPDATED", "project": {"id": 9}, "task": task, "annotation": annotation}
        assert client.post("/webhook", json=body).status_code == 200

    hook(s.keypoints, 1)  # correct labels: no warning
    hook(s.keypoints[[0, 2, 1, 3]], 2)  # left and right ear swapped
    deadline = time.monotonic() + 60
    warnings: list = []
    while time.monotonic() < deadline and not warnings:
        warnings = client.get("/kpassist/projects/9/warnings").json["warnings"]
        time.sleep(0.2)
    assert [(w["annotation"], w["labels"]) for w in warnings] == [(2, ["leftear", "rightear"])]
    assert "look swapped" in warnings[0]["message"]


def test_a_check_that_raises_is_logged_not_lost(caplog) -> None:
    class BrokenService:  # serves a version whose checkpoint cannot be loaded
        def served_version(self, project: int) -> str:
            return "v0001"

        def served_predictor(self, project: int):
            raise RuntimeError("checkpoint v0001 is unreadable")

    checker = LabelChecker(BrokenService())
    with caplog.at_level(logging.ERROR, logger="backend.label_check"):
        future = checker.submit(4, {"id": 5}, {"id": 6, "result": []}, [], conn=None)
        with pytest.raises(RuntimeError):
            future.result(timeout=10)
        deadline = time.monotonic() + 5
        while not caplog.records and time.monotonic() < deadline:  # the done-callback runs right after the result
            time.sleep(0.01)
    [record] = caplog.records
    assert "label check of annotation 6 failed" in record.getMessage() and record.exc_info is not None
