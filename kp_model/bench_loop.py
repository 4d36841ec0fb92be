"""The annotate-correct-retrain curve: start from one support frame, then after k corrected frames (ground truth
stands in for the annotator) fine-tune with the real promotion rule (kp_model.finetune) and score, on the frames
not labelled yet, the model the backend would serve and the fine-tuned candidate, with each retraining's wall time."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from kp_model.bench import CachedSupportEngine, machine_info, memory_mb
from kp_model.checkpoint import load_checkpoint
from kp_model.coco import load_coco_keypoints
from kp_model.finetune import FinetuneSettings, run_finetune
from kp_model.images import load_image_rgb
from kp_model.kptllm import tiny_config
from kp_model.kptllm_predictor import KptLLMPredictor
from kp_model.metrics import pck
from kp_model.predictor import PredictorConfig, build_predictor
from kp_model.store import ModelStore
from kp_model.train import TrainConfig, TrainSample

log = logging.getLogger(__name__)


def _per_frame_pck(predict, support: TrainSample, frames: list[TrainSample], boxes: list) -> np.ndarray:
    """PCK@0.2 of each frame with ``support`` as the prompt; predict(support, query image) -> (K, 2) px."""
    out = []
    for f, box in zip(frames, boxes, strict=True):
        pred = predict(support, f.image)
        out.append(pck(pred, f.keypoints, f.visible & support.visible, box))
    return np.array(out)


def run_loop_bench(folder: Path, ks: tuple[int, ...] = (1, 2, 5, 10, 20), steps: int = 300, seed: int = 0) -> dict:
    coco = load_coco_keypoints(folder)
    frames = []
    for i, s in enumerate(coco):
        inst = max(s.instances, key=lambda x: int(x.visible.sum()))
        frames.append(
            TrainSample(
                load_image_rgb(s.image_path),
                inst.keypoints[:, :2].copy(),
                inst.visible.copy(),
                list(s.keypoint_names),
                s.category,
                f"{i}/{i}",
            )
        )
    boxes = [max(s.instances, key=lambda x: int(x.visible.sum())).bbox for s in coco]
    support = frames[0]
    order = [int(i) for i in np.random.default_rng(seed).permutation(np.arange(1, len(frames)))[: max(ks)]]
    oneshot = CachedSupportEngine(PredictorConfig())

    def oneshot_predict(sup: TrainSample, image: np.ndarray) -> np.ndarray:
        return oneshot(sup.image, sup.keypoints, sup.names, image)

    t0 = time.perf_counter()
    oneshot_scores = _per_frame_pck(oneshot_predict, support, frames, boxes)
    oneshot_s = time.perf_counter() - t0
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp) / "model")
        settings = FinetuneSettings(
            tiny_config(category=support.category), TrainConfig(steps=steps, seed=seed, log_every=100), salt="bench"
        )
        for k in ks:
            labelled = [0, *order[:k]]
            rest = [i for i in range(len(frames)) if i not in set(labelled)]
            t1 = time.perf_counter()
            record = run_finetune([frames[i] for i in labelled], store, settings, lambda: build_predictor(PredictorConfig()))
            retrain_s = time.perf_counter() - t1
            cand = KptLLMPredictor(load_checkpoint(store.checkpoint_dir(record["version"])))

            def cand_predict(sup: TrainSample, image: np.ndarray, p=cand) -> np.ndarray:
                if not p.is_support_set:
                    p.set_support(sup.image, *sup.visible_support())
                return p.predict([image])[0].points

            cand_scores = _per_frame_pck(cand_predict, support, [frames[i] for i in rest], [boxes[i] for i in rest])
            served = store.served()
            if served == record["version"]:
                served_scores = cand_scores
            elif served is None:
                served_scores = oneshot_scores[rest]
            else:
                prev = KptLLMPredictor(load_checkpoint(store.checkpoint_dir(served)))
                served_scores = _per_frame_pck(
                    lambda sup, image, p=prev: cand_predict(sup, image, p),
                    support,
                    [frames[i] for i in rest],
                    [boxes[i] for i in rest],
                )
            point = {
                "k": k,
                "labelled_frames": labelled,
                "unlabelled_frames": len(rest),
                "retrain_seconds": retrain_s,
                "version": record["version"],
                "decision": record["decision"],
                "reason": record["reason"],
                "served": served or "default engine",
                "served_pck@0.2": float(np.nanmean(served_scores)),
                "candidate_pck@0.2": float(np.nanmean(cand_scores)),
                "default_engine_pck@0.2": float(np.nanmean(oneshot_scores[rest])),
                "peak_rss_mb": memory_mb()["peak_rss_mb"],
            }
            log.info(
                "k=%d: served %s PCK@0.2 %.3f (candidate %.3f, default %.3f), retrain %.0fs",
                k,
                point["served"],
                point["served_pck@0.2"],
                point["candidate_pck@0.2"],
                point["default_engine_pck@0.2"],
                retrain_s,
            )
            points.append(point)
    return {
        "protocol": f"support = frame 0; after k corrected frames (random order, seed {seed}) the tiny kptllm preset is "
        f"fine-tuned ({steps} steps, warm start from the previous version) and promoted by the held-out rule; "
        "PCK@0.2 on the frames not yet labelled",
        "folder": folder.name,
        "steps_per_retrain": steps,
        "default_engine_pck@0.2_all_frames": float(np.nanmean(oneshot_scores[1:])),
        "default_engine_seconds": oneshot_s,
        "points": points,
        "machine": machine_info(),
    }


def plot_loop(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [p["k"] for p in report["points"]]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax.plot(ks, [p["served_pck@0.2"] for p in report["points"]], "o-", label="served (after promotion rule)")
    ax.plot(ks, [p["candidate_pck@0.2"] for p in report["points"]], "s--", label="fine-tuned candidate")
    ax.plot(ks, [p["default_engine_pck@0.2"] for p in report["points"]], "^:", label="default engine (no training)")
    ax.set(xscale="log", xlabel="corrected frames k", ylabel="PCK@0.2 on unlabelled frames", ylim=(0, 1), title=report["folder"])
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.legend(loc="lower right")
    ax2.bar([str(k) for k in ks], [p["retrain_seconds"] for p in report["points"]])
    ax2.set(xlabel="corrected frames k", ylabel="retraining wall time (s)", title=f"{report['machine']['cpus']} CPU cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
