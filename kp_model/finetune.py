"""One fine-tuning run of a project's model: fixed held-out split, warm start from the newest version, train,
save a new version atomically, evaluate it against the served model on the held-out samples (PCK@0.2) and
promote it only if it is not worse. Used by the RQ job (backend.jobs) and by the retraining benchmark."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kp_model.checkpoint import load_checkpoint, save_checkpoint
from kp_model.kptllm import KptLLMConfig, build_model
from kp_model.kptllm_predictor import KptLLMPredictor
from kp_model.metrics import normalised_errors, pck
from kp_model.semantics import semantic_text
from kp_model.store import ModelStore
from kp_model.train import TrainConfig, TrainingError, TrainSample, train

log = logging.getLogger(__name__)

HELDOUT_FRACTION = 0.2


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


def keypoint_bbox(points: np.ndarray, visible: np.ndarray, margin: float = 0.1) -> tuple[float, float, float, float]:
    """(x, y, w, h) of the visible points grown by ``margin`` of their extent on each side (as the COCO data's
    'keypoints+10%' boxes), for PCK normalisation."""
    p = points[visible]
    x0, y0 = p.min(axis=0)
    x1, y1 = p.max(axis=0)
    w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    return (float(x0 - margin * w), float(y0 - margin * h), float(w * (1 + 2 * margin)), float(h * (1 + 2 * margin)))


def heldout_scores(predictor, support: TrainSample, queries: list[TrainSample], alpha: float = 0.2) -> dict[str, float]:
    """Mean PCK@alpha and mean normalised error of ``predictor`` (set_support / predict) over ``queries`` with
    ``support`` as the prompt."""
    vis = support.visible
    predictor.set_support(support.image, *support.visible_support())
    scores, errors = [], []
    for q in queries:
        [pred] = predictor.predict([q.image])
        gt = q.keypoints[vis]
        counted = q.visible[vis]
        if counted.any():
            box = keypoint_bbox(q.keypoints, q.visible)
            scores.append(pck(pred.points, gt, counted, box, alpha))
            errors.append(float(np.mean(normalised_errors(pred.points, gt, box)[counted])))
    nan = float("nan")
    return {"pck": float(np.mean(scores)) if scores else nan, "error": float(np.mean(errors)) if errors else nan}


def not_worse(candidate: dict[str, float], served: dict[str, float]) -> bool:
    """Held-out PCK@0.2 at least the served model's; on a tie (small held-out sets tie often) the mean normalised
    error decides."""
    if candidate["pck"] != served["pck"]:
        return candidate["pck"] > served["pck"]
    return candidate["error"] <= served["error"]


@dataclass
class FinetuneSettings:
    model: KptLLMConfig  # configuration of a new model (no version served yet)
    train: TrainConfig  # optimiser steps etc.
    salt: str = ""  # held-out split salt (the project id)
    promote: str = "not_worse"  # "not_worse": promote when held-out PCK >= the served model's; "always": newest wins

    def __post_init__(self) -> None:
        if self.promote not in ("not_worse", "always"):
            raise ValueError(f"promote must be 'not_worse' or 'always', got {self.promote!r}")


def run_finetune(
    samples: list[TrainSample],
    store: ModelStore,
    settings: FinetuneSettings,
    default_predictor: Callable[[], object],
    progress: Callable[[dict], None] | None = None,
    stage: Callable[[str], None] = lambda name: None,
    info: dict | None = None,
) -> dict:
    """Train, save, evaluate and maybe promote; returns the version record (also written to the store).

    samples: chronological (the last is the most recent and becomes the evaluation support); ``key`` identifies
    the annotation and ``group`` (before the "/" of key) the image it belongs to, the unit of the held-out split.
    default_predictor: builds the engine served while no version is promoted (the weight-free one).
    stage(name): called at "train", "checkpoint" (files written, not yet renamed), "record", "promote".
    """
    t_start = time.time()
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
    if base is not None:
        model = load_checkpoint(store.checkpoint_dir(base))
    else:
        texts = sorted({semantic_text(n, settings.model.category) for s in samples for n in s.names})
        model = build_model(settings.model, vocab_texts=texts)
    log.info("fine-tuning on %d annotations (%d held out), from %s", len(train_set), len(held_set), base or "a new model")
    stage("train")
    result = train(model, train_set, settings.train, progress=progress)
    version = store.next_version()
    meta = {"version": version, "trained_on": [s.key for s in train_set], "base": base}
    save_checkpoint(model, store.checkpoint_dir(version), meta, before_rename=lambda tmp: stage("checkpoint"))
    stage("record")
    support = train_set[-1]
    nan = {"pck": float("nan"), "error": float("nan")}
    candidate = heldout_scores(KptLLMPredictor(model), support, held_set) if held_set else nan
    if held_set:
        current = KptLLMPredictor(load_checkpoint(store.checkpoint_dir(served))) if served else default_predictor()
        now = heldout_scores(current, support, held_set)
        promote = not_worse(candidate, now) or settings.promote == "always"
        reason = (
            f"held-out PCK@0.2 {candidate['pck']:.3f} (error {candidate['error']:.3f}) vs served {now['pck']:.3f} "
            f"(error {now['error']:.3f}, {served or 'default engine'})"
        )
    else:
        now = nan
        promote = settings.promote == "always"
        reason = "no held-out annotation yet (needs 3 or more annotated images)"
    if settings.promote == "always":
        reason += "; promote policy 'always'"
    record = {
        **(info or {}),
        "decision": "promote" if promote else "reject",
        "reason": reason,
        "metrics": {
            "pck@0.2": candidate["pck"],
            "mean_error": candidate["error"],
            "served_pck@0.2": now["pck"],
            "served_mean_error": now["error"],
            "served_version": served,
            "heldout_images": len({s.key.split("/")[0] for s in held_set}),
            "final_loss": result.final.get("loss"),
        },
        "annotation_ids": [s.key for s in train_set],
        "heldout_annotation_ids": [s.key for s in held_set],
        "base_version": base,
        "config": {"model": model.cfg.to_dict(), "train": settings.train.to_dict()},
        "train_seconds": result.seconds,
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
