"""`kpassist bench device`: does the learned model train and predict on an accelerator, and does it answer there as
on the CPU? CI has no GPU, so this is the check to run where one is lent: a training job's fine-tuning (``run_finetune`` with
``FinetuneSettings.device``: KPASSIST_TRAIN_DEVICE) of the tiny preset on synthetic images (no data set needed: the
accelerator machine may not have ``../shared/data``), then the saved version predicted on the CPU and on ``device``
through ``build_predictor``, and the two answers compared.

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
from kp_model.kptllm.configuration import tiny_config
from kp_model.training.data import TrainSample
from kp_model.training.finetune import FinetuneSettings, run_finetune, training_device
from kp_model.training.loop import TrainConfig
from kp_model.training.store import ModelStore

NAMES = ["head", "left_side", "right_side"]
CATEGORY = "blob"


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


def _predict_all(cfg: PredictorConfig, support: TrainSample, queries: list[TrainSample]) -> tuple[np.ndarray, float]:
    """(Q, K, 2) px answers of the checkpoint in ``cfg`` and the seconds per query (after one warm-up query)."""
    predictor = build_predictor(cfg)
    predictor.set_support(support.image, support.keypoints, support.names)
    predictor.predict([queries[0].image])  # warm-up: kernels, allocator
    t0 = time.perf_counter()
    points = np.stack([p.points for p in predictor.predict([q.image for q in queries])])
    return points, (time.perf_counter() - t0) / len(queries)


def run_device_bench(device: str = "cuda", steps: int = 300, n_train: int = 20, n_queries: int = 20, seed: int = 0) -> dict:
    """Fine-tune the tiny preset for ``steps`` steps on ``device`` as a training job does (``run_finetune`` with
    ``FinetuneSettings.device``, a new project), then compare the saved version's CPU and ``device`` answers."""
    dev = training_device(device)
    rng = np.random.default_rng(seed)
    samples = [synthetic_sample(rng, f"train-{i}") for i in range(n_train)]
    queries = [synthetic_sample(rng, f"query-{i}") for i in range(n_queries)]
    settings = FinetuneSettings(tiny_config(category=CATEGORY), TrainConfig(steps=steps, seed=seed), device=str(dev))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with tempfile.TemporaryDirectory(prefix="kpassist-device-") as tmp:
        store = ModelStore(Path(tmp) / "project")
        record = run_finetune(samples, store, settings)
        checkpoint = str(store.checkpoint_dir(record["version"]))
        support = next(s for s in samples if s.key in record["annotation_ids"])
        on_cpu, cpu_seconds = _predict_all(PredictorConfig(engine="kptllm", checkpoint=checkpoint), support, queries)
        on_dev, dev_seconds = _predict_all(
            PredictorConfig(engine="kptllm", checkpoint=checkpoint, device=str(dev)), support, queries
        )
    truth = np.stack([q.keypoints for q in queries])
    gap = np.linalg.norm(on_cpu - on_dev, axis=-1)
    return {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "train": {
            "steps": steps,
            "seconds": record["train_seconds"],
            "steps_per_second": steps / record["train_seconds"],
            "run_seconds": record["duration_s"],
            "final_loss": record["metrics"].get("final_loss"),
            "peak_device_memory_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
        },
        "predict": {"queries": n_queries, "cpu_seconds_per_query": cpu_seconds, "device_seconds_per_query": dev_seconds},
        "agreement": {
            "max_px_between_cpu_and_device": float(gap.max()),
            "mean_px_between_cpu_and_device": float(gap.mean()),
            "mean_error_px_cpu": float(np.linalg.norm(on_cpu - truth, axis=-1).mean()),
            "mean_error_px_device": float(np.linalg.norm(on_dev - truth, axis=-1).mean()),
        },
    }
