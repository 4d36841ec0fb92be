import pytest
import torch

from bench.device import run_device_bench, synthetic_sample
from kp_model.training.data import TrainingError


def test_synthetic_samples_keep_their_keypoints_inside_the_image() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    for i in range(20):
        sample = synthetic_sample(rng, str(i))
        h, w = sample.image.shape[:2]
        assert sample.image.dtype == np.uint8 and (h, w) == (120, 160)
        assert ((sample.keypoints >= 0) & (sample.keypoints < [w, h])).all()


def test_the_device_check_on_the_cpu_reports_training_speed_and_identical_answers() -> None:
    report = run_device_bench("cpu", steps=2, n_train=3, n_queries=2)
    assert report["device"] == "cpu" and report["train"]["steps"] == 2
    assert report["predict"]["queries"] == 2 and report["predict"]["device_seconds_per_query"] > 0
    # the same checkpoint on the same device answers the same
    assert report["agreement"]["max_px_between_cpu_and_device"] == 0.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_it_says_so() -> None:
    with pytest.raises(TrainingError, match="CUDA device"):
        run_device_bench("cuda", steps=1)
