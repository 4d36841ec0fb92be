"""The annotate-correct-retrain curve: start from one labelled frame, then after k corrected frames (ground truth
stands in for the annotator, in a random or an evenly spread order) fine-tune with the real promotion rule
(kp_model.training.finetune) and score, on the frames not labelled yet, the model the backend would serve, the
fine-tuned candidate and the default engine, each served as the backend serves it (few-shot over the labelled
frames), with each retraining's wall time and the decision with its evidence."""

from __future__ import annotations

import logging
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bench.machine import machine_info, memory_mb
from bench.peer import run_sleap_peer
from kp_model.build import PredictorConfig, build_predictor
from kp_model.evaluation.metrics import summarise, support_errors
from kp_model.kptllm.configuration import tiny_config
from kp_model.predictor import Predictor
from kp_model.threads import torch_threads
from kp_model.training.data import TrainSample, samples_from_coco
from kp_model.training.finetune import FinetuneSettings, run_finetune
from kp_model.training.loop import TrainConfig
from kp_model.training.promotion import served_errors, served_predictor
from kp_model.training.store import ModelStore

log = logging.getLogger(__name__)


ORDERS = ("random", "spread")


def _order(n_frames: int, k_max: int, order: str, seed: int) -> list[int]:
    """The frames corrected one after another (frame 0 is the first label): a random permutation, or evenly
    spread over the video (each next one in the middle of the longest stretch not labelled yet)."""
    if order == "random":
        return [int(i) for i in np.random.default_rng(seed).permutation(np.arange(1, n_frames))[:k_max]]
    chosen = [0]
    while len(chosen) <= k_max and len(chosen) < n_frames:
        marks = sorted(chosen) + [n_frames]
        gaps = [(marks[i + 1] - marks[i], marks[i]) for i in range(len(marks) - 1)]
        width, start = max(gaps)
        chosen.append(start + width // 2)
    return chosen[1:]


def _spin() -> None:
    while True:
        pass


@contextmanager
def busy_cores(n: int) -> Iterator[None]:
    """``n`` processes that keep one core each busy while the block runs: other work on the machine, as on a
    workstation where the annotators' backend shares the CPU (the retraining budget must still hold)."""
    procs = [multiprocessing.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
            p.join()


def _served_pck(make: Callable[[], Predictor], labelled: list[TrainSample], rest: list[TrainSample]) -> float:
    """PCK@0.2 on ``rest`` as the backend serves it: every labelled frame a support, each query predicted from its
    nearest one, checked by the next ones (kp_model.training.promotion.served_errors, the default few-shot settings)."""
    return summarise(served_errors(served_predictor(make, labelled, PredictorConfig().fewshot), rest))["pck@0.2"]


def run_loop_bench(
    folder: Path,
    ks: tuple[int, ...] = (1, 2, 5, 10, 20),
    steps: int = 300,
    seed: int = 0,
    order: str = "random",
    peer: dict | None = None,
    threads: int = 2,
    budget_s: float = 55.0,
    adapt_threads: bool = True,
) -> dict:
    """The curve of one folder in one order. ``threads``: the training job's (KPASSIST_TRAIN_THREADS), which also
    sets its evidence processes (the caller bounds this process's threads). ``peer`` (``bench.peer.run_sleap_peer``'s
    keyword arguments: venv, steps, threads, scale, batch_size) adds sleap-nn trained from scratch on the same
    labelled frames at each k. ``budget_s``: each run's time budget (KPASSIST_TRAIN_BUDGET_S; 0: always ``steps``);
    ``adapt_threads``: TrainConfig.adapt_threads (False: every step on ``threads``)."""
    frames = samples_from_coco(folder)  # one instance per frame in a single-animal video
    sequence = _order(len(frames), max(ks), order, seed)
    default = PredictorConfig()
    t0 = time.perf_counter()
    one_support_errors = support_errors(build_predictor(default), frames[0], frames)  # frame 0 only: one-shot
    oneshot_s = time.perf_counter() - t0
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp) / "model")
        settings = FinetuneSettings(
            tiny_config(category=frames[0].category),
            TrainConfig(steps=steps, seed=seed, log_every=100, adapt_threads=adapt_threads),
            default,
            salt="bench",
            evidence_processes=threads,
            budget_s=budget_s,
        )
        for k in ks:
            labelled_idx = [0, *sequence[:k]]
            rest_idx = [i for i in range(len(frames)) if i not in set(labelled_idx)]
            labelled, rest = [frames[i] for i in labelled_idx], [frames[i] for i in rest_idx]
            t1 = time.perf_counter()
            record = run_finetune(labelled, store, settings)
            retrain_s = time.perf_counter() - t1
            served = store.served()

            def version(v: str) -> Callable[[], Predictor]:
                return lambda: build_predictor(store.predictor_config(default, v))

            with torch_threads(record["train_threads"]):  # the count the training found faster (--busy: 1)
                candidate = _served_pck(version(record["version"]), labelled, rest)
                default_pck = _served_pck(lambda: build_predictor(default), labelled, rest)
                served_pck = candidate if served == record["version"] else default_pck if served is None else None
                if served_pck is None:
                    served_pck = _served_pck(version(served), labelled, rest)
            point = {
                "k": k,
                "labelled_frames": labelled_idx,
                "unlabelled_frames": len(rest),
                "retrain_seconds": retrain_s,
                "train_seconds": record["train_seconds"],  # of retrain_seconds: the optimiser steps (the rest: evidence)
                "train_steps": record["train_steps"],  # fewer than steps_per_retrain where the budget ended the run
                "train_threads": record["train_threads"],  # torch threads of the last steps (AdaptiveThreads)
                "thread_switches": record["thread_switches"],
                "evidence_seconds": record["evidence_seconds"],
                "version": record["version"],
                "decision": record["decision"],
                "reason": record["reason"],
                "evidence": record["evidence"],
                "served": served or "default engine",
                "served_pck@0.2": served_pck,
                "candidate_pck@0.2": candidate,
                "default_engine_pck@0.2": default_pck,
                "default_engine_frame0_pck@0.2": summarise([one_support_errors[i] for i in rest_idx])["pck@0.2"],
                "peak_rss_mb": memory_mb()["peak_rss_mb"],
            }
            if peer is not None:
                point["sleap_nn"] = run_sleap_peer(labelled=labelled, rest=rest, **peer)
                sleap = point["sleap_nn"]
                log.info("%s k=%d: sleap-nn PCK@0.2 %.3f in %.0fs", order, k, sleap["pck@0.2"], sleap["wall_s"])
            log.info(
                "%s k=%d: served %s PCK@0.2 %.3f (candidate %.3f, default %.3f), retrain %.0fs, %s",
                order,
                k,
                point["served"],
                point["served_pck@0.2"],
                point["candidate_pck@0.2"],
                point["default_engine_pck@0.2"],
                retrain_s,
                record["decision"],
            )
            points.append(point)
    return {
        "protocol": f"frame 0 labelled first; then k corrected frames ({order} order, seed {seed}); after each round the "
        f"tiny kptllm preset is fine-tuned ({steps} steps or a {budget_s:.0f} s budget, evidence included, whichever "
        "ends first; warm start from the previous version) and promoted by the "
        "evidence rule (kp_model.training.promotion); PCK@0.2 on the frames not yet labelled, every engine served as "
        "the backend serves it: the labelled frames are its supports, each query predicted from the nearest one, "
        "checked by the next two",
        "folder": folder.name,
        "order": order,
        "steps_per_retrain": steps,
        "budget_s": budget_s,
        "adapt_threads": adapt_threads,
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
    if all("sleap_nn" in p for p in report["points"]):
        ax.plot(ks, [p["sleap_nn"]["pck@0.2"] for p in report["points"]], "x-.", label="sleap-nn (from scratch)")
    ax.set(xscale="log", xlabel="corrected frames k", ylabel="PCK@0.2 on unlabelled frames", ylim=(0, 1), title=report["folder"])
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.legend(loc="lower right")
    ax2.bar([str(k) for k in ks], [p["retrain_seconds"] for p in report["points"]])
    ax2.set(xlabel="corrected frames k", ylabel="retraining wall time (s)", title=f"{report['machine']['cpus']} CPU cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
