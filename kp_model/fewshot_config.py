"""The few-shot predictor's settings (kp_model.fewshot.FewShotPredictor): how many supports, how a query's
answering support is chosen and checked (vote, appearance check, blend, cycle check, reliability), and how scores
are lowered. Each field says why it has its value and on which frames or folders it was chosen."""

from __future__ import annotations

from dataclasses import dataclass

from kp_model.config import JsonConfig
from kp_model.fusion import FUSIONS


@dataclass(frozen=True)
class FewShotConfig(JsonConfig):
    max_supports: int = 50  # supports kept per predictor; beyond, the first added leave first
    shortlist: int = 1  # supports matched per query, the nearest by global descriptor (the per-query cost; more measured worse)
    agree_radius: float = 0.1  # answers of a keypoint closer than this x the object's size (px) agree
    similarity_temperature: float = 0.05  # weight of a support's answer: exp((sim - best sim) / T) x its score
    fusion: str = "agree"  # "agree": per keypoint, the answer most weight agrees on; "best": the whole answer of the
    # support with the highest weighted mean score (its pose kept intact); both score a keypoint by agreement
    instance_supports: int = 4  # individuals: at most this many supports of the nearest image (its individuals) search
    vote: bool = True  # shortlist 1, 3+ supports: the 2nd and 3rd nearest replace the nearest's pose when both disagree
    # with it and agree with each other (fixed head/tail flips: issue 11, chosen on the mouse video's first half)
    vote_agree: float = 0.1  # two poses agree when their mean keypoint distance is <= this x the support's size (the
    # vote; and the check: an answer replaces the checked one only when another support's answer agrees with it)
    twin_radius: float = 0.2  # two supports whose labelled poses lie within this x the nearest support's size of each
    # other (px, in their own images: in a fixed-camera video, the animal at the same place in the same pose) are
    # twins: their answers agreeing is one support's say, so twins neither vote together nor back each other (0 =
    # off). Two adjacent frames, twins, gave the same flip and overturned right answers (issue 12, random order at
    # k = 10). Chosen among 0.1-0.3 on the mouse video's first half of frames (the loop bench's supports, both
    # orders, k = 5-20): 0.2 and 0.3 tied, the smaller kept
    disagree_factor: float = 1.0  # scores x this when the 2nd nearest's pose disagrees with the answer; 0.5 ranked the
    # errors worse in `kpassist bench fewshot` (mouse AUROC 0.72 -> 0.63 at k = 5), so it is off by default
    verify_supports: int = 6  # shortlist 1, the nearest's scene: supports whose answers compete when the answer fails
    # the appearance check (1 = no check; chosen on the mouse video's first half of frames: more found more flips)
    verify_scene: float = 0.8  # the check replaces answers (and the blend runs) when the nearest support's global
    # similarity is at least this (the same scene: a fixed-camera video); other individuals differ in grey level, so
    # there it only scores: an answer that does not look like its support ranks low in any project
    verify_below: float = 0.9  # the answer fails the check when its correlation with its support is below this
    verify_margin: float = 0.2  # another support's answer replaces it when its correlation is higher by this much, or
    # higher at all when a third support's answer backs it (agrees within vote_agree). Chosen on the mouse video's
    # first half of frames: the margin rule alone (0.7, 0.2) missed flips at k = 20; the backed rule alone (0.9, margin
    # 0 for both) lost the margin's replacements where no third support can back (few supports)
    verify_score_power: float = 2.0  # checked answers' scores x their correlation (floored at 0) to this power, one
    # support or many, in any scene: flips and other individuals' poorly matched answers rank low (0: scores as the
    # engine gives them; outside the scene too since the pooled ranking of issue 11, same power). Chosen on the
    # mouse's first half of frames: the correlation ranks bad tasks better than the engine's scores at k = 1-2, the
    # product at k = 20; 4 ranked a little better but pushed some right answers under KPASSIST_SCORE_THRESHOLD at
    # k = 1 (their points left out)
    verify_score_floor: float = 0.05  # the check and the agreement (agree_score_weight) lower a score to this at most
    # (KPASSIST_SCORE_THRESHOLD's default): a keypoint the engine would show is not hidden by them
    blend_supports: int = 4  # shortlist 1, the nearest's scene: each keypoint is averaged with the answers, among
    # those of the blend_supports nearest supports, that fall within blend_radius of it (1 = off; chosen on the mouse's
    # first half of frames among 3-6 supports and radii 0.2-0.4)
    blend_radius: float = 0.3  # x the nearest support's size: farther answers of a keypoint are other guesses, not noise
    agree_score_weight: float = 0.4  # with the blend and 3+ supports: a keypoint's score x (1 - w + w x how much the
    # blend's other answers agree with it: mean exp(-(d / blend_radius x size)^2)), so a point the next nearest frames
    # place elsewhere ranks low (0 = off). Chosen on the mouse video's first half of frames among 0.2-0.6 (AUROC of
    # the task score, mean over k = 1-20, with the check of then: 0.82 -> 0.85 there, 0.77 -> 0.84 on the second half)
    cycle_weight: float = 0.8  # each keypoint's score x (1 - w + w x exp(-(e / cycle_sigma)^2)), e the distance back
    # to its support's keypoint when the answer is matched back onto the support it came from (kp_model.cycle; one
    # more match per query; 0 = off). Chosen on the mouse video's first half of frames among 0.5-1.0 and sigmas
    # 0.05-0.3, with the score floor (AUROC of the task score, mean over k = 1, 2, 5, 10: 0.79 -> 0.86 there, 0.80 ->
    # 0.88 on the second half)
    cycle_sigma: float = 0.1  # x the support's size: a keypoint found back farther than this is likely wrong
    reliability_weight: float = 1.0  # outside the nearest support's scene (another individual), 2+ supports: supports
    # are ranked by thumbnail similarity + this x their reliability (the share of keypoints their answers put within
    # RELIABLE_WITHIN x the support's size of the labels of other labelled images of other scenes: leave-one-out on the
    # project's own labels), so a support that finds other individuals well answers (0 = the thumbnail alone). Chosen
    # on the tuning half of the folders (`kpassist bench fewshot`, k = 2 over every pair): 1 gained +0.073 PCK@0.2 over
    # one image alone there, the thumbnail alone +0.066; the other half +0.022, the thumbnail alone -0.018
    reliability_images: int = 3  # each support's reliability is read on at most this many other labelled images (the
    # first added): its cost, one match each, paid once per pair of supports
    reliability_candidates: int = 3  # the nearest supports by thumbnail that compete by reliability (the rest keep
    # their order): read when first a candidate, so a project of 50 supports pays reliability_images matches per
    # candidate once, not for every support at once (k = 2, the measured case: both compete)

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.max_supports < 1:
            raise ValueError(f"max_supports must be >= 1, got {self.max_supports}")
        if self.shortlist < 1:
            raise ValueError(f"shortlist must be >= 1, got {self.shortlist}")
        if self.instance_supports < 1:
            raise ValueError(f"instance_supports must be >= 1, got {self.instance_supports}")
        if self.agree_radius <= 0:
            raise ValueError(f"agree_radius must be > 0, got {self.agree_radius}")
        if self.similarity_temperature <= 0:
            raise ValueError(f"similarity_temperature must be > 0, got {self.similarity_temperature}")
        if self.vote_agree <= 0:
            raise ValueError(f"vote_agree must be > 0, got {self.vote_agree}")
        if self.twin_radius < 0:
            raise ValueError(f"twin_radius must be >= 0, got {self.twin_radius}")
        if not 0 <= self.disagree_factor <= 1:
            raise ValueError(f"disagree_factor must be in [0, 1], got {self.disagree_factor}")
        if self.verify_supports < 1:
            raise ValueError(f"verify_supports must be >= 1, got {self.verify_supports}")
        if not -1 <= self.verify_scene <= 1:
            raise ValueError(f"verify_scene must be in [-1, 1], got {self.verify_scene}")
        if not -1 <= self.verify_below <= 1:
            raise ValueError(f"verify_below must be in [-1, 1], got {self.verify_below}")
        if self.verify_margin < 0:
            raise ValueError(f"verify_margin must be >= 0, got {self.verify_margin}")
        if self.verify_score_power < 0:
            raise ValueError(f"verify_score_power must be >= 0, got {self.verify_score_power}")
        if not 0 <= self.verify_score_floor <= 1:
            raise ValueError(f"verify_score_floor must be in [0, 1], got {self.verify_score_floor}")
        if self.blend_supports < 1:
            raise ValueError(f"blend_supports must be >= 1, got {self.blend_supports}")
        if self.blend_radius <= 0:
            raise ValueError(f"blend_radius must be > 0, got {self.blend_radius}")
        if not 0 <= self.agree_score_weight <= 1:
            raise ValueError(f"agree_score_weight must be in [0, 1], got {self.agree_score_weight}")
        if not 0 <= self.cycle_weight <= 1:
            raise ValueError(f"cycle_weight must be in [0, 1], got {self.cycle_weight}")
        if self.cycle_sigma <= 0:
            raise ValueError(f"cycle_sigma must be > 0, got {self.cycle_sigma}")
        if self.reliability_weight < 0:
            raise ValueError(f"reliability_weight must be >= 0, got {self.reliability_weight}")
        if self.reliability_images < 1:
            raise ValueError(f"reliability_images must be >= 1, got {self.reliability_images}")
        if self.reliability_candidates < 2:
            raise ValueError(f"reliability_candidates must be >= 2, got {self.reliability_candidates}")
