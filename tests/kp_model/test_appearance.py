"""The appearance check: a support's region warped onto an answer by the similarity of their keypoints."""

from __future__ import annotations

import numpy as np

from kp_model.appearance import appearance_score, similarity_fit, smooth_grey, support_appearance

HEAD, TAIL = (30, 40), (80, 40)


def test_similarity_fit_recovers_a_known_transform() -> None:
    src = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 5.0]])
    # rotated 90 degrees counter-clockwise (x -> y, y -> -x), scaled 2, moved by (3, 4): worked out by hand
    dst = np.array([[3.0, 4.0], [3.0, 24.0], [-7.0, 4.0]])
    a, t = similarity_fit(src, dst)
    np.testing.assert_allclose(a, [[0.0, -2.0], [2.0, 0.0]], atol=1e-9)
    np.testing.assert_allclose(t, [3.0, 4.0], atol=1e-9)


def test_an_answer_on_the_moved_animal_correlates_and_a_flipped_one_does_not(animal_image) -> None:
    support = support_appearance(animal_image(HEAD, TAIL), np.array([HEAD, TAIL], float))
    grey = smooth_grey(animal_image((HEAD[0] + 8, HEAD[1]), (TAIL[0] + 8, TAIL[1]), shift=8))
    right = appearance_score(support, grey, np.array([[HEAD[0] + 8, HEAD[1]], [TAIL[0] + 8, TAIL[1]]], float))
    flipped = appearance_score(support, grey, np.array([[TAIL[0] + 8, TAIL[1]], [HEAD[0] + 8, HEAD[1]]], float))
    assert right > 0.95 and flipped < 0.5


def test_no_score_without_two_distinct_answered_keypoints(animal_image) -> None:
    support = support_appearance(animal_image(HEAD, TAIL), np.array([HEAD, TAIL], float))
    grey = smooth_grey(animal_image(HEAD, TAIL))
    assert np.isnan(appearance_score(support, grey, np.array([[30.0, 40.0], [np.nan, np.nan]])))
    assert np.isnan(appearance_score(support, grey, np.array([[30.0, 40.0], [30.0, 40.0]])))
    assert appearance_score(support, grey, np.array([HEAD, TAIL], float)) > 0.99  # resampled, so not exactly 1
