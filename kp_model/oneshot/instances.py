"""Several individuals per query image with the weight-free engine. The first individual is the engine's single
answer (what ``predict`` returns); every other strong peak of the support's Hough vote is a candidate for another
one. Candidates are suppressed on their keypoint boxes (against each other and the first), and the number kept is
estimated per image from the candidates' vote evidence (``count_instances``), never copied from the support.

Evidence of a candidate: its vote score (mean log(vote + vote_floor) over the voting keypoints, plus the scale and
rotation priors) minus log(vote_floor), so 0 is "no keypoint matched" and log(1 / vote_floor + 1) a perfect match.

matches, scores = other_instances(matcher, first, [(template, votes, 0.0)], InstanceConfig())   # best first
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from kp_model.config import JsonConfig
from kp_model.oneshot.matcher import Match, OneShotMatcher, SupportTemplate, Votes
from kp_model.predictor import KeypointPrediction


@dataclass(frozen=True)
class InstanceConfig(JsonConfig):
    max_instances: int = 10  # cap on the individuals returned per image (cost and clutter bound)
    peaks_per_map: int = 4  # local maxima taken from each (scale, rotation) vote map as candidates
    # the count rule, chosen on half A of `kpassist bench instances` (grid of ratio x floor, best count accuracy):
    min_ratio: float = 0.2  # another candidate is an individual when its evidence is at least this x the best peak's
    min_evidence: float = 0.8  # ... and at least this (0: nothing matched; about 3.9 a perfect match)
    nms_iou: float = 0.3  # two candidates whose keypoint boxes overlap more than this are the same individual ...
    nms_centre: float = 0.5  # ... and so are two whose centres are closer than this x the larger one's box diagonal

    def __post_init__(self) -> None:
        if self.max_instances < 1:
            raise ValueError(f"max_instances must be >= 1, got {self.max_instances}")
        if self.peaks_per_map < 1:
            raise ValueError(f"peaks_per_map must be >= 1, got {self.peaks_per_map}")
        if not 0 <= self.min_ratio <= 1:
            raise ValueError(f"min_ratio must be in [0, 1], got {self.min_ratio}")
        if not 0 < self.nms_iou <= 1:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou}")
        if self.nms_centre < 0:
            raise ValueError(f"nms_centre must be >= 0, got {self.nms_centre}")


def box_of(points: np.ndarray) -> np.ndarray:
    """(4,) x0, y0, x1, y1 px of the finite points of a (K, 2) array (zeros when none is finite)."""
    p = np.asarray(points, np.float64)
    p = p[np.isfinite(p).all(axis=1)]
    if len(p) == 0:
        return np.zeros(4)
    return np.concatenate([p.min(axis=0), p.max(axis=0)])


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two x0, y0, x1, y1 boxes; a degenerate (point or line) box is grown by 1 px."""
    a = np.array([a[0], a[1], max(a[2], a[0] + 1), max(a[3], a[1] + 1)])
    b = np.array([b[0], b[1], max(b[2], b[0] + 1), max(b[3], b[1] + 1)])
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def same_individual(a: np.ndarray, b: np.ndarray, iou: float, centre: float = 0.0) -> bool:
    """Whether two x0, y0, x1, y1 keypoint boxes are one individual: they overlap by more than ``iou``, or their
    centres are closer than ``centre`` x the larger box's diagonal (catches small or thin boxes, and a pose found
    twice head to tail)."""
    if box_iou(a, b) > iou:
        return True
    size = max(float(np.hypot(a[2] - a[0], a[3] - a[1])), float(np.hypot(b[2] - b[0], b[3] - b[1])))
    gap = float(np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2))
    return gap < centre * size


def suppress(
    boxes: Sequence[np.ndarray], scores: Sequence[float], iou: float, kept: Sequence[np.ndarray] = (), centre: float = 0.0
) -> list[int]:
    """Greedy non-maximum suppression: indices of the kept boxes, highest score first; a box that is the same
    individual (``same_individual``) as an already kept one, or one of ``kept``, is dropped."""
    chosen: list[np.ndarray] = list(kept)
    out: list[int] = []
    for i in sorted(range(len(scores)), key=lambda j: -scores[j]):
        if not any(same_individual(boxes[i], b, iou, centre) for b in chosen):
            out.append(i)
            chosen.append(boxes[i])
    return out


