"""Fine-tuning benchmark of the KptLLM model: train the tiny preset on n frames of a video folder, then PCK of
one-shot prediction (support: the first training frame) on the remaining frames, next to the default engine and
the copy baseline, with the training time and the process's peak memory."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch

from bench.machine import machine_info, memory_mb
from bench.oneshot import CachedSupportEngine
from kp_model.build import PredictorConfig
from kp_model.coco import load_coco_keypoints
from kp_model.evaluation.protocol import copy_engine, evaluate_pairs, spread, summarise
from kp_model.kptllm.checkpoint import build_model, save_checkpoint
from kp_model.kptllm.configuration import tiny_config
from kp_model.kptllm.semantics import semantic_text
from kp_model.training.data import samples_from_coco
from kp_model.training.loop import TrainConfig, train

log = logging.getLogger(__name__)


def run_finetune_bench(folder: Path, n_train: int = 20, steps: int = 1500, seed: int = 0, save_to: Path | None = None) -> dict:
    """Train the tiny preset on ``n_train`` spread frames of ``folder`` and score the rest (see module doc)."""
    coco = load_coco_keypoints(folder)
    train_idx = spread(list(range(len(coco))), n_train)
    test_idx = [i for i in range(len(coco)) if i not in set(train_idx)]
    samples = samples_from_coco(folder, indices=train_idx)
    category = samples[0].category
    texts = [semantic_text(n, category) for n in samples[0].names]
    torch.manual_seed(seed)
    model = build_model(tiny_config(category=category), vocab_texts=texts)
    rss_before = memory_mb()["peak_rss_mb"]
    result = train(model, samples, TrainConfig(steps=steps, seed=seed, log_every=100))
    rss_train = memory_mb()["peak_rss_mb"]
    with tempfile.TemporaryDirectory(prefix="kpassist-finetune-") as tmp:
        checkpoint = save_to if save_to is not None else Path(tmp) / "checkpoint"
        save_checkpoint(model, checkpoint, {"trained_on": [str(coco[i].image_path.name) for i in train_idx], "steps": steps})
        t0 = time.perf_counter()
        engines = {
            "kptllm": CachedSupportEngine(PredictorConfig(engine="kptllm", checkpoint=str(checkpoint))),
            "oneshot": CachedSupportEngine(PredictorConfig()),
            "copy": copy_engine,
        }
        pairs = evaluate_pairs([(coco[train_idx[0]], coco[i]) for i in test_idx], engines, folder.name)
    scores = {name: summarise(results) for name, results in pairs.items()}
    return {
        "protocol": f"tiny preset trained on {len(train_idx)} evenly spread frames; support = frame {train_idx[0]}; "
        f"queries = the {len(test_idx)} other frames; PCK by the longer bbox side",
        "folder": folder.name,
        "train_frames": train_idx,
        "train_steps": result.steps,
        "train_seconds": result.seconds,
        "train_final_losses": result.final,
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb_before_training": rss_before,
        "peak_rss_mb_training": rss_train,
        "eval_seconds": time.perf_counter() - t0,
        "scores": scores,
        "machine": machine_info() | {"torch": torch.__version__, "device": "cpu"},
    }
