import numpy as np
import pytest

from backend.label_config import KeypointControl
from backend.support import SupportCache, SupportRef, select_supports
from kp_model.build import PredictorConfig, build_predictor
from kp_model.images import ImageLoadError

CONTROL = KeypointControl("kp", "image", "image", ("a", "b", "c"))


def ann(aid: int, updated: str, labels: list[str], cancelled: bool = False) -> dict:
    result = [
        {
            "from_name": "kp",
            "to_name": "image",
            "type": "keypointlabels",
            "value": {"x": 10.0 + i, "y": 20.0, "keypointlabels": [lab]},
        }
        for i, lab in enumerate(labels)
    ]
    return {"id": aid, "updated_at": updated, "result": result, "was_cancelled": cancelled}


def test_most_recently_updated_overlapping_annotation_wins() -> None:
    tasks = [
        {"id": 1, "data": {"image": "/data/upload/1/a.png"}, "annotations": [ann(10, "2026-01-01T10:00:00Z", ["a", "b"])]},
        {
            "id": 2,
            "data": {"image": "/data/upload/1/b.png"},
            "annotations": [
                ann(11, "2026-01-03T10:00:00Z", ["zzz"]),  # no label of the config
                ann(12, "2026-01-04T10:00:00Z", ["a"], cancelled=True),  # skipped
                ann(13, "2026-01-02T10:00:00.123456Z", ["c"]),
            ],
        },
    ]
    [ref] = select_supports(tasks, CONTROL)
    assert ref.annotation_id == 13 and ref.task_id == 2
    assert ref.image_ref == "/data/upload/1/b.png" and ref.names == ("c",)


def test_mixed_or_missing_timestamps_compare() -> None:
    tasks = [
        {
            "id": 1,
            "data": {"image": "a"},
            "annotations": [
                ann(1, "", ["a"]),
                ann(2, "2026-01-01T10:00:00", ["a"]),
                ann(3, "2026-01-01T09:00:00+00:00", ["b"]),
                ann(4, "garbage", ["c"]),
            ],
        }
    ]
    assert [r.annotation_id for r in select_supports(tasks, CONTROL)] == [2]


def test_no_annotation_means_no_support() -> None:
    assert select_supports([{"id": 1, "data": {"image": "x"}, "annotations": []}], CONTROL) == []
    assert select_supports([], CONTROL) == []


def test_cache_rebuilds_only_when_the_annotation_changes(blob_image) -> None:
    image, pts = blob_image()
    h, w = image.shape[:2]
    pct = tuple((float(x) * 100 / w, float(y) * 100 / h) for x, y in pts)
    loads = []

    def load(ref: str) -> np.ndarray:
        loads.append(ref)
        return image

    cache = SupportCache()

    def make():
        return build_predictor(PredictorConfig())

    ref = SupportRef(5, "t1", 1, "img", ("a", "b", "c"), pct)
    first = cache.get(1, CONTROL, [ref], load, make, "e1")
    assert cache.get(1, CONTROL, [ref], load, make, "e1") is first and cache.builds == 1
    changed = SupportRef(5, "t2", 1, "img", ("a", "b", "c"), pct)
    assert cache.get(1, CONTROL, [changed], load, make, "e1") is not first and cache.builds == 2
    cache.get(1, CONTROL, [changed], load, make, "e2")  # a newly promoted model: the support is rebuilt with it
    assert cache.builds == 3 and len(loads) == 3


def test_cache_is_bounded_least_recently_used_first(blob_image) -> None:
    image, pts = blob_image()
    pct = tuple((float(x) * 100 / 160, float(y) * 100 / 120) for x, y in pts)
    cache = SupportCache(max_items=2)

    def get(project: int) -> object:
        ref = SupportRef(project, "t", 1, "img", ("a", "b", "c"), pct)
        return cache.get(project, CONTROL, [ref], lambda r: image, lambda: build_predictor(PredictorConfig()), "e")

    get(1), get(2), get(1), get(3)  # 2 is the least recently used when 3 arrives
    assert len(cache) == 2 and cache.builds == 3
    get(1)
    assert cache.builds == 3  # still cached
    get(2)
    assert cache.builds == 4  # was dropped


