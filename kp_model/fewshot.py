"""Few-shot prediction from many supports, for any engine: every labelled image is a support. A query is matched
against the few supports nearest to it by a cheap global image descriptor (on a video, the nearest labelled frames),
and their answers are fused per keypoint: the answer most supports agree on wins, and supports that disagree on a
keypoint lower its score (so scores rank errors). With one support shortlisted (the default), the next nearest
supports check its pose (``vote``): two that agree with each other against it replace it (a head/tail flip of the
nearest frame's match). The answer is then checked against the support it came from by appearance (``verify``,
kp_model.appearance). In the nearest support's scene (a video), when it correlates poorly, the next nearest supports
answer too and the one whose answer looks most like its own support replaces it, by a margin or backed by a third
support's answer (agreeing with it). In any project, scores are scaled by the correlation (so flips, misses and
answers unlike their support rank low; with one support too). Last, in the scene, each keypoint is averaged with
the next nearest supports' answers that fall near it (``blend``), and its score lowered when they place it elsewhere
(``agreement``). Then the answer is matched back onto the support it came from (``cycle``, kp_model.cycle): a
keypoint that does not lead back to the support's own keypoint has its score lowered, with any number of supports
(so scores rank errors from the first label). The combining functions live in kp_model.fusion.

predictor = FewShotPredictor(lambda: build_predictor(cfg))
predictor.add_support("12", image, keypoints, names)    # one per labelled image, features cached per key
predictor.remove_support("12")                          # a deleted annotation leaves; the others stay cached
[pred] = predictor.predict([query])

The cost of a query grows with ``shortlist`` (in a video: ``blend_supports`` matches, and ``verify_supports`` for
the queries whose answer fails the check; one more for the cycle check), not with the number of supports (one dot
product each).
"""

from __future__ import annotations

import functools
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kp_model.appearance import (  # global_descriptor: also this module's API (bench.fewshot)
    SupportAppearance,
    appearance_score,
    global_descriptor,
    smooth_grey,
    support_appearance,
)
from kp_model.cycle import cycle_errors, cycle_factor, decode_image, encode_image
from kp_model.fewshot_config import FewShotConfig  # also this module's API
from kp_model.fusion import agreement, blend, fuse, lower, pose_distance, reorder
from kp_model.oneshot.instances import RankedInstancePredictor, count_instances, merge_ranked
from kp_model.predictor import KeypointPrediction, Predictor, SupportNotSetError, predict_instances, validate_support

RELIABLE_WITHIN = 0.2  # a support's answer in another labelled image counts right within this x that one's size (PCK@0.2)


@dataclass
class _Support:
    predictor: Predictor
    descriptor: np.ndarray
    names: list[str]
    size: float  # px: the longer side of its keypoints' extent x 1.2 (about its reference box)
    appearance: SupportAppearance  # its region's grey levels, for the appearance check of answers it gives
    keypoints: np.ndarray  # (K, 2) px in its image, in ``names`` order
    image: np.ndarray | None  # its image JPEG-encoded (kp_model.cycle.encode_image), for the cycle check; None when off


