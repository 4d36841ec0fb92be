import numpy as np

from backend.suggest import Candidate, choose, task_score


def test_low_scores_first_then_different_looking_images() -> None:
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    low, low_same_look, higher_other_look = Candidate(1, 0.2, a), Candidate(2, 0.3, a), Candidate(3, 0.5, b)
    # after task 1: task 2 gains 0.7 x (1 - 1) = 0, task 3 gains 0.5 x (1 - 0) = 0.5
    assert [c.task_id for c in choose([low_same_look, higher_other_look, low], 3)] == [1, 3, 2]
    assert [c.task_id for c in choose([low_same_look, higher_other_look, low], 1)] == [1]


def test_task_score_is_the_newest_prediction_of_the_version() -> None:
    task = {
        "predictions": [
            {"id": 1, "score": 0.9, "model_version": "v1", "created_at": "2026-01-01T00:00:00Z"},
            {"id": 2, "score": 0.4, "model_version": "v2", "created_at": "2026-01-02T00:00:00Z"},
        ]
    }
    assert task_score(task) == 0.4 and task_score(task, "v1") == 0.9 and task_score({}, "v1") == 0.0