def test_cache_is_bounded_in_bytes_too(blob_image) -> None:
    image, pts = blob_image()
    pct = tuple((float(x) * 100 / 160, float(y) * 100 / 120) for x, y in pts)
    cache = SupportCache(max_items=10, max_bytes=1)  # smaller than any support: only the newest stays

    def get(project: int) -> object:
        ref = SupportRef(project, "t", 1, "img", ("a", "b", "c"), pct)
        return cache.get(project, CONTROL, [ref], lambda r: image, lambda: build_predictor(PredictorConfig()), "e")

    get(1), get(2)
    assert len(cache) == 1 and cache.nbytes > 1  # the newest is kept even over the cap
    get(2)
    assert cache.builds == 2
    get(1)
    assert cache.builds == 3  # was dropped for its bytes


def test_supports_follow_the_annotations_incrementally(blob_image) -> None:
    """A new annotation adds one support, a deleted one leaves, the others are not recomputed; a request holding the
    old predictor keeps its set."""
    image, pts = blob_image()
    pct = tuple((float(x) * 100 / 160, float(y) * 100 / 120) for x, y in pts)
    cache = SupportCache()
    a, b = (SupportRef(i, "t", i, "img", ("a", "b", "c"), pct) for i in (1, 2))

    def get(refs: list[SupportRef]):
        return cache.get(1, CONTROL, refs, lambda r: image, lambda: build_predictor(PredictorConfig()), "e")

    first = get([a])
    both = get([b, a])
    assert cache.builds == 2 and both.predictor.support_keys == ["1@t", "2@t"] and both.ref == b  # oldest first
    only_b = get([b])
    assert cache.builds == 2 and only_b.predictor.support_keys == ["2@t"]
    assert first.predictor.support_keys == ["1@t"] and both.predictor.support_keys == ["1@t", "2@t"]


def test_an_unusable_support_is_left_out(blob_image) -> None:
    image, pts = blob_image()
    pct = tuple((float(x) * 100 / 160, float(y) * 100 / 120) for x, y in pts)
    good, bad = SupportRef(1, "t", 1, "ok", ("a", "b", "c"), pct), SupportRef(2, "t", 2, "gone", ("a", "b", "c"), pct)

    def load(ref: str) -> np.ndarray:
        if ref == "gone":
            raise ImageLoadError("gone: 404")
        return image

    cache = SupportCache()
    cached = cache.get(1, CONTROL, [bad, good], load, lambda: build_predictor(PredictorConfig()), "e")
    assert cached.refs == (good,)
    with pytest.raises(ImageLoadError):
        cache.get(2, CONTROL, [bad], load, lambda: build_predictor(PredictorConfig()), "e")


def test_every_individual_of_the_newest_annotation_is_a_support(caplog) -> None:
    boxed = KeypointControl("kp", "image", "image", ("a", "b", "c"), "box", ("mouse",))

    def kp(label: str, x: float, parent: str) -> dict:
        value = {"x": x, "y": 20.0, "keypointlabels": [label]}
        return {"id": f"{label}{parent}", "from_name": "kp", "type": "keypointlabels", "value": value, "parentID": parent}

    boxes = [
        {
            "id": p,
            "from_name": "box",
            "type": "rectanglelabels",
            "value": {"x": 0, "y": 0, "width": 50, "height": 50, "rectanglelabels": ["mouse"]},
        }
        for p in ("m1", "m2")
    ]
    newest = {
        "id": 7,
        "updated_at": "2026-01-02T00:00:00Z",
        "result": [*boxes, kp("a", 10, "m1"), kp("b", 12, "m1"), kp("a", 60, "m2"), kp("c", 5, "nobox")],
    }
    older = {"id": 6, "updated_at": "2026-01-01T00:00:00Z", "result": [kp("a", 1, "m1")]}
    tasks = [{"id": 3, "data": {"image": "img.png"}, "annotations": [older, newest]}]
    with caplog.at_level("WARNING"):
        refs = select_supports(tasks, boxed)
    assert [(r.annotation_id, r.instance, r.names, r.box_label) for r in refs] == [
        (7, 0, ("a", "b"), "mouse"),
        (7, 1, ("a",), "mouse"),
    ]
    assert refs[0].xy_percent == ((10.0, 20.0), (12.0, 20.0)) and refs[1].xy_percent == ((60.0, 20.0),)
    assert len({r.key for r in refs}) == 2  # each its own cache key and model version part
    assert "'nobox' names no box" in caplog.text and "task 3" in caplog.text  # the orphan keypoint is reported
