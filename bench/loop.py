"""The annotate-correct-retrain curve: start from one support frame, then after k corrected frames (ground truth
stands in for the annotator) fine-tune with the real promotion rule (kp_model.training.finetune) and score, on the frames
not labelled yet, the model the backend would serve and the fine-tuned candidate, with each retraining's wall time."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.machine import machine_info, memory_mb
from kp_model.build import PredictorConfig, build_predictor
from kp_model.evaluation.metrics import summarise, support_errors
from kp_model.kptllm.configuration import tiny_config
from kp_model.predictor import Predictor
from kp_model.training.data import TrainSample, samples_from_coco
from kp_model.training.finetune import FinetuneSettings, run_finetune
from kp_model.training.loop import TrainConfig
from kp_model.training.store import ModelStore

log = logging.getLogger(__name__)


def _pck(predictor: Predictor, support: TrainSample, frames: list[TrainSample]) -> float:
    """PCK@0.2 of ``predictor`` on ``frames`` with ``support`` as the prompt (kp_model.evaluation.metrics)."""
    return summarise(support_errors(predictor, support, frames))["pck@0.2"]


def run_loop_bench(folder: Path, ks: tuple[int, ...] = (1, 2, 5, 10, 20), steps: int = 300, seed: int = 0) -> dict:
    frames = samples_from_coco(folder)  # one instance per frame in a single-animal video
    support = frames[0]
    order = [int(i) for i in np.random.default_rng(seed).permutation(np.arange(1, len(frames)))[: max(ks)]]
    default = PredictorConfig()
    t0 = time.perf_counter()
    default_errors = support_errors(build_predictor(default), support, frames)  # per frame, computed once

    def default_pck(indices: list[int]) -> float:
        return summarise([default_errors[i] for i in indices])["pck@0.2"]

    default_all = default_pck(list(range(1, len(frames))))
    oneshot_s = time.perf_counter() - t0
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp) / "model")
        settings = FinetuneSettings(
            tiny_config(category=support.category), TrainConfig(steps=steps, seed=seed, log_every=100), default, salt="bench"
        )
        for k in ks:
            labelled = [0, *order[:k]]
            rest_idx = [i for i in range(len(frames)) if i not in set(labelled)]
            rest = [frames[i] for i in rest_idx]
            t1 = time.perf_counter()
            record = run_finetune([frames[i] for i in labelled], store, settings)
            retrain_s = time.perf_counter() - t1
            candidate = _pck(build_predictor(store.predictor_config(default, record["version"])), support, rest)
            served = store.served()
            if served == record["version"]:
                served_pck = candidate
            elif served is None:
                served_pck = default_pck(rest_idx)
            else:
                served_pck = _pck(build_predictor(store.predictor_config(default)), support, rest)
            point = {
                "k": k,
                "labelled_frames": labelled,
                "unlabelled_frames": len(rest),
                "retrain_seconds": retrain_s,
                "version": record["version"],
                "decision": record["decision"],
                "reason": record["reason"],
                "served": served or "default engine",
                "served_pck@0.2": served_pck,
                "candidate_pck@0.2": candidate,
                "default_engine_pck@0.2": default_pck(rest_idx),
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
        "PCK@0.2 on the frames not yet labelled (kp_model.evaluation.metrics)",
        "folder": folder.name,
        "steps_per_retrain": steps,
        "default_engine_pck@0.2_all_frames": default_all,
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
