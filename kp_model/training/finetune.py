"""One fine-tuning run of a project's model: fixed held-out split, warm start from the newest version, train,
save a new version atomically, evaluate it against the served model on the held-out samples (PCK@0.2) and
promote it only if it is not worse. Used by the RQ job (backend.jobs) and by the retraining benchmark."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kp_model.build import PredictorConfig, build_predictor
from kp_model.evaluation.metrics import summarise, support_errors
from kp_model.kptllm.checkpoint import build_model, load_checkpoint, save_checkpoint
from kp_model.kptllm.configuration import KptLLMConfig
from kp_model.kptllm.semantics import semantic_text
from kp_model.predictor import Predictor
from kp_model.training.data import TrainingError, TrainSample
from kp_model.training.loop import TrainConfig, train
from kp_model.training.store import ModelStore

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


def heldout_scores(predictor: Predictor, support: TrainSample, queries: list[TrainSample]) -> dict[str, float]:
    """PCK@0.2 ("pck") and mean normalised error ("error") of ``predictor`` over ``queries`` with ``support`` as the
    prompt, as kp_model.evaluation.metrics defines them (NaN without a counted keypoint)."""
    summary = summarise(support_errors(predictor, support, queries))
    return {"pck": summary["pck@0.2"], "error": summary["mean_error"]}


def not_worse(candidate: dict[str, float], served: dict[str, float]) -> bool:
    """Held-out PCK@0.2 at least the served model's; on a tie (small held-out sets tie often) the mean normalised
    error decides. A NaN on either side (nothing counted) is never evidence for the candidate."""
    values = (candidate["pck"], served["pck"], candidate["error"], served["error"])
    if any(math.isnan(v) for v in values):
        return False
    if candidate["pck"] != served["pck"]:
        return candidate["pck"] > served["pck"]
    return candidate["error"] <= served["error"]


@dataclass
class FinetuneSettings:
    model: KptLLMConfig  # configuration of a new model (no version trained yet)
    train: TrainConfig  # optimiser steps etc.
    default: PredictorConfig = field(default_factory=PredictorConfig)  # the engine served while no version is promoted
    salt: str = ""  # held-out split salt (the project id)
    promote: str = "not_worse"  # "not_worse": promote when held-out PCK >= the served model's; "always": newest wins

    def __post_init__(self) -> None:
        if self.promote not in ("not_worse", "always"):
            raise ValueError(f"promote must be 'not_worse' or 'always', got {self.promote!r}")


def run_finetune(
    samples: list[TrainSample],
    store: ModelStore,
    settings: FinetuneSettings,
    progress: Callable[[dict], None] | None = None,
    stage: Callable[[str], None] = lambda name: None,
    info: dict | None = None,
) -> dict:
    """Train, save, evaluate and maybe promote; returns the version record (also written to the store).

    samples: chronological (the last is the most recent and becomes the evaluation support); ``key`` identifies
    the annotation and ``group`` (before the "/" of key) the image it belongs to, the unit of the held-out split.
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
    if held_set:
        candidate = heldout_scores(build_predictor(store.predictor_config(settings.default, version)), support, held_set)
        now = heldout_scores(build_predictor(store.predictor_config(settings.default)), support, held_set)
        promote = not_worse(candidate, now) or settings.promote == "always"
        reason = (
            f"held-out PCK@0.2 {candidate['pck']:.3f} (error {candidate['error']:.3f}) vs served {now['pck']:.3f} "
            f"(error {now['error']:.3f}, {served or 'default engine'})"
        )
    else:
        candidate = now = nan
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
