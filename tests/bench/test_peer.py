"""The sleap-nn peer's contract, with a stand-in for sleap-nn's venv (a python that answers fixed points): what
the job receives, how its answer is scored, and what a failed run says."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest

from bench.peer import PeerError, run_sleap_peer
from kp_model.training.data import TrainSample

NAMES = ["nose", "tail"]


def sample(points: list[list[float]], key: str) -> TrainSample:
    img = np.zeros((40, 60, 3), np.uint8)
    return TrainSample(img, np.array(points, float), np.array([True, True]), NAMES, key=key, bbox=(0.0, 0.0, 50.0, 20.0))


def fake_venv(tmp_path: Path, answer: list, code: int = 0) -> Path:
    """A venv whose python (called as ``python -I job_script JOB OUT``) keeps a copy of JOB and writes ``answer``."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    script = (
        "#!/usr/bin/env python3\n"
        "import json, shutil, sys\n"
        f"shutil.copy(sys.argv[3], {str(tmp_path / 'job-seen.json')!r})\n"
        f"json.dump({{'points': {answer!r}, 'train_s': 1.0, 'predict_s': 0.5}}, open(sys.argv[4], 'w'))\n"
        f"sys.exit({code})\n"
    )
    python.write_text(script)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return venv


def test_answers_are_scored_like_the_engines(tmp_path: Path) -> None:
    labelled = [sample([[10, 10], [40, 12]], "a")]
    rest = [sample([[12, 10], [44, 12]], "b"), sample([[20, 10], [50, 15]], "c")]
    # query b: both within 0.2 x 50 px; query c: nose 10 px off (0.2, counted at 0.2), tail not found
    venv = fake_venv(tmp_path, [[[12.0, 11.0], [45.0, 12.0]], [[30.0, 10.0], [None, None]]])
    report = run_sleap_peer(venv, labelled, rest, steps=7, threads=1)
    assert report["pck@0.2"] == pytest.approx(3 / 4) and report["pck@0.05"] == pytest.approx(2 / 4)
    assert report["mean_error"] == float("inf") and report["steps"] == 7 and report["train_s"] == 1.0
    job = json.loads((tmp_path / "job-seen.json").read_text())
    assert job["names"] == NAMES and job["steps"] == 7 and len(job["test"]) == 2
    assert job["train"][0]["points"] == [[10.0, 10.0], [40.0, 12.0]]


def test_a_failed_run_or_a_missing_venv_says_so(tmp_path: Path) -> None:
    s = sample([[10, 10], [40, 12]], "a")
    with pytest.raises(PeerError, match="not found"):
        run_sleap_peer(tmp_path / "nowhere", [s], [s])
    with pytest.raises(PeerError, match="failed"):
        run_sleap_peer(fake_venv(tmp_path, [[[1.0, 1.0], [2.0, 2.0]]], code=3), [s], [s])
