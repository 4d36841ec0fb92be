"""Query work of the weight-free engines in worker processes, one per core: the descriptors and the Hough vote are
numpy/OpenCV calls interleaved with Python, so threads of one process share the GIL and scale poorly, while
processes each using one compute thread scale with the cores.

pool = PredictorPool(PoolConfig(processes=2))
shipped = pool.ship(predictor)                 # pickled once per batch; None if the engine cannot travel
preds = pool.predict(shipped, image)           # from any number of threads; runs in a worker process
described = pool.describe(predictor, image, keypoints, names)  # a support's features computed in a worker
pool.close()

Only a *portable* predictor travels (``portable`` attribute True: no loaded weights, a small pickle): the
weight-free engine and few-shot over it. A learned model stays in the calling process. Each worker keeps the
predictors it was sent (bounded LRU), so a batch sends a predictor's features to each worker once.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import pickle
import threading
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from kp_model.config import JsonConfig
from kp_model.predictor import KeypointPrediction, Predictor, predict_instances

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolConfig(JsonConfig):
    processes: int = 2  # worker processes (about one per core given to prediction); 0 = predict in the calling thread
    threads: int = 1  # compute threads per worker (torch, OpenCV, BLAS): processes x threads should not exceed the cores
    cached_predictors: int = 4  # predictors each worker keeps unpickled, least recently used dropped

    def __post_init__(self) -> None:
        if self.processes < 0:
            raise ValueError(f"processes must be >= 0 (0 = no worker processes), got {self.processes}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.cached_predictors < 1:
            raise ValueError(f"cached_predictors must be >= 1, got {self.cached_predictors}")


@dataclass(frozen=True)
class Shipped:
    """A predictor ready to travel: its pickle and that pickle's digest (the workers' cache key); ``local`` is the
    caller's own object, used when the pool has to fall back to predicting in the calling thread."""

    key: str
    blob: bytes
    local: Predictor


def is_portable(predictor: object) -> bool:
    """True if ``predictor`` declares it can run in a worker process (a ``portable`` attribute that is True)."""
    return bool(getattr(predictor, "portable", False))


class PredictorPool:
    """Worker processes (started on first use, spawned, so safe beside the server's threads) that run portable
    predictors on query images. Thread-safe; ``close`` stops the workers."""

    def __init__(self, cfg: PoolConfig | None = None) -> None:
        self.cfg = cfg or PoolConfig()
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.cfg.processes > 0

    def ship(self, predictor: Predictor) -> Shipped | None:
        """The predictor pickled for the workers, or None when the pool is off or the predictor is not portable or
        does not pickle (logged): predict it in the calling thread. Call once per batch: a predictor changed
        later must be shipped again."""
        if not self.enabled or not is_portable(predictor):
            return None
        try:
            blob = pickle.dumps(predictor, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:  # e.g. a method patched with a closure
            log.warning("%s declares itself portable but does not pickle (%s): predicting in-process", type(predictor), exc)
            return None
        return Shipped(hashlib.sha1(blob).hexdigest(), blob, predictor)

    def predict(self, shipped: Shipped, image: np.ndarray, instances: bool = False) -> list[KeypointPrediction]:
        """The predictions for one (H, W, 3) uint8 RGB image, computed in a worker: ``[prediction]``, or with
        ``instances`` every individual found, best first (``kp_model.predictor.predict_instances``).

        An engine error is raised here as the worker raised it. A worker that died (killed, out of memory) is
        logged, the pool restarted, and this image predicted in the calling thread."""
        try:
            result = self._submit(shipped.key, None, image, instances)
            if result is None:  # that worker has not seen this predictor yet
                result = self._submit(shipped.key, shipped.blob, image, instances)
            return result
        except BrokenProcessPool:
            log.error("a prediction worker process died; restarting the pool and predicting this image in-process")
            self._reset()
            return _predict(shipped.local, image, instances)

    def describe(self, predictor: Predictor, image: np.ndarray, keypoints: np.ndarray, names: list[str]) -> Predictor:
        """``predictor`` (no support set yet) with this support set (``set_support``: image (H, W, 3) uint8 RGB,
        keypoints (K, 2) px, K names), its features computed in a worker and sent back; here when the pool is off
        or the predictor is not portable. From any number of threads: supports described side by side.

        An engine error (a bad support) is raised here as the worker raised it. A worker that died is logged, the
        pool restarted, and this support described here."""
        if not self.enabled or not is_portable(predictor):
            predictor.set_support(image, keypoints, names)
            return predictor
        try:
            return self._pool().submit(_describe, predictor, image, keypoints, list(names)).result()
        except BrokenProcessPool:
            log.error("a prediction worker process died; restarting the pool and describing this support in-process")
            self._reset()
            predictor.set_support(image, keypoints, names)
            return predictor

    def close(self) -> None:
        """Stop the worker processes (started again on the next ``predict``)."""
        self._reset(wait=True)

    def _submit(self, key: str, blob: bytes | None, image: np.ndarray, instances: bool) -> list[KeypointPrediction] | None:
        return self._pool().submit(_work, key, blob, image, instances, self.cfg.cached_predictors).result()

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    self.cfg.processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker,
                    initargs=(self.cfg.threads,),
                )
                log.info("started %d prediction worker processes (%d threads each)", self.cfg.processes, self.cfg.threads)
            return self._executor

    def _reset(self, wait: bool = False) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=wait, cancel_futures=True)


def _predict(predictor: Predictor, image: np.ndarray, instances: bool) -> list[KeypointPrediction]:
    return predict_instances(predictor, [image])[0] if instances else predictor.predict([image])


# what a worker process holds: its predictors by key, least recently used first
_predictors: OrderedDict[str, Predictor] = OrderedDict()


def _init_worker(threads: int) -> None:
    from kp_model.threads import limit_threads

    limit_threads(threads)


def _describe(predictor: Predictor, image: np.ndarray, keypoints: np.ndarray, names: list[str]) -> Predictor:
    """In a worker: ``predictor`` with its support set (sent back pickled)."""
    predictor.set_support(image, keypoints, names)
    return predictor


def _work(key: str, blob: bytes | None, image: np.ndarray, instances: bool, keep: int) -> list[KeypointPrediction] | None:
    """In a worker: predict with the predictor ``key`` (unpickled from ``blob`` when given); None when the worker
    does not hold ``key`` and no blob came (the caller sends it)."""
    predictor = _predictors.get(key)
    if predictor is None:
        if blob is None:
            return None
        predictor = _predictors[key] = pickle.loads(blob)
        while len(_predictors) > keep:
            _predictors.popitem(last=False)
    _predictors.move_to_end(key)
    return _predict(predictor, image, instances)
