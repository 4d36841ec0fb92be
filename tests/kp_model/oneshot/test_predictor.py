import json

import numpy as np
import pytest

from kp_model.build import PredictorConfig, build_predictor
from kp_model.coco import load_coco_keypoints
from kp_model.evaluation.metrics import pck
from kp_model.images import load_image_rgb
from kp_model.oneshot.matcher import OneShotConfig
from kp_model.predictor import SupportError, SupportNotSetError


def test_predict_before_support_raises() -> None:
    with pytest.raises(SupportNotSetError, match="set_support"):
        build_predictor().predict([np.zeros((32, 32, 3), np.uint8)])


@pytest.mark.parametrize(
    "keypoints, names, message",
    [
        (np.zeros((0, 2)), [], "K >= 1"),
        (np.array([[1.0, 2.0]]), ["a", "b"], "one distinct name"),
        (np.array([[1.0, 2.0], [3.0, 4.0]]), ["a", "a"], "one distinct name"),
        (np.array([[np.nan, 2.0]]), ["a"], "not finite points inside"),
        (np.array([[500.0, 2.0]]), ["a"], "not finite points inside"),
    ],
)
def test_bad_supports_are_refused(keypoints: np.ndarray, names: list[str], message: str, blob_image) -> None:
    image, _ = blob_image()
    with pytest.raises(SupportError, match=message):
        build_predictor().set_support(image, keypoints, names)


def test_shapes_units_and_a_moved_rotated_object(blob_image) -> None:
    support, pts = blob_image(centre=(60, 50), angle=0.0)
    query, qpts = blob_image(centre=(100, 70), angle=np.deg2rad(30))
    predictor = build_predictor()
    predictor.set_support(support, pts, ["tip", "green", "blue"])
    [pred] = predictor.predict([query])
    assert pred.names == ["tip", "green", "blue"]
    assert pred.points.shape == (3, 2) and pred.scores.shape == (3,)
    assert np.all((pred.scores >= 0) & (pred.scores <= 1)) and 0 <= pred.score <= 1
    err = np.linalg.norm(pred.points - qpts, axis=1)
    assert err.max() < 8.0, f"pixel errors {err}"  # object is ~50 px long


def test_config_json_round_trip_and_version() -> None:
    cfg = PredictorConfig(oneshot=OneShotConfig(rotations=8, scales=(1.0, 2.0)))
    again = PredictorConfig.from_json(cfg.to_json())
    assert again == cfg and again.version == cfg.version != PredictorConfig().version
    assert json.loads(cfg.to_json())["oneshot"]["rotations"] == 8


@pytest.mark.parametrize("field, value", [("rotations", 0), ("scales", ()), ("temperature", 0.0), ("max_working_side", 10)])
def test_config_checks_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        OneShotConfig(**{field: value})


@pytest.mark.slow
def test_mouse_frames_beat_copying(mouse_dir) -> None:
    """Real data: support frame 0, eight frames spread over the video."""
    samples = load_coco_keypoints(mouse_dir)
    support = samples[0]
    predictor = build_predictor()
    kps = support.instances[0].keypoints
    predictor.set_support(load_image_rgb(support.image_path), kps[:, :2], support.keypoint_names)
    ours, copy = [], []
    for q in samples[10::14]:
        inst = q.instances[0]
        [pred] = predictor.predict([load_image_rgb(q.image_path)])
        ours.append(pck(pred.points, inst.keypoints[:, :2], inst.visible, inst.bbox))
        copy.append(pck(kps[:, :2], inst.keypoints[:, :2], inst.visible, inst.bbox))
    assert np.mean(ours) >= np.mean(copy) + 0.3, (ours, copy)


def test_partial_engine_config_file_from_the_readme(tmp_path) -> None:
    path = tmp_path / "engine.json"
    path.write_text('{"engine": "oneshot", "oneshot": {"encoder": {"name_or_path": "/models/dinov2-small", "device": "auto"}}}')
    cfg = PredictorConfig.from_file(path)
    assert cfg.oneshot.encoder.name_or_path == "/models/dinov2-small" and cfg.oneshot.encoder.device == "auto"
    assert cfg.oneshot.rotations == OneShotConfig().rotations
    with pytest.raises(ValueError, match="engine"):
        PredictorConfig(engine="magic")
