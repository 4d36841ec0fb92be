"""Fine-tuning benchmark of the KptLLM model: train the tiny preset on n frames of a video folder, then PCK of
one-shot prediction (support: the first training frame) on the remaining frames, next to the default engine and
the copy baseline, with the training time and the process's peak memory."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from kp_model.bench import CachedSupportEngine, machine_info, memory_mb
from kp_model.checkpoint import save_checkpoint
from kp_model.coco import load_coco_keypoints
from kp_model.evaluate import Engine, PairResult, best_instance_errors, copy_engine, spread, summarise, support_instance
from kp_model.images import load_image_rgb
from kp_model.kptllm import build_model, tiny_config
from kp_model.kptllm_predictor import KptLLMPredictor
from kp_model.predictor import PredictorConfig
from kp_model.semantics import semantic_text
from kp_model.train import TrainConfig, samples_from_coco, train

log = logging.getLogger(__name__)


def evaluate_engines(folder: Path, support_index: int, query_indices: list[int], engines: dict[str, Engine]) -> dict:
    """PCK@0.05/0.1/0.2 and mean normalised error (``evaluate.summarise``) of each engine with image
    ``support_index`` as the support and ``query_indices`` as queries, scored as in ``evaluate_folder``."""
    coco = load_coco_keypoints(folder)
    s = coco[support_index]
    inst = support_instance(s)
    s_img = load_image_rgb(s.image_path)
    pairs: dict[str, list[PairResult]] = {name: [] for name in engines}
    for qi in query_indices:
        q = coco[qi]
        q_img = load_image_rgb(q.image_path)
        for name, engine in engines.items():
            t0 = time.perf_counter()
            pred = engine(s_img, inst.keypoints[:, :2], list(s.keypoint_names), q_img)
            errors = best_instance_errors(pred, inst.visible, q)
            pairs[name].append(
                PairResult(folder.name, s.category, s.image_path.name, q.image_path.name, errors, time.perf_counter() - t0)
            )
    return {name: summarise(results) for name, results in pairs.items()}


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
    if save_to is not None:
        save_checkpoint(model, save_to, {"trained_on": [str(coco[i].image_path.name) for i in train_idx], "steps": steps})
    t0 = time.perf_counter()
    engines = {
        "kptllm": CachedSupportEngine(predictor=KptLLMPredictor(model)),
        "oneshot": CachedSupportEngine(PredictorConfig()),
        "copy": copy_engine,
    }
    scores = evaluate_engines(folder, train_idx[0], test_idx, engines)
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