def coarse_points(matcher: OneShotMatcher, template: SupportTemplate, votes: Votes, peak: tuple) -> np.ndarray:
    """(K, 2) original query px of the support's constellation placed at a vote peak, before refinement."""
    _, li, ai, x, y = peak
    qscale, _, _, _, origin = votes.levels[li]
    return (template.offsets[ai] + np.array([x, y]) * matcher.stride + origin) / qscale


def other_instances(
    matcher: OneShotMatcher,
    first: Match,
    searched: Sequence[tuple[SupportTemplate, Votes, float]],
    cfg: InstanceConfig,
) -> tuple[list[Match], list[float]]:
    """``first`` and every other distinct individual the votes suggest, best first, at most ``cfg.max_instances``,
    with their evidence (``count_instances`` says how many to keep).

    Args:
        first: the engine's single answer; its evidence is the best peak's (it is always kept).
        searched: (template, its votes with peaks, score penalty) per template voted, e.g. the support and its
            mirror image, whose peaks count ``penalty`` less.
    """
    peaks, boxes, owners = [], [], []
    for t, (template, votes, penalty) in enumerate(searched):
        for score, *rest in votes.peaks:
            peak = (score - penalty, *rest)
            peaks.append(peak)
            boxes.append(box_of(coarse_points(matcher, template, votes, peak)))
            owners.append(t)
    floor = float(np.log(matcher.cfg.vote_floor))
    best_peak = max((p[0] for p in peaks), default=first.pose_score)
    matches, evidence, kept_boxes = [first], [best_peak - floor], [box_of(first.points)]
    for i in suppress(boxes, [p[0] for p in peaks], cfg.nms_iou, kept_boxes, cfg.nms_centre):
        if len(matches) >= cfg.max_instances:
            break
        template, votes, _ = searched[owners[i]]
        match = matcher.finish(template, votes, peaks[i])
        box = box_of(match.points)
        if not any(same_individual(box, b, cfg.nms_iou, cfg.nms_centre) for b in kept_boxes):  # refined onto a kept one
            matches.append(match)
            evidence.append(peaks[i][0] - floor)
            kept_boxes.append(box)
    return matches, evidence


def count_instances(evidence: Sequence[float], cfg: InstanceConfig) -> int:
    """How many of the ranked candidates with ``evidence`` (best first, the first always an individual) are
    individuals: the first, and the others with at least ``cfg.min_ratio`` x the best evidence and at least
    ``cfg.min_evidence``; 0 when there is no candidate."""
    if not len(evidence):
        return 0
    best = max(evidence)
    return 1 + sum(1 for e in evidence[1:] if e >= cfg.min_ratio * best and e >= cfg.min_evidence)


@runtime_checkable
class RankedInstancePredictor(Protocol):
    """An engine that ranks candidate individuals with their evidence (the weight-free engine)."""

    instances: InstanceConfig

    def ranked_instances(self, image: np.ndarray) -> tuple[list[KeypointPrediction], list[float]]: ...


def merge_ranked(
    ranked: Sequence[tuple[Sequence[KeypointPrediction], Sequence[float]]], cfg: InstanceConfig
) -> tuple[list[KeypointPrediction], list[float]]:
    """One ranked list from several supports' (``ranked_instances`` of one query each): all candidates by evidence,
    a candidate that is the same individual (``same_individual`` on keypoint boxes) as a better one dropped, at
    most ``cfg.max_instances``. The predictions must share their keypoint names' order."""
    pool = [(e, p) for preds, evidence in ranked for p, e in zip(preds, evidence, strict=True)]
    boxes = [box_of(p.points) for _, p in pool]
    kept = suppress(boxes, [e for e, _ in pool], cfg.nms_iou, centre=cfg.nms_centre)[: cfg.max_instances]
    return [pool[i][1] for i in kept], [pool[i][0] for i in kept]
