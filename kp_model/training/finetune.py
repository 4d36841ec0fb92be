"""One fine-tuning run of a project's model: fixed held-out split, warm start from the newest version, train,
save a new version atomically, gather paired evidence against the served model (held-out images, and the images
corrected since the previous run: kp_model.training.promotion) and promote it only when the evidence says it is
better. Used by the RQ job (backend.jobs) and by the retraining benchmark."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from kp_model.build import PredictorConfig, build_predictor
from kp_model.config import DEVICE_NAMES, is_device_name
from kp_model.kptllm.checkpoint import build_model, load_checkpoint, save_checkpoint
from kp_model.kptllm.configuration import KptLLMConfig
from kp_model.kptllm.semantics import semantic_text
from kp_model.parallel import PoolConfig, PredictorPool
from kp_model.predictor import Predictor
from kp_model.threads import torch_threads
from kp_model.training.data import TrainingError, TrainSample
from kp_model.training.evidence import candidate_scores, newest_evidence, paired, served_scores
from kp_model.training.loop import TrainConfig, train
from kp_model.training.promotion import PromotionRule, decide, evidence_rows
from kp_model.training.store import ModelStore

log = logging.getLogger(__name__)

HELDOUT_FRACTION = 0.2
# a run with a time budget keeps, after the served side's evidence, this share of that side's time for the
# candidate's (its evidence took 25-30 % of the served side's on the mouse video: the tiny model answers faster than
# the weight-free engine) when no earlier run measured it, plus a few seconds for the checkpoint and the record
CANDIDATE_SHARE = 0.3
RESERVE_S = 2.0
MIN_TRAIN_SHARE = 0.25  # the steps get at least this share of the budget, whatever the evidence took
PROMOTE_POLICIES = ("evidence", "always")


def assign_split(groups: list[str], split: dict[str, str], salt: str = "", fraction: float = HELDOUT_FRACTION) -> dict[str, str]:
    """The fixed held-out split: ``split`` (group -> "train" | "heldout", as persisted) extended with the new
    groups, in the order given. A group keeps its side forever, so a held-out image is never trained on.

    A new group is held out when its hash falls below ``fraction`` or when no group is held out yet, but only
    once two groups train (the first images always train)."""
    out = dict(split)

    def h(g: str) -> float:
        return int(hashlib.sha1(f"{salt}:{g}".encode()).hexdigest()[:8], 16) / 16**8

    for g in groups:
        if g in out:
            continue
        n_train = sum(v == "train" for v in out.values())
        has_heldout = any(v == "heldout" for v in out.values())
        out[g] = "heldout" if n_train >= 2 and (h(g) < fraction or not has_heldout) else "train"
    return out


@dataclass
class FinetuneSettings:
    model: KptLLMConfig  # configuration of a new model (no version trained yet)
    train: TrainConfig  # optimiser steps etc.
    default: PredictorConfig = field(default_factory=PredictorConfig)  # the engine served while no version is promoted
    salt: str = ""  # held-out split salt (the project id)
    promote: str = "evidence"  # "evidence": kp_model.training.promotion.decide; "always": the newest version is served
    rule: PromotionRule = field(default_factory=PromotionRule)  # how much evidence, what margin
    evidence_processes: int = 0  # worker processes (1 thread each) answering the served side's evidence images when its
    # engine can travel (the weight-free default engine: most of the evidence's cost), before training; 0 = in turn here
    device: str = "cpu"  # torch device the training steps run on ("cpu", "cuda", "cuda:1", "mps"); saved from the CPU
    budget_s: float = 0.0  # 0: no limit; else the seconds a run aims at, evidence included: the training steps get
    # what the served side's evidence (computed first) left, less a reserve for the candidate's (TrainConfig.max_seconds)
    evidence_images: int = 16  # most evidence images a run scores: the newest held-out and prequential ones

    def __post_init__(self) -> None:
        if not self.budget_s >= 0:  # NaN too
            raise ValueError(f"budget_s must be >= 0 (0: no limit), got {self.budget_s}")
        if self.evidence_images < 1:
            raise ValueError(f"evidence_images must be >= 1, got {self.evidence_images}")
        if self.promote not in PROMOTE_POLICIES:
            raise ValueError(f"promote must be one of {PROMOTE_POLICIES}, got {self.promote!r}")
        if self.evidence_processes < 0:
            raise ValueError(f"evidence_processes must be >= 0, got {self.evidence_processes}")
        if not is_device_name(self.device):
            raise ValueError(f"device must be {DEVICE_NAMES}, got {self.device!r}")


def training_device(name: str) -> torch.device:
    """The torch device called ``name``, checked to be on this machine.

    Raises:
        TrainingError: torch sees no such device (a CUDA device asked for on a machine without one, say).
    """
    device = torch.device(name)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise TrainingError(
            f"training device {name!r}: torch {torch.__version__} sees {torch.cuda.device_count()} CUDA device(s) here; "
            "set the device to 'cpu' or run the worker where that GPU is"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TrainingError(f"training device {name!r}: torch sees no MPS device here; set the device to 'cpu'")
    return device


def _budgeted(settings: FinetuneSettings, spent: float, served_s: float, n_eval: int, previous: dict) -> TrainConfig:
    """``settings.train`` with the seconds left to its steps under ``settings.budget_s`` (unchanged without one):
    the budget less what the run ``spent`` so far (the served side's evidence: ``served_s`` of it), less a reserve for
    the candidate's evidence on ``n_eval`` images (the previous run's seconds per image, else CANDIDATE_SHARE of the
    served side's), never under MIN_TRAIN_SHARE of the budget."""
    if not settings.budget_s:
        return settings.train
    per_image = (previous.get("evidence_seconds") or {}).get("candidate_per_image")
    reserve = RESERVE_S + (per_image * n_eval if per_image is not None else CANDIDATE_SHARE * served_s)
    left = settings.budget_s - spent - reserve
    floor = MIN_TRAIN_SHARE * settings.budget_s
    if left < floor:
        log.warning(
            "the served side's evidence (%.0f s) and the reserve for the candidate's (%.0f s) leave under %.0f s of the "
            "%.0f s budget: training still gets %.0f s (raise KPASSIST_TRAIN_BUDGET_S)",
            served_s,
            reserve,
            floor,
            settings.budget_s,
            floor,
        )
    seconds = max(left, floor)
    if settings.train.max_seconds:
        seconds = min(seconds, settings.train.max_seconds)
    log.info("training budget: %.0f s of %.0f s (evidence %.0f s, reserve %.0f s)", seconds, settings.budget_s, served_s, reserve)
    return replace(settings.train, max_seconds=seconds)


def run_finetune(
    samples: list[TrainSample],
    store: ModelStore,
    settings: FinetuneSettings,
    progress: Callable[[dict], None] | None = None,
    stage: Callable[[str], None] = lambda name: None,
    info: dict | None = None,
) -> dict:
    """Train, save, evaluate and maybe promote; returns the version record (also written to the store).

    samples: chronological; ``key`` identifies the annotation and ``group`` (before the "/" of key) the image it
    belongs to, the unit of the held-out split. Evidence images are predicted as served: the training images are the
    supports (kp_model.training.promotion.served_errors).
    stage(name): called at "evidence" (the served side's, before training), "train", "checkpoint" (files written,
    not yet renamed), "record", "promote". With ``settings.budget_s`` the steps end in time for the run to take
    about that long (``_budgeted``).
    """
    t_start = time.time()
    device = training_device(settings.device)  # before anything is written: a missing GPU fails the run at once
    store.clean_partial()
    groups = [s.key.split("/")[0] for s in samples]
    split = assign_split(list(dict.fromkeys(groups)), store.split(), settings.salt)
    store.write_split(split)
    held = {g for g, side in split.items() if side == "heldout"}
    train_set = [s for s, g in zip(samples, groups, strict=True) if g not in held]
    held_set = [s for s, g in zip(samples, groups, strict=True) if g in held]
    if not train_set:
        raise TrainingError(f"all {len(samples)} annotations are held out: annotate more images")
    served = store.served()
    base = store.latest()  # warm start from the newest run, promoted or not: runs only ever saw "train" images
    base_record = store.record(base) if base is not None else {}  # its trained annotations and evidence seconds
    trained_before = set(base_record.get("annotation_ids") or [])
    if base is not None:
        model = load_checkpoint(store.checkpoint_dir(base))
    else:
        texts = sorted({semantic_text(n, settings.model.category) for s in samples for n in s.names})
        torch.manual_seed(settings.train.seed)  # a new model's initial weights: the same run gives the same model
        model = build_model(settings.model, vocab_texts=texts)
    log.info("fine-tuning on %d annotations (%d held out), from %s", len(train_set), len(held_set), base or "a new model")

    def engine(v: str | None) -> Callable[[], Predictor]:
        return lambda: build_predictor(store.predictor_config(settings.default, v))

    fresh = [s for s in train_set if s.key not in trained_before]
    earlier = [s for s in train_set if s.key in trained_before]
    held_eval, fresh_eval = newest_evidence(held_set, fresh, settings.evidence_images)
    # the base's evidence is about the candidate's line of models only when the base is not the served model itself
    prequential = base is not None and base != served and bool(fresh_eval) and bool(earlier)
    stage("evidence")
    t_served = time.time()
    pool = PredictorPool(PoolConfig(processes=settings.evidence_processes, threads=1))
    try:  # the served side does not depend on the candidate: first, so the steps know the time left
        served_side = served_scores(
            engine(served), train_set, held_eval, fresh_eval, earlier, prequential, settings.default.fewshot, pool
        )
    finally:
        pool.close()
    served_s = time.time() - t_served
    n_eval = len(held_eval) + (len(fresh_eval) if prequential else 0)
    train_cfg = _budgeted(settings, time.time() - t_start, served_s, n_eval, base_record)
    stage("train")
    model.to(device)
    result = train(model, train_set, train_cfg, progress=progress)
    model.to("cpu")  # saved, evaluated and served from the CPU (the served engine's own device setting decides there)
    version = store.next_version()
    meta = {"version": version, "trained_on": [s.key for s in train_set], "base": base}
    save_checkpoint(model, store.checkpoint_dir(version), meta, before_rename=lambda tmp: stage("checkpoint"))
    stage("record")
    t_candidate = time.time()
    with torch_threads(result.threads):  # the count the last training steps found faster on this machine now
        candidate_side = candidate_scores(
            engine(version),
            engine(base) if prequential else None,
            train_set,
            held_eval,
            fresh_eval,
            earlier,
            settings.default.fewshot,
        )
    candidate_s = time.time() - t_candidate
    evidence = paired(held_eval, fresh_eval, candidate_side, served_side)
    promote, reason = decide(evidence, settings.rule)
    reason += f" (served: {served or 'default engine'})"
    if settings.promote == "always":
        promote = True
        reason += "; promote policy 'always'"
    held_rows = [p for p in evidence if p.source == "heldout" and p.valid]
    record = {
        **(info or {}),
        "decision": "promote" if promote else "reject",
        "reason": reason,
        "metrics": {  # mean per-image PCK@0.2 on the held-out images (NaN: none scored)
            "pck@0.2": float(np.mean([p.candidate for p in held_rows])) if held_rows else float("nan"),
            "served_pck@0.2": float(np.mean([p.served for p in held_rows])) if held_rows else float("nan"),
            "served_version": served,
            "heldout_images": len({s.key.split("/")[0] for s in held_set}),
            "final_loss": result.final.get("loss"),
        },
        "evidence": evidence_rows(evidence),
        "annotation_ids": [s.key for s in train_set],
        "heldout_annotation_ids": [s.key for s in held_set],
        "base_version": base,
        "config": {"model": model.cfg.to_dict(), "train": train_cfg.to_dict()},
        "train_seconds": result.seconds,
        "train_steps": result.steps,
        "train_threads": result.threads,  # of the last steps (kp_model.threads.AdaptiveThreads)
        "thread_switches": result.thread_switches,
        "budget_s": settings.budget_s,
        "evidence_seconds": {
            "served": served_s,
            "candidate": candidate_s,
            "candidate_per_image": candidate_s / n_eval if n_eval else None,
        },
        "started_at": t_start,
        "finished_at": time.time(),
        "duration_s": time.time() - t_start,
    }
    store.write_record(version, record)
    stage("promote")
    if promote:
        store.promote(version)
    log.info("version %s: %s (%s)", version, record["decision"], reason)
    return {**record, "version": version}
