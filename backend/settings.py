"""Backend settings, read from the environment when the app is built (never at import)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from kp_model.config import DEVICE_NAMES, is_device_name


class SettingsError(ValueError):
    """An environment variable holds a value the backend cannot use."""


@dataclass(frozen=True)
class Settings:
    label_studio_url: str = ""  # LABEL_STUDIO_URL: where images and annotations are fetched when /setup gave no hostname
    label_studio_api_key: str = ""  # LABEL_STUDIO_API_KEY: legacy token or personal access token (never logged)
    score_threshold: float = 0.05  # KPASSIST_SCORE_THRESHOLD: keypoints scoring below it are left out of predictions
    engine_config: str = ""  # KPASSIST_ENGINE_CONFIG: JSON file of a PredictorConfig; empty = built-in default
    data_dir: str = "var"  # KPASSIST_DATA_DIR: where the backend keeps its state (versions, logs)
    local_root: str = ""  # KPASSIST_LOCAL_ROOT: directory served for /data/local-files and local paths; empty = no local files
    allowed_hosts: str = ""  # KPASSIST_ALLOWED_HOSTS: comma-separated hosts images may come from besides Label Studio's
    basic_auth_user: str = ""  # KPASSIST_BASIC_AUTH_USER: with the password, every endpoint requires HTTP basic auth
    basic_auth_password: str = ""  # KPASSIST_BASIC_AUTH_PASSWORD: never logged
    max_image_pixels: int = 64_000_000  # KPASSIST_MAX_IMAGE_PIXELS: bigger images are refused (decompression bombs)
    max_image_bytes: int = 50_000_000  # KPASSIST_MAX_IMAGE_BYTES: bigger downloads are refused
    max_batch: int = 1000  # KPASSIST_MAX_BATCH: most tasks accepted in one /predict
    quality_window: int = 200  # KPASSIST_QUALITY_WINDOW: live quality over this many newest corrected tasks
    rollback_min_tasks: int = 8  # KPASSIST_ROLLBACK_MIN_TASKS: corrected tasks per version before live quality can roll back
    rollback_margin: float = 0.15  # KPASSIST_ROLLBACK_MARGIN: acceptance@0.1 drop vs the previous version that rolls back
    max_instances: int = 10  # KPASSIST_MAX_INSTANCES: most individuals predicted per image (configs with boxes)
    predict_threads: int = 2  # KPASSIST_PREDICT_THREADS: tasks of one /predict handled in parallel (fetch + engine)
    predict_processes: int = 2  # KPASSIST_PREDICT_PROCESSES: worker processes for a batch's engine work (0 = threads only)
    redis_url: str = "redis://127.0.0.1:6379/0"  # REDIS_URL: the RQ queue's Redis
    queue_name: str = "kpassist"  # KPASSIST_QUEUE: RQ queue of the training worker; prefixes kpassist's Redis keys
    train_threshold: int = 5  # KPASSIST_TRAIN_THRESHOLD: annotation events since the last run that queue a job
    train_steps: int = 300  # KPASSIST_TRAIN_STEPS: optimiser steps of one fine-tuning run
    train_budget_s: float = 55.0  # KPASSIST_TRAIN_BUDGET_S: seconds a fine-tuning run aims at, evidence included (fewer
    # steps on a slow or busy machine); 0: no limit, always KPASSIST_TRAIN_STEPS steps
    train_config: str = ""  # KPASSIST_TRAIN_CONFIG: JSON file {"model": KptLLMConfig, "train": TrainConfig} for new models
    job_timeout: int = 3600  # KPASSIST_JOB_TIMEOUT: seconds before RQ stops a training job
    promote: str = "evidence"  # KPASSIST_PROMOTE: "evidence" (kp_model.training.promotion) or "always"
    promote_min_images: int = 3  # KPASSIST_PROMOTE_MIN_IMAGES: evidence images a candidate needs before it can be served
    promote_margin: float = 0.02  # KPASSIST_PROMOTE_MARGIN: mean per-image PCK@0.2 gain over the served model required
    lock_ttl: int = 30  # KPASSIST_LOCK_TTL: seconds a dead worker's project lock outlives it (renewed while alive)
    train_threads: int = 2  # KPASSIST_TRAIN_THREADS: torch/OpenCV threads of a training job (1: bit-reproducible weights)
    train_device: str = "cpu"  # KPASSIST_TRAIN_DEVICE: torch device of a training job's steps ("cpu", "cuda", "cuda:1", "mps")
    job_nice: int = 10  # KPASSIST_JOB_NICE: niceness (0-19) of training and pre-labelling jobs: /predict gets the CPU first
    max_loaded_models: int = 8  # KPASSIST_MAX_LOADED_MODELS: fine-tuned models kept loaded (least recently used dropped)
    max_supports: int = 256  # KPASSIST_MAX_SUPPORTS: support features cached, one per (project, control); LRU beyond
    max_support_mb: int = 1024  # KPASSIST_MAX_SUPPORT_MB: support features cached at most (MB); LRU beyond
    max_model_mb: int = 8192  # KPASSIST_MAX_MODEL_MB: fine-tuned model weights kept loaded at most (MB); LRU beyond
    prelabel_chunk: int = 50  # KPASSIST_PRELABEL_CHUNK: tasks per pre-labelling RQ job (the unit a worker takes and retries)
    prelabel_threads: int = 1  # KPASSIST_PRELABEL_THREADS: compute threads of a pre-labelling job (run a worker per core)
    prelabel_on_promote: bool = False  # KPASSIST_PRELABEL_ON_PROMOTE: pre-label the whole project when a version is promoted

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise SettingsError(f"score_threshold (KPASSIST_SCORE_THRESHOLD) must be in [0, 1], got {self.score_threshold}")
        positive = (
            "max_image_pixels",
            "max_image_bytes",
            "max_batch",
            "predict_threads",
            "max_instances",
            "quality_window",
            "rollback_min_tasks",
            "promote_min_images",
        )
        for name in (
            *positive,
            "train_threshold",
            "train_steps",
            "job_timeout",
            "lock_ttl",
            "max_loaded_models",
            "max_supports",
            "train_threads",
            "prelabel_chunk",
            "prelabel_threads",
            "max_support_mb",
            "max_model_mb",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.predict_processes < 0:
            raise SettingsError(f"predict_processes (KPASSIST_PREDICT_PROCESSES) must be >= 0, got {self.predict_processes}")
        if self.engine_config and not Path(self.engine_config).is_file():
            raise SettingsError(f"engine_config (KPASSIST_ENGINE_CONFIG) {self.engine_config!r} is not a file")
        if self.local_root and not Path(self.local_root).is_dir():
            raise SettingsError(f"local_root (KPASSIST_LOCAL_ROOT) {self.local_root!r} is not a directory")
        if bool(self.basic_auth_user) != bool(self.basic_auth_password):
            raise SettingsError("set both KPASSIST_BASIC_AUTH_USER and KPASSIST_BASIC_AUTH_PASSWORD, or neither")
        if self.promote not in ("evidence", "always"):
            raise SettingsError(f"promote (KPASSIST_PROMOTE) must be 'evidence' or 'always', got {self.promote!r}")
        if not 0.0 <= self.promote_margin <= 1.0:
            raise SettingsError(f"promote_margin (KPASSIST_PROMOTE_MARGIN) must be in [0, 1], got {self.promote_margin}")
        if not 0.0 <= self.rollback_margin <= 1.0:
            raise SettingsError(f"rollback_margin (KPASSIST_ROLLBACK_MARGIN) must be in [0, 1], got {self.rollback_margin}")
        if not self.train_budget_s >= 0:  # NaN too
            raise SettingsError(f"train_budget_s (KPASSIST_TRAIN_BUDGET_S) must be >= 0 (0: no limit), got {self.train_budget_s}")
        if not 0 <= self.job_nice <= 19:
            raise SettingsError(f"job_nice (KPASSIST_JOB_NICE) must be in [0, 19], got {self.job_nice}")
        if not self.queue_name:
            raise SettingsError("queue_name (KPASSIST_QUEUE) must not be empty")
        if not is_device_name(self.train_device):
            raise SettingsError(f"train_device (KPASSIST_TRAIN_DEVICE) must be {DEVICE_NAMES}, got {self.train_device!r}")

    @property
    def allowed_host_list(self) -> tuple[str, ...]:
        return tuple(h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip())

    def __repr__(self) -> str:  # secrets stay out of logs and tracebacks
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        for secret in ("label_studio_api_key", "basic_auth_password"):
            shown[secret] = "***" if shown[secret] else ""
        return f"Settings({shown})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        names = {
            "label_studio_url": "LABEL_STUDIO_URL",
            "label_studio_api_key": "LABEL_STUDIO_API_KEY",
            "score_threshold": "KPASSIST_SCORE_THRESHOLD",
            "engine_config": "KPASSIST_ENGINE_CONFIG",
            "data_dir": "KPASSIST_DATA_DIR",
            "local_root": "KPASSIST_LOCAL_ROOT",
            "allowed_hosts": "KPASSIST_ALLOWED_HOSTS",
            "basic_auth_user": "KPASSIST_BASIC_AUTH_USER",
            "basic_auth_password": "KPASSIST_BASIC_AUTH_PASSWORD",
            "max_image_pixels": "KPASSIST_MAX_IMAGE_PIXELS",
            "max_image_bytes": "KPASSIST_MAX_IMAGE_BYTES",
            "max_batch": "KPASSIST_MAX_BATCH",
            "predict_threads": "KPASSIST_PREDICT_THREADS",
            "predict_processes": "KPASSIST_PREDICT_PROCESSES",
            "max_instances": "KPASSIST_MAX_INSTANCES",
            "quality_window": "KPASSIST_QUALITY_WINDOW",
            "rollback_min_tasks": "KPASSIST_ROLLBACK_MIN_TASKS",
            "rollback_margin": "KPASSIST_ROLLBACK_MARGIN",
            "redis_url": "REDIS_URL",
            "queue_name": "KPASSIST_QUEUE",
            "train_threshold": "KPASSIST_TRAIN_THRESHOLD",
            "train_steps": "KPASSIST_TRAIN_STEPS",
            "train_budget_s": "KPASSIST_TRAIN_BUDGET_S",
            "train_config": "KPASSIST_TRAIN_CONFIG",
            "job_timeout": "KPASSIST_JOB_TIMEOUT",
            "lock_ttl": "KPASSIST_LOCK_TTL",
            "promote": "KPASSIST_PROMOTE",
            "promote_min_images": "KPASSIST_PROMOTE_MIN_IMAGES",
            "promote_margin": "KPASSIST_PROMOTE_MARGIN",
            "train_threads": "KPASSIST_TRAIN_THREADS",
            "train_device": "KPASSIST_TRAIN_DEVICE",
            "job_nice": "KPASSIST_JOB_NICE",
            "max_loaded_models": "KPASSIST_MAX_LOADED_MODELS",
            "max_supports": "KPASSIST_MAX_SUPPORTS",
            "max_support_mb": "KPASSIST_MAX_SUPPORT_MB",
            "max_model_mb": "KPASSIST_MAX_MODEL_MB",
            "prelabel_chunk": "KPASSIST_PRELABEL_CHUNK",
            "prelabel_threads": "KPASSIST_PRELABEL_THREADS",
            "prelabel_on_promote": "KPASSIST_PRELABEL_ON_PROMOTE",
        }
        kwargs: dict[str, object] = {}
        types = {f.name: f.type for f in fields(cls)}
        for attr, var in names.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            kind = types[attr]
            try:
                kwargs[attr] = _parse(raw, kind)
            except ValueError as exc:
                raise SettingsError(f"{var}={raw!r} is not a valid {kind}") from exc
        return cls(**kwargs)


def _parse(raw: str, kind: str) -> object:
    """An environment value as the field's type; raises ValueError when it is not one."""
    if kind == "bool":
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    return float(raw) if kind == "float" else int(raw) if kind == "int" else raw
