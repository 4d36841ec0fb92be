"""Live quality from corrections (backend.quality): what counts as accepted, the per-version summary, and the
rollback of a served version whose live acceptance fell clearly below the previous one's."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from backend.convert import LabelledPoints
from backend.label_config import KeypointControl
from backend.quality import QualityLog, RollbackRule, compare, engine_of, rollback_decision, rollback_if_worse
from kp_model.training.store import ModelStore

CONTROL = KeypointControl("kp", "image", "image", ("snout", "leftear", "rightear", "tailbase"))


def region(label: str, x: float, y: float) -> dict:
    value = {"x": x, "y": y, "width": 0.8, "keypointlabels": [label]}
    return {
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "original_width": 200,
        "original_height": 100,
        "value": value,
    }


def test_compare_counts_points_within_the_radii_of_the_individual_size() -> None:
    # final points span 100 x 50 px in a 200 x 100 image (x 10..60 %, y 20..70 %): reference box 120 x 60 px, size 120
    final = [LabelledPoints(["snout", "tailbase"], np.array([[10.0, 20.0], [60.0, 70.0]]))]
    # snout predicted 3 px off (0.025 of 120: accepted at 0.05), tailbase 9 px off (0.075: at 0.1 only), rightear deleted
    predicted = [LabelledPoints(["snout", "tailbase", "rightear"], np.array([[11.5, 20.0], [64.5, 70.0], [30.0, 30.0]]))]
    c = compare(predicted, final, 200, 100)
    assert (c.points, c.accepted_005, c.accepted_01, c.matched) == (3, 1, 2, 2)
    assert c.error_sum == pytest.approx(3 / 120 + 9 / 120)
    assert compare(predicted, [], 200, 100).accepted_01 == 0


def test_individuals_are_matched_before_points() -> None:
    a = LabelledPoints(["snout", "tailbase"], np.array([[10.0, 10.0], [20.0, 10.0]]))
    b = LabelledPoints(["snout", "tailbase"], np.array([[70.0, 80.0], [80.0, 80.0]]))
    c = compare([b, a], [a, b], 100, 100)  # listed in the other order: each still meets its own
    assert (c.points, c.accepted_005, c.matched, c.error_sum) == (4, 4, 4, 0.0)


def test_the_log_keeps_one_row_per_annotation_and_summarises_per_engine(tmp_path: Path) -> None:
    log = QualityLog(tmp_path, 3)
    predicted = [region("snout", 10, 20), region("tailbase", 60, 70)]
    log.record_predictions([(1, "oneshot-abc+support.5@t", predicted), (2, "oneshot-abc+support.6@t", predicted)])
    assert engine_of("oneshot-abc+support.5@t") == "oneshot-abc"
    kept = {"id": 11, "result": predicted}
    # tailbase 60 px off; final extent 160 x 50 px grown by 10 % a side: size 192 px
    moved = {"id": 12, "result": [region("snout", 10, 20), region("tailbase", 90, 70)]}
    assert log.record_annotation(kept, {"id": 1}, [CONTROL])["accepted_01"] == 2
    assert log.record_annotation(moved, {"id": 2}, [CONTROL])["accepted_01"] == 1
    assert log.record_annotation({"id": 13, "result": predicted}, {"id": 99}, [CONTROL]) is None  # never predicted
    assert log.record_annotation({"id": 14, "result": [], "was_cancelled": True}, {"id": 1}, [CONTROL]) is None
    s = log.summary()["oneshot-abc"]
    assert (s["tasks"], s["points"]) == (2, 4) and s["acceptance@0.1"] == 0.75 and s["acceptance@0.05"] == 0.75
    assert s["mean_error"] == pytest.approx((60 / 192) / 4)
    log.record_annotation({"id": 12, "result": predicted}, {"id": 2}, [CONTROL])  # the annotation updated: replaced
    assert log.summary()["oneshot-abc"]["acceptance@0.1"] == 1.0 and log.summary(last=1)["oneshot-abc"]["tasks"] == 1


@pytest.mark.parametrize(
    "served, previous, rolls",
    [
        ({"tasks": 10, "acceptance@0.1": 0.5}, {"tasks": 10, "acceptance@0.1": 0.9}, True),
        ({"tasks": 10, "acceptance@0.1": 0.8}, {"tasks": 10, "acceptance@0.1": 0.9}, False),  # within the margin
        ({"tasks": 3, "acceptance@0.1": 0.0}, {"tasks": 10, "acceptance@0.1": 0.9}, False),  # too few corrections
        ({"tasks": 10, "acceptance@0.1": math.nan}, {"tasks": 10, "acceptance@0.1": 0.9}, False),  # NaN: no evidence
        (None, {"tasks": 10, "acceptance@0.1": 0.9}, False),
    ],
)
def test_rollback_decision_fixed_cases(served, previous, rolls: bool) -> None:
    reason = rollback_decision(served, previous, RollbackRule(min_tasks=8, margin=0.15))
    assert (reason is not None) == rolls
    if rolls:
        assert "0.50" in reason and "0.90" in reason


def test_a_served_version_worse_live_is_rolled_back_to_the_previous_one(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "model")
    for version, before in (("v0001", None), ("v0002", "v0001")):
        (store.checkpoint_dir(version)).mkdir(parents=True)
        (store.checkpoint_dir(version) / "config.json").write_text("{}")
        store.write_record(version, {"metrics": {"served_version": before}})
    store.promote("v0002")
    log = QualityLog(tmp_path, 7)
    good = [region("snout", 10, 20), region("tailbase", 60, 70)]
    bad = [region("snout", 90, 90), region("tailbase", 20, 10)]
    for task in range(20):  # v0001 served tasks 0-9 well; v0002 serves tasks 10-19 badly
        version, shown = ("kptllm-p7-v0001", good) if task < 10 else ("kptllm-p7-v0002", bad)
        log.record_predictions([(task, version + "+support.1@t", shown)])
        log.record_annotation({"id": 100 + task, "result": good}, {"id": task}, [CONTROL])
    reason = rollback_if_worse(log, store, "oneshot-abc", RollbackRule(min_tasks=8, margin=0.15), window=200)
    assert reason is not None and store.served() == "v0001"
    assert store.record("v0002")["rolled_back"]["to"] == "v0001"
    assert rollback_if_worse(log, store, "oneshot-abc", RollbackRule(), window=200) is None  # v0001 has no predecessor data
