"""The weight-free engine behind the Predictor interface (kp_model.predictor): descriptor matching of the support's
keypoint constellation (kp_model.oneshot.matcher), optionally with a mirrored support for other individuals that
face the other way."""

from __future__ import annotations

import logging
import time

import numpy as np

from kp_model.mirror import mirror_permutation
from kp_model.oneshot.instances import InstanceConfig, count_instances, other_instances
from kp_model.oneshot.matcher import Match, OneShotConfig, OneShotMatcher, SupportTemplate, Votes
from kp_model.predictor import KeypointPrediction, SupportNotSetError, validate_support

log = logging.getLogger(__name__)


class OneShotPredictor:
    """Set the support once (its descriptors cached per rotation), then predict many queries.

    mirror: also try the support flipped with left/right labels swapped (other scenes); the flipped one must beat
    the support's pose score by ``mirror_margin`` to be used."""

    def __init__(
        self,
        cfg: OneShotConfig | None = None,
        mirror: bool = False,
        mirror_margin: float = 0.25,
        instances: InstanceConfig | None = None,
    ) -> None:
        self.matcher = OneShotMatcher(cfg or OneShotConfig())
        self.instances = instances or InstanceConfig()
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

    @property
    def portable(self) -> bool:
        """True when it can run in a worker process (kp_model.parallel): descriptors, no pretrained encoder."""
        return self.matcher.encoder is None

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
        out = []
        for image in images:
            t0 = time.perf_counter()
            match, _ = self._search(np.asarray(image), 0)
            out.append(KeypointPrediction(self.support_names, match.points, match.scores, time.perf_counter() - t0))
        return out

    def _search(self, image: np.ndarray, peaks: int) -> tuple[Match, list[tuple[SupportTemplate, Votes, float]]]:
        """The best match of the support (or of its mirror image, when that beats it by ``mirror_margin`` in another
        scene) and the votes searched, with ``peaks`` local maxima per vote map."""
        if self._template is None:
            raise SupportNotSetError("no support set: call set_support(image, keypoints, names) before predict()")
        votes = self.matcher.vote(self._template, image, peaks)
        match = self.matcher.finish(self._template, votes, self.matcher.choose(self._template, votes))
        searched = [(self._template, votes, 0.0)]
        if self._mirror is not None and not match.same_scene:  # another individual may face the other way
            mirror_votes = self.matcher.vote(self._mirror, image, peaks)
            mirrored = self.matcher.finish(self._mirror, mirror_votes, self.matcher.choose(self._mirror, mirror_votes))
            if mirrored.pose_score > match.pose_score + self.mirror_margin:
                match = mirrored
            searched.append((self._mirror, mirror_votes, self.mirror_margin))
        return match, searched

    def ranked_instances(self, image: np.ndarray) -> tuple[list[KeypointPrediction], list[float]]:
        """Every distinct individual the vote suggests in one (H, W, 3) uint8 RGB image, best first (the first is
        ``predict``'s answer), and their vote evidence: ``count_instances`` says how many are kept
        (kp_model.oneshot.instances); the mirrored support's peaks count ``mirror_margin`` less."""
        t0 = time.perf_counter()
        first, searched = self._search(np.asarray(image), self.instances.peaks_per_map)
        matches, scores = other_instances(self.matcher, first, searched, self.instances)
        seconds = time.perf_counter() - t0
        return [KeypointPrediction(self.support_names, m.points, m.scores, seconds) for m in matches], scores

    def predict_instances(self, images: list[np.ndarray]) -> list[list[KeypointPrediction]]:
        """The individuals found in each image ((H, W, 3) uint8 RGB), best first, their number estimated per image."""
        out = []
        for image in images:
            preds, scores = self.ranked_instances(image)
            out.append(preds[: count_instances(scores, self.instances)])
        return out
