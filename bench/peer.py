"""The peer column of `kpassist bench loop`: SLEAP's network backend sleap-nn, trained from scratch with its own
single-instance defaults on the same labelled frames, on the same CPU, scored the same way (PCK on the frames not
labelled yet, errors normalised by each frame's reference box). It runs in a virtualenv of its own
(``--sleap-venv``), never in kpassist's: ``python -m venv V && V/bin/pip install torch==2.14.1 torchvision==0.29.1
sleap-nn``."""

from __future__ import annotations

import json
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from kp_model.evaluation.metrics import normalised_errors, reference_box, summarise
from kp_model.training.data import TrainSample

JOB = Path(__file__).with_name("sleap_peer_job.py")


class PeerError(RuntimeError):
    """The sleap-nn run failed (its log's tail is in the message)."""


def _png(image: np.ndarray, path: Path) -> str:
    cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1]))  # RGB -> BGR for OpenCV; lossless
    return str(path)


def run_sleap_peer(
    venv: Path,
    labelled: list[TrainSample],
    rest: list[TrainSample],
    steps: int = 600,
    threads: int = 1,
    scale: float | None = None,
    batch_size: int | None = None,
) -> dict:
    """Train sleap-nn on ``labelled`` (its config generator's single-instance model; ``scale`` and ``batch_size``
    override its input scale and batch, None keeps them), predict ``rest``; returns PCK@0.05/0.1/0.2 and mean error
    over ``rest`` (a keypoint sleap-nn did not find counts as wrong), wall seconds, CPU seconds and peak RSS."""
    python = Path(venv) / "bin" / "python"
    if not python.exists():
        raise PeerError(f"{python} not found: make the sleap-nn venv first (see bench/peer.py)")
    names = labelled[0].names
    with tempfile.TemporaryDirectory(prefix="kpassist-sleap-") as tmp:
        work = Path(tmp)
        train = [
            {
                "image": _png(s.image, work / f"train{i:03d}.png"),
                "points": [[float(x), float(y)] if v else [None, None] for (x, y), v in zip(s.keypoints, s.visible, strict=True)],
            }
            for i, s in enumerate(labelled)
        ]
        test = [_png(s.image, work / f"test{i:03d}.png") for i, s in enumerate(rest)]
        job = {
            "names": names,
            "train": train,
            "test": test,
            "steps": steps,
            "threads": threads,
            "workdir": tmp,
            "scale": scale,
            "batch_size": batch_size,
        }
        (work / "job.json").write_text(json.dumps(job))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(
            [str(python), "-I", str(JOB), str(work / "job.json"), str(work / "out.json")], capture_output=True, text=True
        )
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise PeerError(f"sleap-nn run failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
        out = json.loads((work / "out.json").read_text())
    errors = []
    for s, pts in zip(rest, out["points"], strict=True):
        pred = np.array([[np.inf, np.inf] if p[0] is None else p for p in pts], float)
        box = reference_box(s.keypoints, s.visible, s.bbox)
        errors.append(normalised_errors(pred, s.keypoints, box)[np.asarray(s.visible, bool)])
    return {
        **{k: v for k, v in summarise(errors).items() if k.startswith("pck") or k == "mean_error"},
        "steps": steps,
        "scale": scale,
        "batch_size": batch_size,
        "wall_s": wall,
        "train_s": out["train_s"],
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "peak_rss_mb": after.ru_maxrss / 1024,  # the largest child so far (Linux: KiB)
    }
