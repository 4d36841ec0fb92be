"""The cycle check (kp_model.cycle): an answer matched back onto its support; scores lowered by the distance back."""

from __future__ import annotations

import numpy as np
import pytest

from kp_model.build import PredictorConfig, build_predictor
from kp_model.coco import load_coco_keypoints
from kp_model.cycle import cycle_errors, cycle_factor, decode_image, encode_image
from kp_model.fewshot import FewShotConfig, FewShotPredictor
from kp_model.images import load_image_rgb
from kp_model.predictor import KeypointPrediction


class Shift:
    """A single-support engine that answers its support's keypoints moved 2.4 px to the right."""

    def __init__(self) -> None:
        self.kps = np.zeros((0, 2))
        self.names: list[str] = []

    is_support_set = property(lambda self: bool(self.names))
    support_names = property(lambda self: list(self.names))

    def set_support(self, image, keypoints, names) -> None:
        self.kps, self.names = np.asarray(keypoints, float), list(names)

    def predict(self, images):
        return [KeypointPrediction(self.names, self.kps + [2.4, 0.0], np.full(len(self.names), 0.9)) for _ in images]


def test_cycle_factor() -> None:
    factor = cycle_factor(np.array([0.0, 0.1, np.nan]), sigma=0.1, weight=0.9)
    assert factor == pytest.approx([1.0, 0.1 + 0.9 * 0.36787944, 1.0])  # exp(-1) = 0.36787944; nan: not checked
    assert cycle_factor(np.array([5.0]), sigma=0.1, weight=0.9) == pytest.approx([0.1])


def test_the_kept_support_image_round_trips(animal_image) -> None:
    image = animal_image((40, 50), (120, 60))
    buf = encode_image(image)
    back = decode_image(buf)
    assert buf.dtype == np.uint8 and buf.nbytes < image.nbytes / 4
    assert back.shape == image.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - image.astype(int)).mean() < 3  # JPEG quality 95


def test_an_answer_off_by_d_leads_back_off_by_2d_and_its_scores_drop() -> None:
    support = np.zeros((40, 80, 3), np.uint8)
    kps = np.array([[10.0, 10.0], [50.0, 10.0]])  # extent 40 px: size 48 px
    p = FewShotPredictor(Shift, FewShotConfig(vote=False, verify_supports=1, blend_supports=1))
    p.add_support("a", support, kps, ["nose", "tail"])
    [pred] = p.predict([support])
    np.testing.assert_allclose(pred.points, kps + [2.4, 0.0])
    # back: 2 x 2.4 = 4.8 px from the support's keypoints = 0.1 x 48 px: score 0.9 x (0.2 + 0.8 exp(-1)) (weight 0.8)
    assert pred.scores == pytest.approx([0.9 * (0.2 + 0.8 * 0.36787944)] * 2)
    np.testing.assert_allclose(p._supports["a"].predictor.kps, kps)  # the support's engine kept its own support
    off = FewShotPredictor(Shift, FewShotConfig(vote=False, verify_supports=1, blend_supports=1, cycle_weight=0.0))
    off.add_support("a", support, kps, ["nose", "tail"])
    assert off.predict([support])[0].scores == pytest.approx([0.9, 0.9])
    assert off._supports["a"].image is not None  # kept for the reliability of supports (it reads other supports' images)
    neither = FewShotPredictor(Shift, FewShotConfig(cycle_weight=0.0, reliability_weight=0.0))
    neither.add_support("a", support, kps, ["nose", "tail"])
    assert neither._supports["a"].image is None  # nothing kept when no check reads it


def test_on_real_frames_a_flip_does_not_lead_back(mouse_dir) -> None:
    samples = load_coco_keypoints(mouse_dir)
    support, query = samples[0], samples[1]
    names = list(support.keypoint_names)
    s_kps, q_kps = support.instances[0].keypoints[:, :2], query.instances[0].keypoints[:, :2]
    engine = build_predictor(PredictorConfig())
    engine.set_support(load_image_rgb(support.image_path), s_kps, names)
    engine_state = engine._template
    size = 1.2 * float(np.ptp(s_kps, axis=0).max())
    args = (load_image_rgb(support.image_path), s_kps, names, size)
    right = cycle_errors(engine, load_image_rgb(query.image_path), q_kps, names, *args)
    flipped = q_kps[[len(names) - 1, *range(1, len(names) - 1), 0]]  # the first and last keypoints swapped
    wrong = cycle_errors(engine, load_image_rgb(query.image_path), flipped, names, *args)
    assert names[0] == "snout" and names[-1] == "tailbase"
    assert right.max() < 0.15 and min(wrong[0], wrong[-1]) > 0.5  # measured: 0.04-0.11 and 0.89-0.94
    assert np.isnan(cycle_errors(engine, load_image_rgb(query.image_path), np.full((len(names), 2), np.nan), names, *args)).all()
    assert engine._template is engine_state  # the engine keeps its own support


@pytest.mark.parametrize("field, value", [("cycle_weight", 1.5), ("cycle_weight", -0.1), ("cycle_sigma", 0.0)])
def test_cycle_settings_are_checked(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        FewShotConfig(**{field: value})
