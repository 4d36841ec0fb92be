"""SAM-style predictor: set the support once (its features cached), then predict many query images.

predictor = build_predictor(PredictorConfig())
predictor.set_support(image, keypoints, names)      # (H, W, 3) uint8, (K, 2) px, K names
[pred] = predictor.predict([query])                  # pred.points (K, 2) px, pred.scores (K,)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kp_model.mirror import mirror_permutation
from kp_model.oneshot import OneShotConfig, OneShotMatcher, SupportTemplate

log = logging.getLogger(__name__)


class SupportNotSetError(RuntimeError):
    """predict() was called before set_support()."""


class SupportError(ValueError):
    """The support image or keypoints are unusable (shape, NaN, outside the image, duplicate names)."""


@dataclass(frozen=True)
class PredictorConfig:
    engine: str = "oneshot"  # "oneshot": weight-free descriptor matching (runs anywhere); "kptllm": the learned model
    checkpoint: str = ""  # kptllm only: checkpoint directory (kp_model.checkpoint.save_checkpoint)
    device: str = "cpu"  # kptllm only: torch device ("cpu", "cuda", "cuda:1")
    oneshot: OneShotConfig = field(default_factory=OneShotConfig)  # settings of the oneshot engine
    mirror: bool = False  # also try the support flipped, left/right labels swapped (other scenes): helps people, flips zebras
    mirror_margin: float = 0.25  # the flipped support must beat the support's pose score by this much to be used

    def __post_init__(self) -> None:
        if self.engine not in ("oneshot", "kptllm"):
            raise ValueError(f"engine must be 'oneshot' or 'kptllm', got {self.engine!r}")
        if self.engine == "kptllm" and not self.checkpoint:
            raise ValueError("checkpoint must name a kptllm checkpoint directory when engine is 'kptllm'")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> PredictorConfig:
        data = json.loads(text)
        return cls(
            engine=data.get("engine", "oneshot"),
            checkpoint=str(data.get("checkpoint", "")),
            device=str(data.get("device", "cpu")),
            oneshot=OneShotConfig.from_dict(data.get("oneshot", {})),
            mirror=bool(data.get("mirror", False)),
            mirror_margin=float(data.get("mirror_margin", 0.25)),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> PredictorConfig:
        return cls.from_json(Path(path).read_text())

    @property
    def version(self) -> str:
        """Short stable name of this engine + settings, used as the model version."""
        import hashlib

        digest = hashlib.sha1(self.to_json().encode()).hexdigest()[:8]
        return f"{self.engine}-{digest}"


@dataclass
class KeypointPrediction:
    """Keypoints found in one query image: names (K), points (K, 2) px, scores (K,) in [0, 1]."""

    names: list[str]
    points: np.ndarray
    scores: np.ndarray
    seconds: float = 0.0
    texts: list[str] | None = None  # semantic text per keypoint (kptllm engine)

    @property
    def score(self) -> float:
        """Image-level score: mean keypoint score."""
        return float(np.mean(self.scores)) if len(self.scores) else 0.0


def validate_support(image: np.ndarray, keypoints: np.ndarray, names: list[str]) -> np.ndarray:
    """Check a support and return its keypoints as (K, 2) float64 px.

    Args:
        image: (H, W, 3) uint8 RGB.
        keypoints: (K, 2) pixels (x right, y down), finite and inside the image, K >= 1.
        names: K distinct keypoint names.
    Raises:
        SupportError: on any of the above not holding.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise SupportError(f"support image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    kps = np.asarray(keypoints, np.float64)
    if kps.ndim != 2 or kps.shape[1] != 2 or len(kps) == 0:
        raise SupportError(f"support keypoints must be (K, 2) with K >= 1, got shape {kps.shape}")
    if len(names) != len(kps) or len(set(names)) != len(names):
        raise SupportError(f"need one distinct name per keypoint: {len(kps)} keypoints, names {names}")
    h, w = image.shape[:2]
    inside = np.isfinite(kps).all(axis=1) & (kps[:, 0] >= 0) & (kps[:, 0] <= w) & (kps[:, 1] >= 0) & (kps[:, 1] <= h)
    if not inside.all():
        bad = [names[i] for i in np.flatnonzero(~inside)]
        raise SupportError(f"support keypoints {bad} are not finite points inside the {w}x{h} image")
    return kps


class KeypointPredictor:
    def __init__(self, cfg: PredictorConfig) -> None:
        self.cfg = cfg
        self.matcher = OneShotMatcher(cfg.oneshot)
        self._template: SupportTemplate | None = None
        self._mirror: SupportTemplate | None = None  # flipped support with left/right labels swapped
        self._names: list[str] = []

    @property
    def is_support_set(self) -> bool:
        return self._template is not None

    @property
    def support_names(self) -> list[str]:
        return list(self._names)

    def set_support(self, image: np.ndarray, keypoints: np.ndarray, names: list[str]) -> None:
        """Cache the support: image (H, W, 3) uint8 RGB, keypoints (K, 2) px, K names (see validate_support)."""
        kps = validate_support(image, keypoints, names)
        image = np.asarray(image)
        h, w = image.shape[:2]
        t0 = time.perf_counter()
        self._template = self.matcher.build_template(image, kps)
        self._mirror = None
        perm = mirror_permutation(list(names)) if self.cfg.mirror else None
        if perm is not None:  # keypoint i of the mirrored support is names[i], found where its partner was, flipped
            flipped = kps[perm].copy()
            flipped[:, 0] = w - 1 - flipped[:, 0]
            self._mirror = self.matcher.build_template(np.ascontiguousarray(image[:, ::-1]), np.clip(flipped, 0, None))
        self._names = list(names)
        log.debug("support set: %d keypoints in %.2fs", len(kps), time.perf_counter() - t0)

    def predict(self, images: list[np.ndarray]) -> list[KeypointPrediction]:
        """Find the support's keypoints in each image ((H, W, 3) uint8 RGB); reuses the cached support."""
        if self._template is None:
            raise SupportNotSetError("no support set: call set_support(image, keypoints, names) before predict()")
        out = []
        for image in images:
            t0 = time.perf_counter()
            image = np.asarray(image)
            match = self.matcher.match(self._template, image)
            if self._mirror is not None and not match.same_scene:  # another individual may face the other way
                mirrored = self.matcher.match(self._mirror, image)
                if mirrored.pose_score > match.pose_score + self.cfg.mirror_margin:
                    match = mirrored
            out.append(KeypointPrediction(self.support_names, match.points, match.scores, time.perf_counter() - t0))
        return out


def build_predictor(cfg: PredictorConfig | None = None):
    """The predictor of ``cfg.engine``: KeypointPredictor (oneshot) or KptLLMPredictor (kptllm, loads the checkpoint).
    Both have set_support(image, keypoints, names), predict(images), is_support_set and support_names."""
    cfg = cfg or PredictorConfig()
    if cfg.engine == "kptllm":
        from kp_model.checkpoint import load_checkpoint
        from kp_model.kptllm_predictor import KptLLMPredictor

        return KptLLMPredictor(load_checkpoint(cfg.checkpoint, device=cfg.device))
    return KeypointPredictor(cfg)
