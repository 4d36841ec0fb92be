"""`kpassist bench device`: does the learned model train and predict on an accelerator, and does it answer there as
on the CPU? CI has no GPU, so this is the check to run where one is lent: the tiny preset trained on synthetic
images (no data set needed: the accelerator machine may not have ``../shared/data``) on ``device``, saved, then the
same checkpoint predicted on the CPU and on ``device`` through ``build_predictor``, and the two answers compared.

report = run_device_bench("cuda", steps=300)   # {"device", "train": {...}, "predict": {...}, "agreement": {...}}

Units: points in pixels of the 160 x 120 synthetic images; times in seconds.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from kp_model.build import PredictorConfig, build_predictor
from kp_model.kptllm.checkpoint import build_model, save_checkpoint
from kp_model.kptllm.configuration import tiny_config
from kp_model.kptllm.semantics import semantic_text
from kp_model.training.data import TrainSample
from kp_model.training.loop import TrainConfig, train

NAMES = ["head", "left_side", "right_side"]
CATEGORY = "blob"


class DeviceUnavailableError(RuntimeError):
    """The asked torch device is not on this machine."""


def synthetic_sample(rng: np.random.Generator, key: str) -> TrainSample:
    """A 160 x 120 image of a speckled ellipse with a red head, a green left and a blue right side, at a random place
    and angle, and those 3 keypoints (px): enough for the model to learn something, with no data set."""
    image = cv2.add(np.full((120, 160, 3), 190, np.uint8), rng.integers(0, 25, (120, 160, 3), dtype=np.uint8))
    centre, angle = rng.uniform([50, 40], [110, 80]), rng.uniform(-0.6, 0.6)
    c, s = np.cos(angle), np.sin(angle)
    points = np.array([[-24.0, 0.0], [8.0, -10.0], [8.0, 10.0]]) @ np.array([[c, s], [-s, c]]) + centre
    axes = (26, 12)
    cv2.ellipse(image, tuple(int(v) for v in centre), axes, float(np.rad2deg(angle)), 0, 360, (90, 80, 70), -1)
    for point, colour in zip(points, [(220, 30, 30), (30, 200, 30), (30, 30, 220)], strict=True):
        cv2.circle(image, tuple(int(round(v)) for v in point), 4, colour, -1)
    return TrainSample(image, points, np.ones(3, bool), list(NAMES), CATEGORY, key)


def _check_device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(f"device {device!r}: torch {torch.__version__} sees no CUDA device here")
    return dev


def _predict_all(cfg: PredictorConfig, support: TrainSample, queries: list[TrainSample]) -> tuple[np.ndarray, float]:
    """(Q, K, 2) px answers of the checkpoint in ``cfg`` and the seconds per query (after one warm-up query)."""
    predictor = build_predictor(cfg)
    predictor.set_support(support.image, support.keypoints, support.names)
    predictor.predict([queries[0].image])  # warm-up: kernels, allocator
    t0 = time.perf_counter()
    points = np.stack([p.points for p in predictor.predict([q.image for q in queries])])
    return points, (time.perf_counter() - t0) / len(queries)


def run_device_bench(device: str = "cuda", steps: int = 300, n_train: int = 20, n_queries: int = 20, seed: int = 0) -> dict:
    """Train the tiny preset for ``steps`` steps on ``device``, then compare its CPU and ``device`` answers."""
    dev = _check_device(device)
    rng = np.random.default_rng(seed)
    samples = [synthetic_sample(rng, f"train-{i}") for i in range(n_train)]
    queries = [synthetic_sample(rng, f"query-{i}") for i in range(n_queries)]
    torch.manual_seed(seed)
    model = build_model(tiny_config(category=CATEGORY), vocab_texts=[semantic_text(n, CATEGORY) for n in NAMES])
    model.to(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    result = train(model, samples, TrainConfig(steps=steps, seed=seed, log_every=max(1, steps // 4)))
    report: dict = {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "train": {
            "steps": result.steps,
            "seconds": result.seconds,
            "steps_per_second": result.steps / result.seconds,
            "final_losses": result.final,
            "peak_device_memory_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
        },
    }
    with tempfile.TemporaryDirectory(prefix="kpassist-device-") as tmp:
        checkpoint = Path(tmp) / "checkpoint"
        save_checkpoint(model.to("cpu"), checkpoint, {"steps": result.steps, "device": str(dev)})
        support = samples[0]
        on_cpu, cpu_seconds = _predict_all(PredictorConfig(engine="kptllm", checkpoint=str(checkpoint)), support, queries)
        on_dev, dev_seconds = _predict_all(
            PredictorConfig(engine="kptllm", checkpoint=str(checkpoint), device=str(dev)), support, queries
        )
    truth = np.stack([q.keypoints for q in queries])
    gap = np.linalg.norm(on_cpu - on_dev, axis=-1)
    report["predict"] = {"queries": n_queries, "cpu_seconds_per_query": cpu_seconds, "device_seconds_per_query": dev_seconds}
    report["agreement"] = {
        "max_px_between_cpu_and_device": float(gap.max()),
        "mean_px_between_cpu_and_device": float(gap.mean()),
        "mean_error_px_cpu": float(np.linalg.norm(on_cpu - truth, axis=-1).mean()),
        "mean_error_px_device": float(np.linalg.norm(on_dev - truth, axis=-1).mean()),
    }
    return report
