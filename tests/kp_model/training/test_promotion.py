"""The promotion rule on fixed cases (kp_model.training.promotion.decide)."""

from __future__ import annotations

import pytest

from kp_model.training.promotion import Paired, PromotionRule, decide, sign_test

NAN = float("nan")
RULE = PromotionRule(min_images=3, margin=0.02)


def held(*pairs: tuple[float, float]) -> list[Paired]:
    return [Paired(f"h{i}", "heldout", c, s) for i, (c, s) in enumerate(pairs)]


def fresh(*pairs: tuple[float, float]) -> list[Paired]:
    return [Paired(f"p{i}", "prequential", c, s) for i, (c, s) in enumerate(pairs)]


def test_issue_12_regression_one_tied_image_is_not_evidence() -> None:
    """v0001 was served on ONE held-out image where both scored PCK 0.0 (the mean error broke the tie) although the
    candidate was much worse everywhere else: one image, and a tie, decide nothing now."""
    promote, reason = decide(held((0.0, 0.0)), RULE)
    assert not promote and "not enough evidence" in reason and "1 image(s)" in reason


@pytest.mark.parametrize(
    "evidence, expected",
    [
        (held(*[(1.0, 0.75)] * 5), True),  # better on 5 images of 5: sign test p = 1/32
        (held((1.0, 0.75), (1.0, 0.75), (0.75, 0.5)), False),  # better on 3 of 3: p = 1/8, not significant
        # bench loop's case: 3 won, 10 tied, none lost gave a version 0.09 worse on the frames not labelled yet
        (held(*[(1.0, 0.75)] * 3, *[(1.0, 1.0)] * 10), False),
        (held((1.0, 1.0), (1.0, 1.0), (1.0, 1.0)), False),  # a tie everywhere: not evidence
        (held((1.0, 0.0), (0.0, 0.25), (0.0, 0.25)), False),  # a big gain on one image, lost on the others
        (held((0.75, 0.5), (1.0, 0.75)) + fresh((1.0, 0.5), (0.75, 0.5), (1.0, 0.75)), True),  # sources add up
        (held((0.5, 0.75)) + fresh((1.0, 0.5), (1.0, 0.5), (1.0, 0.5)), False),  # behind on held-out: never served
        (held((NAN, 0.5), (1.0, NAN)) + fresh((1.0, 0.5)), False),  # NaN rows are no evidence: 1 valid image
        (fresh(*[(1.0, 0.5)] * 5), True),  # no held-out image yet: the prequential evidence decides
        (held(*[(1.0, 0.5)] * 6, (0.5, 0.75)), False),  # 6 won, 1 lost: p = 8/128 > 0.05
        (held(*[(1.0, 0.5)] * 7, (0.5, 0.75)), True),  # 7 won, 1 lost: p = 9/256
        ([], False),
    ],
)
def test_fixed_cases(evidence: list[Paired], expected: bool) -> None:
    assert decide(evidence, RULE)[0] is expected


def test_sign_test_values() -> None:
    assert sign_test(3, 0) == 1 / 8 and sign_test(5, 0) == 1 / 32 and sign_test(0, 0) == 1.0
    assert sign_test(6, 1) == pytest.approx(8 / 128)  # P(X >= 6 | n = 7) = (7 + 1) / 128


def test_bad_rule_and_source_are_refused() -> None:
    with pytest.raises(ValueError, match="min_images"):
        PromotionRule(min_images=0)
    with pytest.raises(ValueError, match="margin"):
        PromotionRule(margin=2)
    with pytest.raises(ValueError, match="source"):
        Paired("x", "guess", 1.0, 0.0)
