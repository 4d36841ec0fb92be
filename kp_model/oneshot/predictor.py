"""The weight-free engine behind the Predictor interface (kp_model.predictor): descriptor matching of the support's
keypoint constellation (kp_model.oneshot.matcher), optionally with a mirrored support for other individuals that
face the other way."""

from __future__ import annotations

import logging
import time

import numpy as np

from kp_model.mirror import mirror_permutation
from kp_model.oneshot.matcher import OneShotConfig, OneShotMatcher, SupportTemplate
from kp_model.predictor import KeypointPrediction, SupportNotSetError, validate_support

log = logging.getLogger(__name__)


class OneShotPredictor:
    """Set the support once (its descriptors cached per rotation), then predict many queries.

    mirror: also try the support flipped with left/right labels swapped (other scenes); the flipped one must beat
    the support's pose score by ``mirror_margin`` to be used."""

    def __init__(self, cfg: OneShotConfig | None = None, mirror: bool = False, mirror_margin: float = 0.25) -> None:
        self.matcher = OneShotMatcher(cfg or OneShotConfig())
        self.mirror = mirror
        self.mirror_margin = mirror_margin
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
        perm = mirror_permutation(list(names)) if self.mirror else None
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
                if mirrored.pose_score > match.pose_score + self.mirror_margin:
                    match = mirrored
            out.append(KeypointPrediction(self.support_names, match.points, match.scores, time.perf_counter() - t0))
        return out
