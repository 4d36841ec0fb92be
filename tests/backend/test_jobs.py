"""The training job's project lock (real Redis): a job that loses its lock stops before it serves anything, and a
lock that expired by the time a finished job releases it does not fail that job."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from redis import Redis

from backend.jobs import LockKeeper, LockLostError
from backend.training_queue import lock_key
from kp_model.training.finetune import FinetuneSettings, run_finetune
from kp_model.training.loop import TrainConfig
from kp_model.training.store import ModelStore

pytestmark = pytest.mark.redis

URL = "redis://127.0.0.1:6379/0"


def wait_lost(keeper: LockKeeper, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not keeper.lost.is_set():
        assert time.monotonic() < deadline, "the renewal thread never noticed the lock was gone"
        time.sleep(0.05)


def test_a_lost_lock_is_noticed_and_raised_at_the_next_check(queue_name: str) -> None:
    redis = Redis.from_url(URL)
    name = lock_key(queue_name, 1)
    with LockKeeper(redis, name, ttl=1, wait_s=1) as keeper:
        keeper.check()  # held: nothing to say
        redis.set(name, "another-job")  # the lock expired and another job of the project took it
        wait_lost(keeper)
        with pytest.raises(LockLostError, match="served model is unchanged"):
            keeper.check()
    assert redis.get(name) == b"another-job"  # leaving did not raise, nor release the other job's lock


def test_releasing_an_expired_lock_does_not_fail_a_finished_job(queue_name: str, caplog) -> None:
    redis = Redis.from_url(URL)
    name = lock_key(queue_name, 2)
    with caplog.at_level(logging.WARNING, logger="backend.jobs"):
        with LockKeeper(redis, name, ttl=5, wait_s=1):
            redis.delete(name)  # expired while the job finished (e.g. a long stall)
    assert any("had expired before release" in r.getMessage() for r in caplog.records)


def test_a_job_that_loses_its_lock_promotes_nothing(tmp_path: Path, queue_name: str, blob_samples, small_config) -> None:
    redis = Redis.from_url(URL)
    name = lock_key(queue_name, 3)
    store = ModelStore(tmp_path)
    settings = FinetuneSettings(small_config(), TrainConfig(steps=2), promote="always")
    with LockKeeper(redis, name, ttl=1, wait_s=1) as keeper:

        def stage(step: str) -> None:  # what backend.jobs.train_project does at every stage
            if step == "record":
                redis.set(name, "another-job")
                wait_lost(keeper)
            keeper.check()

        with pytest.raises(LockLostError):
            run_finetune(blob_samples(3), store, settings, stage=stage)
    assert store.served() is None  # "always" would have promoted it
