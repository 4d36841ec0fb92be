import numpy as np
import pytest

from kp_model.build import PredictorConfig, build_predictor
from kp_model.mirror import mirror_permutation, mirrored_name
from kp_model.oneshot.matcher import OneShotConfig


@pytest.mark.parametrize(
    "name, other",
    [
        ("left_eye", "right_eye"),
        ("Right_Shoulder", "Left_Shoulder"),
        ("leftear", "rightear"),
        ("L_F_Paw", "R_F_Paw"),
        ("eyeL", "eyeR"),
        ("forelegR1", "forelegL1"),
        ("l_wrist", "r_wrist"),
        ("left collar", "right collar"),
        ("nose", "nose"),
        ("Nearknee", "Nearknee"),
        ("kpt-3", "kpt-3"),
        ("jaw_1", "jaw_1"),
        ("TailBase", "TailBase"),
    ],
)
def test_mirrored_names(name: str, other: str) -> None:
    assert mirrored_name(name) == other


def test_permutation_only_when_pairs_exist() -> None:
    assert mirror_permutation(["snout", "leftear", "rightear", "tailbase"]).tolist() == [0, 2, 1, 3]
    assert mirror_permutation(["left_eye", "nose"]) is None  # partner absent
    assert mirror_permutation(["jaw_1", "jaw_2"]) is None


def test_a_mirrored_individual_gets_swapped_labels(blob_image) -> None:
    support, pts = blob_image(width=200, height=150, centre=(80, 70))
    query = np.ascontiguousarray(support[:, ::-1])  # the same object, facing the other way
    names = ["nose", "left_ear", "right_ear"]
    cfg = PredictorConfig(oneshot=OneShotConfig(same_scene_threshold=1.01), mirror=True)  # query: another scene
    predictor = build_predictor(cfg)
    predictor.set_support(support, pts, names)
    [pred] = predictor.predict([query])
    flipped = pts.copy()
    flipped[:, 0] = 199 - flipped[:, 0]
    expected = flipped[[0, 2, 1]]  # the left ear of a mirrored individual sits where the right one was, flipped
    assert np.linalg.norm(pred.points - expected, axis=1).max() < 8.0, (pred.points, expected)
