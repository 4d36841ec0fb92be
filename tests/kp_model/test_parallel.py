"""PredictorPool: the weight-free engine's answers from worker processes equal the in-process ones; what cannot
travel stays in the caller; a killed worker costs no answer."""

from __future__ import annotations

import os
import pickle
import signal

import numpy as np
import pytest

from kp_model.build import PredictorConfig, build_predictor
from kp_model.coco import load_coco_keypoints
from kp_model.config import ConfigError
from kp_model.fewshot import FewShotPredictor
from kp_model.images import load_image_rgb
from kp_model.parallel import PoolConfig, PredictorPool, is_portable


@pytest.fixture(scope="module")
def mouse(mouse_dir):
    """The support frame 0 with its 4 keypoints and query frames 5 and 9 of the real mouse video."""
    samples = load_coco_keypoints(mouse_dir)
    s = samples[0]
    return (
        load_image_rgb(s.image_path),
        s.instances[0].keypoints[:, :2],
        list(s.keypoint_names),
        [load_image_rgb(samples[i].image_path) for i in (5, 9)],
    )


@pytest.fixture(scope="module")
def pool():
    p = PredictorPool(PoolConfig(processes=2))
    yield p
    p.close()


def test_config_checks_and_round_trip() -> None:
    cfg = PoolConfig(processes=3, threads=2, cached_predictors=5)
    assert PoolConfig.from_json(cfg.to_json()) == cfg
    for field, value in (("processes", -1), ("threads", 0), ("cached_predictors", 0)):
        with pytest.raises(ValueError, match=field):
            PoolConfig(**{field: value})
    with pytest.raises(ConfigError, match="procs"):
        PoolConfig.from_dict({"procs": 2})


def test_worker_answers_equal_in_process_answers(pool, mouse) -> None:
    support, kps, names, queries = mouse
    predictor = build_predictor(PredictorConfig())
    predictor.set_support(support, kps, names)
    shipped = pool.ship(predictor)
    assert shipped is not None
    for query in queries:
        [here] = predictor.predict([query])
        [there] = pool.predict(shipped, query)
        assert there.names == names
        np.testing.assert_allclose(there.points, here.points, atol=1e-3)  # px; BLAS threads sum in another order
        np.testing.assert_allclose(there.scores, here.scores, atol=1e-5)
    here_all = predictor.predict_instances([queries[0]])[0]
    there_all = pool.predict(shipped, queries[0], instances=True)
    assert len(there_all) == len(here_all)
    for a, b in zip(there_all, here_all, strict=True):
        np.testing.assert_allclose(a.points, b.points, atol=1e-3)


def test_a_support_described_in_a_worker_equals_one_described_here(pool, mouse) -> None:
    from kp_model.predictor import SupportError
    from tests.kp_model.training.test_promotion import CopySupport

    support, kps, names, queries = mouse
    here = build_predictor(PredictorConfig())
    here.set_support(support, kps, names)
    there = pool.describe(build_predictor(PredictorConfig()), support, kps, names)
    assert there is not here and there.support_names == names
    np.testing.assert_array_equal(there._template.descriptors, here._template.descriptors)
    np.testing.assert_array_equal(there._template.cross_descriptors, here._template.cross_descriptors)
    [a], [b] = there.predict([queries[0]]), here.predict([queries[0]])
    np.testing.assert_allclose(a.points, b.points, atol=1e-3)
    with pytest.raises(SupportError, match="inside"):  # a bad support fails as it would here
        pool.describe(build_predictor(PredictorConfig()), support, kps + 10_000, names)
    local = CopySupport()  # not portable: described here, the same object
    assert pool.describe(local, support, kps, names) is local and local.support_names == names


def test_fewshot_travels_without_its_factory(pool, mouse) -> None:
    support, kps, names, queries = mouse
    fewshot = FewShotPredictor(lambda: build_predictor(PredictorConfig()))  # a closure: not picklable itself
    fewshot.add_support("a", support, kps, names)
    fewshot.add_support("b", queries[1], kps + 3.0, names)
    assert is_portable(fewshot)
    [here] = fewshot.predict([queries[0]])
    [there] = pool.predict(pool.ship(fewshot), queries[0])
    np.testing.assert_allclose(there.points, here.points, atol=1e-3)  # px; BLAS threads sum in another order
    copy = pickle.loads(pickle.dumps(fewshot))
    assert copy.support_keys == ["a", "b"]
    with pytest.raises(RuntimeError, match="add supports to the original"):
        copy.add_support("c", support, kps, names)


def test_what_cannot_travel_is_not_shipped(mouse) -> None:
    support, kps, names, _ = mouse
    predictor = build_predictor(PredictorConfig())
    predictor.set_support(support, kps, names)
    assert PredictorPool(PoolConfig(processes=0)).ship(predictor) is None  # pool off
    assert PredictorPool().ship(FewShotPredictor(None)) is None  # no support yet: nothing to run

    class Learned:  # an engine holding weights declares nothing: it stays in the caller
        pass

    assert not is_portable(Learned())


def test_engine_errors_come_back_as_raised(pool, mouse) -> None:
    support, kps, names, _ = mouse
    predictor = build_predictor(PredictorConfig())
    predictor.set_support(support, kps, names)
    import cv2

    with pytest.raises(cv2.error, match="number of channels"):
        pool.predict(pool.ship(predictor), np.zeros((20, 20), np.uint8))  # grey: the engine wants RGB


def test_a_killed_worker_costs_no_answer(mouse) -> None:
    support, kps, names, queries = mouse
    predictor = build_predictor(PredictorConfig())
    predictor.set_support(support, kps, names)
    [expected] = predictor.predict([queries[0]])
    pool = PredictorPool(PoolConfig(processes=1))
    try:
        shipped = pool.ship(predictor)
        pool.predict(shipped, queries[0])  # workers started
        [pid] = list(pool._executor._processes)
        os.kill(pid, signal.SIGKILL)
        for _ in range(2):  # the first is answered in-process while the pool restarts, the next by a new worker
            [answer] = pool.predict(shipped, queries[0])
            np.testing.assert_allclose(answer.points, expected.points, atol=1e-3)
        assert pid not in pool._executor._processes
    finally:
        pool.close()
