import os

import pytest

from backend.settings import Settings, SettingsError


def test_from_env_types_and_secret_not_shown() -> None:
    s = Settings.from_env({"KPASSIST_SCORE_THRESHOLD": "0.3", "KPASSIST_MAX_BATCH": "7", "LABEL_STUDIO_API_KEY": "sekret"})
    assert s.score_threshold == 0.3 and s.max_batch == 7
    assert "sekret" not in repr(s)


@pytest.mark.parametrize(
    "env, field",
    [
        ({"KPASSIST_SCORE_THRESHOLD": "2"}, "score_threshold"),
        ({"KPASSIST_MAX_BATCH": "abc"}, "KPASSIST_MAX_BATCH"),
        ({"KPASSIST_ENGINE_CONFIG": "/nonexistent.json"}, "engine_config"),
        ({"KPASSIST_LOCAL_ROOT": "/nonexistent-dir"}, "local_root"),
    ],
)
def test_bad_values_name_the_field(env: dict, field: str) -> None:
    with pytest.raises(SettingsError, match=field):
        Settings.from_env(env)


def test_training_threads_are_bounded_and_checked() -> None:
    import cv2
    import torch

    from kp_model.threads import limit_threads

    assert Settings.from_env({"KPASSIST_TRAIN_THREADS": "1"}).train_threads == 1 and Settings().train_threads == 2
    assert Settings.from_env({"KPASSIST_TRAIN_BUDGET_S": "0"}).train_budget_s == 0.0 and Settings().train_budget_s == 55.0
    with pytest.raises(SettingsError, match="KPASSIST_TRAIN_BUDGET_S"):
        Settings.from_env({"KPASSIST_TRAIN_BUDGET_S": "-5"})
    with pytest.raises(SettingsError, match="train_threads"):
        Settings.from_env({"KPASSIST_TRAIN_THREADS": "0"})
    assert Settings().train_device == "cpu" and Settings.from_env({"KPASSIST_TRAIN_DEVICE": "cuda:1"}).train_device == "cuda:1"
    with pytest.raises(SettingsError, match="KPASSIST_TRAIN_DEVICE"):
        Settings.from_env({"KPASSIST_TRAIN_DEVICE": "gpu"})
    from threadpoolctl import threadpool_info, threadpool_limits

    before = torch.get_num_threads(), cv2.getNumThreads(), os.environ.get("OMP_NUM_THREADS")
    with threadpool_limits(limits=None):  # restores numpy's BLAS pool on exit
        try:
            limit_threads(1)
            assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
            assert {p["num_threads"] for p in threadpool_info() if p["internal_api"] == "openblas"} == {1}
        finally:
            torch.set_num_threads(before[0])
            cv2.setNumThreads(before[1])
            if before[2] is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = before[2]
    with pytest.raises(ValueError, match="thread count"):
        limit_threads(0)
    assert Settings.from_env({"KPASSIST_PREDICT_PROCESSES": "0"}).predict_processes == 0
    with pytest.raises(SettingsError, match="predict_processes"):
        Settings.from_env({"KPASSIST_PREDICT_PROCESSES": "-1"})


def test_boolean_settings() -> None:
    assert Settings().prelabel_on_promote is False
    assert Settings.from_env({"KPASSIST_PRELABEL_ON_PROMOTE": "true"}).prelabel_on_promote is True
    assert Settings.from_env({"KPASSIST_PRELABEL_ON_PROMOTE": "0"}).prelabel_on_promote is False
    with pytest.raises(SettingsError, match="KPASSIST_PRELABEL_ON_PROMOTE"):
        Settings.from_env({"KPASSIST_PRELABEL_ON_PROMOTE": "maybe"})


def test_background_priority_raises_niceness_only() -> None:
    import subprocess
    import sys

    assert Settings().job_nice == 10 and Settings.from_env({"KPASSIST_JOB_NICE": "0"}).job_nice == 0
    with pytest.raises(SettingsError, match="job_nice"):
        Settings.from_env({"KPASSIST_JOB_NICE": "20"})
    start = os.getpriority(os.PRIO_PROCESS, 0)
    if start >= 19:
        pytest.skip("the tests already run at the lowest priority: there is no niceness to raise")
    # in a child process: a niceness raised here could not be lowered back for the other tests
    code = (
        "import os\n"
        "from backend.job_process import background_priority\n"
        f"assert background_priority({start + 1}) == {start + 1} == os.getpriority(os.PRIO_PROCESS, 0)\n"
        f"assert background_priority({start}) == {start + 1} == os.getpriority(os.PRIO_PROCESS, 0)  # never lowered\n"
        "try:\n"
        "    background_priority(20)\n"
        "except ValueError as exc:\n"
        "    assert 'niceness' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('20 accepted')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
