"""The one way to get a predictor: ``build_predictor(cfg)`` for a config, whether the configured default engine
or a served fine-tuned version (``ModelStore.predictor_config`` turns a version into a config).

predictor = build_predictor(PredictorConfig())                                    # weight-free engine
predictor = build_predictor(PredictorConfig(engine="kptllm", checkpoint=dir))     # learned model
predictor = build_predictor(store.predictor_config(default), models=cache)         # what a project serves
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from kp_model.config import JsonConfig
from kp_model.fewshot import FewShotConfig
from kp_model.kptllm.checkpoint import load_checkpoint
from kp_model.kptllm.modeling import KptLLM
from kp_model.kptllm.predictor import KptLLMPredictor
from kp_model.memory import model_bytes
from kp_model.oneshot.instances import InstanceConfig
from kp_model.oneshot.matcher import ONESHOT_REVISION, OneShotConfig
from kp_model.oneshot.predictor import OneShotPredictor
from kp_model.predictor import Predictor

log = logging.getLogger(__name__)

ENGINES = ("oneshot", "kptllm")


@dataclass(frozen=True)
class PredictorConfig(JsonConfig):
    engine: str = "oneshot"  # "oneshot": weight-free descriptor matching (runs anywhere); "kptllm": the learned model
    checkpoint: str = ""  # kptllm only: checkpoint directory (kp_model.kptllm.checkpoint.save_checkpoint)
    device: str = "cpu"  # kptllm only: torch device ("cpu", "cuda", "cuda:1")
    oneshot: OneShotConfig = field(default_factory=OneShotConfig)  # settings of the oneshot engine
    fewshot: FewShotConfig = field(default_factory=FewShotConfig)  # many supports: how many, how many per query, fusion
    mirror: bool = False  # also try the support flipped, left/right labels swapped (other scenes): helps people, flips zebras
    mirror_margin: float = 0.25  # the flipped support must beat the support's pose score by this much to be used
    instances: InstanceConfig = field(default_factory=InstanceConfig)  # several individuals per image (oneshot engine)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.engine == "kptllm" and not self.checkpoint:
            raise ValueError("checkpoint must name a kptllm checkpoint directory when engine is 'kptllm'")
        if self.mirror_margin < 0:
            raise ValueError(f"mirror_margin must be >= 0, got {self.mirror_margin}")

    @classmethod
    def from_file(cls, path: str | Path) -> PredictorConfig:
        return cls.from_json(Path(path).read_text())

    @property
    def version(self) -> str:
        """Short stable name of this engine + settings (+ the oneshot code's revision), used as the model version:
        Label Studio re-predicts when it changes."""
        text = self.to_json() + (f"/r{ONESHOT_REVISION}" if self.engine == "oneshot" else "")
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        return f"{self.engine}-{digest}"


class ModelCache:
    """Loaded kptllm checkpoints, shared by the predictors built from them; the least recently used is dropped
    beyond ``max_models`` models or ``max_bytes`` of weights (each tiny model holds about 4 MB of weights plus its
    tokenizer; a real one GBs); the model just loaded is always kept."""

    def __init__(self, max_models: int = 8, max_bytes: int = 8 << 30) -> None:
        if max_models < 1:
            raise ValueError(f"max_models must be >= 1, got {max_models}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.max_models = max_models
        self.max_bytes = max_bytes
        self.nbytes = 0  # weights held now
        self._sizes: dict[tuple[str, str], int] = {}
        self._models: OrderedDict[tuple[str, str], KptLLM] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # checkpoints read from disk (observability, tests)
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._models)

    def get(self, checkpoint: str, device: str = "cpu") -> KptLLM:
        key = (str(Path(checkpoint).resolve()), device)
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                return model
            t0 = time.perf_counter()
            model = load_checkpoint(checkpoint, device=device)
            self.loads += 1
            self._models[key] = model
            self._sizes[key] = model_bytes(model)
            self.nbytes += self._sizes[key]
            while len(self._models) > 1 and (len(self._models) > self.max_models or self.nbytes > self.max_bytes):
                dropped, _ = self._models.popitem(last=False)
                self.nbytes -= self._sizes.pop(dropped)
                self.evictions += 1
                log.info("model cache full (%d models, %d MB): dropped %s", len(self._models), self.nbytes >> 20, dropped[0])
            log.info("loaded %s in %.2fs", checkpoint, time.perf_counter() - t0)
            return model


def build_predictor(cfg: PredictorConfig | None = None, models: ModelCache | None = None) -> Predictor:
    """A new predictor of ``cfg.engine`` (no support set yet). A kptllm model comes from ``models`` when given
    (shared and bounded: the predictor asks the cache at each use and does not pin the model), else is loaded from
    ``cfg.checkpoint`` and owned by the predictor.

    Raises:
        CheckpointError: the kptllm checkpoint is missing or does not match its config.
    """
    cfg = cfg or PredictorConfig()
    if cfg.engine == "kptllm":
        if models is None:
            return KptLLMPredictor(load_checkpoint(cfg.checkpoint, cfg.device))
        models.get(cfg.checkpoint, cfg.device)  # load now: a bad checkpoint fails here, not at the first predict
        return KptLLMPredictor(lambda: models.get(cfg.checkpoint, cfg.device))
    return OneShotPredictor(cfg.oneshot, mirror=cfg.mirror, mirror_margin=cfg.mirror_margin, instances=cfg.instances)
