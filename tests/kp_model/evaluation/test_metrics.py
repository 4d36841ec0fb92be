import numpy as np
import pytest

from kp_model.coco import Instance, Sample
from kp_model.evaluation.metrics import normalised_errors, pck
from kp_model.evaluation.protocol import best_instance_errors, copy_engine


def test_pck_hand_computed() -> None:
    gt = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [50.0, 50.0]])
    pred = gt + np.array([[3.0, 4.0], [0.0, 21.0], [0.0, 0.0], [100.0, 0.0]])  # errors 5, 21, 0, 100
    bbox = (0.0, 0.0, 100.0, 40.0)  # longer side 100 -> threshold 20 at alpha 0.2
    np.testing.assert_allclose(normalised_errors(pred, gt, bbox), [0.05, 0.21, 0.0, 1.0])
    assert pck(pred, gt, np.ones(4, bool), bbox) == pytest.approx(2 / 4)
    assert pck(pred, gt, np.array([True, False, True, False]), bbox) == 1.0
    assert pck(pred, gt, np.ones(4, bool), bbox, alpha=0.05) == pytest.approx(2 / 4)  # 0.05 <= 0.05 counts
    assert np.isnan(pck(pred, gt, np.zeros(4, bool), bbox))


def test_copy_baseline_scales_with_image_size() -> None:
    support = np.zeros((100, 200, 3), np.uint8)
    query = np.zeros((50, 400, 3), np.uint8)
    np.testing.assert_allclose(copy_engine(support, np.array([[100.0, 50.0]]), ["p"], query), [[200.0, 25.0]])


def test_best_instance_is_chosen() -> None:
    a = Instance(np.array([[0, 0, 2], [10, 0, 2]], float), (0, 0, 10, 10))
    b = Instance(np.array([[100, 100, 2], [110, 100, 0]], float), (100, 100, 10, 10))
    sample = Sample(None, 200, 200, "x", ["p", "q"], [a, b])  # type: ignore[arg-type]
    errs = best_instance_errors(np.array([[101.0, 100.0], [0.0, 0.0]]), np.array([True, True]), sample)
    np.testing.assert_allclose(errs, [0.1])  # instance b, whose second point is not visible
