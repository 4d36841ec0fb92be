"""Does a project want the engine's mirrored supports? With two or more labelled images of other individuals, the
labels can tell: each checked support answers another labelled image with and without its mirror (the support
flipped, left/right labels swapped: kp_model.oneshot.predictor.OneShotPredictor.mirrored), and the one that lands on
that image's labels more often, on average, answers the project's queries. The mirror lifts people seen from either
side and flips near-symmetric animals (zebras), which is why one fixed setting cannot serve both.

pairs = mirror_pairs(supports, scene=0.8, most=4)        # (answering, answered) keys, the first labelled first
result = check_pair(plain, mirrored, image, names, points, size)   # (PCK plain, PCK mirrored), per pair
use = prefers_mirror([result, ...])

Units: images (H, W, 3) uint8 RGB; points in pixels of the answered image; sizes in pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from kp_model.mirror import mirror_permutation
from kp_model.predictor import Predictor

CHECK_PCK = 0.2  # an answer is right within this x the answered support's size


class Labelled(Protocol):
    """What the pairing reads of a support: its (D,) unit-norm thumbnail descriptor and its keypoint names."""

    descriptor: np.ndarray
    names: list[str]


def mirror_pairs(supports: Mapping[str, Labelled], scene: float, most: int) -> list[tuple[str, str]]:
    """Ordered pairs (answering key, answered key) of ``supports`` (in the order added) to check, both ways per pair:
    of other scenes (thumbnail correlation below ``scene``; in a support's own scene the engine never mirrors), with
    left/right names, among the first added, at most ``most``."""
    keys, pairs = list(supports), []
    for j in range(1, len(keys)):
        for i in range(j):
            a, b = supports[keys[i]], supports[keys[j]]
            if float(a.descriptor @ b.descriptor) >= scene or mirror_permutation(a.names) is None:
                continue
            pairs += [(keys[i], keys[j]), (keys[j], keys[i])]
            if len(pairs) >= most:
                return pairs[:most]
    return pairs


def check_pair(
    plain: Predictor, mirrored: Predictor, image: np.ndarray, names: Sequence[str], points: np.ndarray, size: float
) -> tuple[float, float] | None:
    """PCK (within CHECK_PCK x ``size`` px) of the answers of ``plain`` and ``mirrored`` (one support's engine without
    and with its mirror) in ``image``, against that image's labelled ``points`` ((K, 2) px, one per ``names``); None
    when no keypoint of ``names`` is answered by both."""
    out = []
    for predictor in (plain, mirrored):
        [pred] = predictor.predict([image])
        common = [i for i, n in enumerate(names) if n in pred.names]
        if not common:
            return None
        found = np.array([pred.points[pred.names.index(names[i])] for i in common])
        errors = np.linalg.norm(found - np.asarray(points, np.float64)[common], axis=1)
        out.append(float(np.mean(errors <= CHECK_PCK * size)))
    return out[0], out[1]


def prefers_mirror(results: Sequence[tuple[float, float] | None]) -> bool:
    """True when the mirrored answers' mean PCK over the told ``results`` (plain, mirrored) beats the plain ones'
    (a tie, or nothing told, keeps the plain supports)."""
    told = [r for r in results if r is not None]
    return bool(told) and float(np.mean([m for _, m in told])) > float(np.mean([p for p, _ in told]))