class FewShotPredictor:
    """Many supports, each its own single-support predictor (features computed once per support, by
    ``make_predictor``'s engine); implements the Predictor protocol (``set_support`` = one support only)."""

    def __init__(self, make_predictor: Callable[[], Predictor] | None, cfg: FewShotConfig | None = None) -> None:
        self.make_predictor = make_predictor
        self.cfg = cfg or FewShotConfig()
        self._supports: OrderedDict[str, _Support] = OrderedDict()
        self._answered: dict[tuple[str, str], float | None] = {}  # (support, other support) -> PCK of the first's
        # answer in the other's image against its labels (None: no keypoint in common), for ``reliability``

    @property
    def is_support_set(self) -> bool:
        return bool(self._supports)

    @property
    def support_keys(self) -> list[str]:
        return list(self._supports)

    @property
    def support_names(self) -> list[str]:
        """Every keypoint name of the supports, in the order they were first seen."""
        names: dict[str, None] = {}
        for s in self._supports.values():
            names.update(dict.fromkeys(s.names))
        return list(names)

    @property
    def portable(self) -> bool:
        """True when every support's predictor can run in a worker process (kp_model.parallel)."""
        return bool(self._supports) and all(getattr(s.predictor, "portable", False) for s in self._supports.values())

    def __getstate__(self) -> dict:
        """Pickled (for a worker process) without ``make_predictor``, often a closure: the copy predicts with the
        supports it holds; ``add_support`` on it raises."""
        return {**self.__dict__, "make_predictor": None}

    def copy(self) -> FewShotPredictor:
        """A predictor sharing this one's supports (features not recomputed); adding to or removing from either
        leaves the other as it was."""
        other = FewShotPredictor(self.make_predictor, self.cfg)
        other._supports = OrderedDict(self._supports)
        other._answered = dict(self._answered)
        return other

    def set_support(self, image: np.ndarray, keypoints: np.ndarray, names: list[str]) -> None:
        """Only this support (see ``add_support``)."""
        self._supports.clear()
        self.add_support("0", image, keypoints, names)

    def add_support(
        self, key: str, image: np.ndarray, keypoints: np.ndarray, names: list[str], described: Predictor | None = None
    ) -> None:
        """Add (or replace) the support ``key``: image (H, W, 3) uint8 RGB, keypoints (K, 2) px, K names.
        ``described``: the engine's predictor with this very support already set (described elsewhere, e.g. in a
        worker process: kp_model.parallel.PredictorPool.describe), used instead of a new one.

        Raises SupportError on bad input (kp_model.predictor.validate_support)."""
        kps = validate_support(image, keypoints, names)
        if described is not None:
            predictor = described
        elif self.make_predictor is None:
            raise RuntimeError("this FewShotPredictor was unpickled without its engine factory: add supports to the original")
        else:
            predictor = self.make_predictor()
            predictor.set_support(image, kps, list(names))
        self.remove_support(key)
        size = 1.2 * max(float(np.ptp(kps, axis=0).max()), 1.0)
        appearance = support_appearance(np.asarray(image), kps)
        kept = encode_image(image) if self.cfg.cycle_weight > 0 or self.cfg.reliability_weight > 0 else None
        self._supports[key] = _Support(predictor, global_descriptor(image), list(names), size, appearance, kps, kept)
        while len(self._supports) > self.cfg.max_supports:
            self.remove_support(next(iter(self._supports)))

    def remove_support(self, key: str) -> None:
        self._supports.pop(key, None)
        self._answered = {pair: v for pair, v in self._answered.items() if key not in pair}

    def reliability(self, key: str) -> float | None:
        """Support ``key``'s share of keypoints answered within RELIABLE_WITHIN x the other support's size of its
        labels, over at most ``reliability_images`` other supports of other scenes (thumbnail correlation below
        ``verify_scene``; the first added); None when there is none (or no kept image). Each pair is matched once, when
        first needed (a query's candidate), and kept with the predictor: its copies and pickles carry what was read."""
        support = self._supports[key]
        if support.image is None:
            return None
        others = [
            k for k, s in self._supports.items()
            if k != key and s.image is not None and float(s.descriptor @ support.descriptor) < self.cfg.verify_scene
        ][: self.cfg.reliability_images]  # fmt: skip
        for other in others:
            if (key, other) not in self._answered:
                self._answered[(key, other)] = self._answer_on(key, other)
        told = [v for v in (self._answered[(key, other)] for other in others) if v is not None]
        return float(np.mean(told)) if told else None

    def _answer_on(self, key: str, other: str) -> float | None:
        """PCK (RELIABLE_WITHIN x ``other``'s size) of support ``key``'s answer in support ``other``'s image."""
        o = self._supports[other]
        [pred] = self._supports[key].predictor.predict([decode_image(o.image)])
        common = [n for n in o.names if n in pred.names]
        if not common:
            return None
        found = np.array([pred.points[pred.names.index(n)] for n in common])
        errors = np.linalg.norm(found - o.keypoints[[o.names.index(n) for n in common]], axis=1)
        return float(np.mean(errors <= RELIABLE_WITHIN * o.size))

    def _reranked(self, ranked: list[tuple[str, float]], n: int) -> list[tuple[str, float]]:
        """Outside the nearest support's scene (``ranked``: every support by thumbnail, best first), the
        ``reliability_candidates`` nearest reordered by thumbnail similarity + ``reliability_weight`` x reliability,
        then the rest: the first ``n``. ``ranked[:n]`` as it is in the scene, with one support, or when a
        candidate's reliability cannot be told."""
        cfg = self.cfg
        if cfg.reliability_weight <= 0 or len(ranked) < 2 or ranked[0][1] >= cfg.verify_scene:
            return ranked[:n]
        candidates, rest = ranked[: cfg.reliability_candidates], ranked[cfg.reliability_candidates :]
        told = {key: self.reliability(key) for key, _ in candidates}
        if any(v is None for v in told.values()):
            return ranked[:n]
        return (sorted(candidates, key=lambda ks: -(ks[1] + cfg.reliability_weight * told[ks[0]])) + rest)[:n]

    def nearest(self, image: np.ndarray, n: int) -> list[tuple[str, float]]:
        """The ``n`` supports most similar to ``image`` by global descriptor: [(key, similarity)], best first."""
        d = global_descriptor(image)
        sims = [(key, float(s.descriptor @ d)) for key, s in self._supports.items()]
        return sorted(sims, key=lambda ks: -ks[1])[:n]

    def predict(self, images: list[np.ndarray]) -> list[KeypointPrediction]:
        """The supports' keypoints (``support_names``) in each (H, W, 3) uint8 RGB image; a keypoint no shortlisted
        support has gets score 0 at (nan, nan)."""
        if not self._supports:
            raise SupportNotSetError("no support set: call add_support(key, image, keypoints, names) before predict()")
        return [self._predict_one(np.asarray(image)) for image in images]

    def ranked_instances(self, image: np.ndarray) -> tuple[list[KeypointPrediction], list[float]]:
        """Candidate individuals in one (H, W, 3) uint8 RGB image, best first, with their evidence: every support of
        the nearest image (each individual annotated there, at most ``instance_supports``) searches the image and
        their candidates are merged (kp_model.oneshot.instances.merge_ranked). An engine that does not rank
        individuals answers one, evidence 0."""
        if not self._supports:
            raise SupportNotSetError("no support set: call add_support(key, image, keypoints, names) before predict()")
        image = np.asarray(image)
        names = self.support_names
        ranked = self.nearest(image, len(self._supports))
        group = [key for key, sim in ranked if sim >= ranked[0][1] - 1e-6][: self.cfg.instance_supports]
        rankers = [p for p in (self._supports[k].predictor for k in group) if isinstance(p, RankedInstancePredictor)]
        if not rankers:
            [[pred, *_]] = predict_instances(self._supports[group[0]].predictor, [image])
            return [reorder(pred, names)], [0.0]
        lists = []
        for predictor in rankers:
            preds, evidence = predictor.ranked_instances(image)
            lists.append(([reorder(p, names) for p in preds], evidence))
        return merge_ranked(lists, rankers[0].instances)

    def predict_instances(self, images: list[np.ndarray]) -> list[list[KeypointPrediction]]:
        """Every individual in each (H, W, 3) uint8 RGB image, best first (``ranked_instances`` cut by the engine's
        count rule); keypoints are ``support_names``."""
        engines = (s.predictor for s in self._supports.values())
        rule = next((p.instances for p in engines if isinstance(p, RankedInstancePredictor)), None)
        out = []
        for image in images:
            preds, evidence = self.ranked_instances(image)
            out.append(preds[: count_instances(evidence, rule)] if rule is not None else preds)
        return out

    def _predict_one(self, image: np.ndarray) -> KeypointPrediction:
        t0 = time.perf_counter()
        names = self.support_names
        cfg = self.cfg
        single = cfg.shortlist == 1
        vote = cfg.vote and single and len(self._supports) >= 3
        more = max(cfg.verify_supports, cfg.blend_supports) if single else 1
        ranked = self._reranked(self.nearest(image, len(self._supports)), max(cfg.shortlist, 3 if vote else 1, more))
        keys = [key for key, _ in ranked]

        @functools.cache
        def ask(key: str) -> KeypointPrediction:  # each support asked at most once per query
            [pred] = self._supports[key].predictor.predict([image])
            return pred

        @functools.cache
        def answer(key: str) -> KeypointPrediction:  # its answer in ``names`` order, for the vote, check and blend
            return reorder(ask(key), names)

        points, scores = fuse([(ask(key), sim) for key, sim in ranked[: cfg.shortlist]], names, cfg)
        source = keys[0]  # with one support shortlisted: the support the answer came from
        if vote:
            points, scores, source = self._vote(answer, points, scores, keys)
        scene = single and ranked[0][1] >= cfg.verify_scene  # the nearest support's scene: a video
        if single and cfg.verify_supports > 1:  # the check replaces answers only in the scene; it scores them anywhere
            grey = smooth_grey(image)
            if scene:
                points, scores, source, ncc = self._verify(answer, grey, names, points, scores, source, keys)
            else:
                ncc = self._correlation(source, grey, points, names)
            if cfg.verify_score_power > 0 and np.isfinite(ncc):
                scores = lower(scores, max(ncc, 0.0) ** cfg.verify_score_power, cfg.verify_score_floor)
        if scene:
            if cfg.blend_supports > 1:
                others = [answer(key).points for key in keys[: cfg.blend_supports] if key != source]
                radius = cfg.blend_radius * self._supports[keys[0]].size
                points = blend(points, others, radius)
                if len(others) >= 2 and cfg.agree_score_weight > 0:  # one other answer (2 supports): no majority
                    factor = 1 - cfg.agree_score_weight + cfg.agree_score_weight * agreement(points, others, radius)
                    scores = lower(scores, factor, cfg.verify_score_floor)
        if cfg.cycle_weight > 0:
            scores = self._cycle(image, names, points, scores, source)
        return KeypointPrediction(names, points, scores, time.perf_counter() - t0)

    def _cycle(self, image: np.ndarray, names: list[str], points: np.ndarray, scores: np.ndarray, source: str) -> np.ndarray:
        """Scores (K,) lowered where the answer (points (K, 2) px in ``names`` order) does not lead back to the
        keypoints of support ``source`` (kp_model.cycle), but not below ``verify_score_floor``."""
        support = self._supports[source]
        errors = cycle_errors(
            support.predictor, image, points, names, decode_image(support.image), support.keypoints, support.names, support.size
        )
        return lower(scores, cycle_factor(errors, self.cfg.cycle_sigma, self.cfg.cycle_weight), self.cfg.verify_score_floor)

    def _vote(
        self, answer: Callable[[str], KeypointPrediction], points: np.ndarray, scores: np.ndarray, keys: list[str]
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """The nearest support's answer (points (K, 2) px, scores (K,)) checked by the next two (``keys``, nearest
        first; ``answer(key)``: that support's answer in the fused keypoint order): the 2nd is always asked; only
        when it disagrees is the 3rd, and when the 3rd agrees with the 2nd and not with the nearest, the better
        scored of the two replaces the answer. Scores x ``disagree_factor`` whenever the 2nd disagreed. Returns
        points, scores and the key of the support they came from."""
        size = self._supports[keys[0]].size
        second = answer(keys[1])
        if pose_distance(points, second.points) <= self.cfg.vote_agree * size:
            return points, scores, keys[0]
        factor = self.cfg.disagree_factor
        if self._twins(keys[1], keys[2], size):  # one support's say twice: no majority against the nearest (not asked)
            return points, scores * factor, keys[0]
        third = answer(keys[2])
        if pose_distance(second.points, third.points) <= self.cfg.vote_agree * size < pose_distance(points, third.points):
            key, best = (keys[1], second) if second.score >= third.score else (keys[2], third)
            return best.points, best.scores * factor, key
        return points, scores * factor, keys[0]

    def _verify(
        self,
        answer: Callable[[str], KeypointPrediction],
        grey: np.ndarray,
        names: list[str],
        points: np.ndarray,
        scores: np.ndarray,
        source: str,
        keys: list[str],
    ) -> tuple[np.ndarray, np.ndarray, str, float]:
        """The appearance check of the answer (points (K, 2) px in ``names`` order, scores (K,)) from support
        ``source``, against that support (kp_model.appearance; ``grey``: the query's ``smooth_grey``). Below
        ``verify_below``, every support of ``keys`` (the nearest ``verify_supports``) answers and the one whose answer
        correlates best with its own support replaces it when better by ``verify_margin``, or better at all when the
        answer of another of them (not the one checked) agrees with it (``backed``). Returns points, scores, the key
        of the support they came from and their correlation with it (nan when it cannot be told)."""
        cfg = self.cfg
        best = self._correlation(source, grey, points, names)
        if best < cfg.verify_below:
            incumbent = best
            for key in keys[: cfg.verify_supports]:
                if key == source:
                    continue
                pred = answer(key)
                ncc = self._correlation(key, grey, pred.points, names)
                if ncc > best and (ncc > incumbent + cfg.verify_margin or self._backed(answer, key, keys, source)):
                    best, points, scores, source = ncc, pred.points, pred.scores, key
        return points, scores, source, best

    def _backed(self, answer: Callable[[str], KeypointPrediction], key: str, keys: list[str], source: str) -> bool:
        """True when the answer of another of the nearest ``verify_supports`` supports (``keys``; neither ``key`` nor
        ``source``, the answer it would replace) agrees with ``key``'s answer: mean keypoint distance <= ``vote_agree``
        x the nearest support's size. A correlation a little better than the checked answer's is not enough alone:
        with supports far apart (5 in a video), a wrong answer can look like its own support as well as a right one."""
        size = self._supports[keys[0]].size
        others = [k for k in keys[: self.cfg.verify_supports] if k not in (key, source) and not self._twins(k, key, size)]
        return any(pose_distance(answer(key).points, answer(k).points) <= self.cfg.vote_agree * size for k in others)

    def _twins(self, a: str, b: str, size: float) -> bool:
        """True when supports ``a`` and ``b`` are twins: their labelled poses (px, each in its own image, over the
        names both have) lie within ``twin_radius`` x ``size`` px of each other (mean keypoint distance)."""
        if self.cfg.twin_radius <= 0:
            return False
        sa, sb = self._supports[a], self._supports[b]
        common = [n for n in sa.names if n in sb.names]
        if not common:
            return False
        pa = sa.keypoints[[sa.names.index(n) for n in common]]
        pb = sb.keypoints[[sb.names.index(n) for n in common]]
        return pose_distance(pa, pb) <= self.cfg.twin_radius * size

    def _correlation(self, key: str, grey: np.ndarray, points: np.ndarray, names: list[str]) -> float:
        """kp_model.appearance.appearance_score of an answer (points (K, 2) px in ``names`` order) against support
        ``key``'s region."""
        support = self._supports[key]
        own = np.array([points[names.index(n)] for n in support.names])
        return appearance_score(support.appearance, grey, own)
