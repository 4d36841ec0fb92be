"""One-shot evaluation on COCO keypoint folders: support from one image, predict the others.

Protocol ("first"): for each category of a folder the support is the first image's instance with the
most visible keypoints (ties: larger bbox); every other image of the category is a query, predicted
on the whole image. Images can hold several instances (people), so a prediction is scored against the
ground-truth instance it matches best. Only keypoints visible in the support and in that instance count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kp_model.coco import Instance, Sample, load_coco_keypoints
from kp_model.evaluation import metrics
from kp_model.images import load_image_rgb

log = logging.getLogger(__name__)

# (support image, support keypoints (K, 2) px, keypoint names (K), query image) -> predicted (K, 2) px in the query
Engine = Callable[[np.ndarray, np.ndarray, list[str], np.ndarray], np.ndarray]


@dataclass
class PairResult:
    dataset: str
    category: str
    support: str
    query: str
    errors: np.ndarray  # (n,) normalised errors of the counted keypoints
    seconds: float


def copy_engine(support: np.ndarray, keypoints: np.ndarray, names: list[str], query: np.ndarray) -> np.ndarray:
    """Baseline: the support's coordinates, in percent of the image, copied onto the query."""
    sh, sw = support.shape[:2]
    qh, qw = query.shape[:2]
    return keypoints * np.array([qw / sw, qh / sh])


def support_instance(sample: Sample) -> Instance:
    return max(sample.instances, key=lambda i: (int(i.visible.sum()), i.box[2] * i.box[3]))


PROTOCOLS = ("first", "all-pairs")


def spread(items: list, n: int | None) -> list:
    """At most n items evenly spread over ``items`` (all when n is None or larger)."""
    if n is None or len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / max(1, n - 1))] for i in range(n)] if n > 1 else items[:1]


def one_shot_pairs(
    samples: list[Sample], max_queries: int | None = None, protocol: str = "first", max_supports: int = 5
) -> Iterator[tuple[Sample, Sample]]:
    """(support, query) pairs per category.

    "first": the first image is the support of every other (at most ``max_queries``, the first ones).
    "all-pairs": each image in turn is the support of every other; categories with more than ``max_supports``
    images use that many evenly spread supports, each with at most ``max_queries`` evenly spread queries.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    by_cat: dict[str, list[Sample]] = {}
    for s in samples:
        by_cat.setdefault(s.category, []).append(s)
    for group in by_cat.values():
        if protocol == "first":
            queries = group[1:] if max_queries is None else group[1 : 1 + max_queries]
            for q in queries:
                yield group[0], q
            continue
        for sup in spread(group, max_supports):
            for q in spread([g for g in group if g is not sup], max_queries):
                yield sup, q


def best_instance(pred: np.ndarray, mask: np.ndarray, query: Sample) -> tuple[Instance, np.ndarray] | None:
    """The query instance the prediction matches best (lowest mean normalised error, each capped at 1) and
    the normalised errors of the keypoints that count (``mask`` and visible); None when none counts."""
    best = None
    for inst in query.instances:
        m = mask & inst.visible
        if not m.any():
            continue
        err = metrics.normalised_errors(pred[m], inst.keypoints[m, :2], inst.box)
        key = float(np.mean(np.minimum(err, 1.0)))
        if best is None or key < best[0]:
            best = (key, inst, err)
    return None if best is None else (best[1], best[2])


def best_instance_errors(pred: np.ndarray, mask: np.ndarray, query: Sample) -> np.ndarray:
    """Normalised errors against the query instance that the prediction matches best (see best_instance)."""
    found = best_instance(pred, mask, query)
    return np.zeros(0) if found is None else found[1]


def evaluate_pairs(
    pairs: Iterable[tuple[Sample, Sample]], engines: dict[str, Engine], dataset: str = ""
) -> dict[str, list[PairResult]]:
    """Each engine on each (support, query) pair: the support instance's visible keypoints are the prompt, and the
    prediction is scored against the query instance it matches best (``best_instance``)."""
    results: dict[str, list[PairResult]] = {name: [] for name in engines}
    cache: dict[Path, np.ndarray] = {}

    def image(path: Path) -> np.ndarray:
        if path not in cache:
            if len(cache) > 8:  # bounded: a folder can hold thousands of images
                cache.clear()
            cache[path] = load_image_rgb(path)
        return cache[path]

    for sup, qry in pairs:
        inst = support_instance(sup)
        mask = inst.visible
        s_img, q_img = image(sup.image_path), image(qry.image_path)
        names = [n for n, m in zip(sup.keypoint_names, mask, strict=True) if m]
        for name, engine in engines.items():
            t0 = time.perf_counter()
            pred = np.full((len(mask), 2), np.nan)
            pred[mask] = engine(s_img, inst.keypoints[mask, :2], names, q_img)
            dt = time.perf_counter() - t0
            errors = best_instance_errors(pred, mask, qry)
            results[name].append(PairResult(dataset, sup.category, sup.image_path.name, qry.image_path.name, errors, dt))
    return results


def evaluate_folder(
    folder: Path, engines: dict[str, Engine], max_queries: int | None = None, protocol: str = "first", max_supports: int = 5
) -> dict[str, list[PairResult]]:
    """``evaluate_pairs`` on the pairs of ``protocol`` (see ``one_shot_pairs``) of a COCO keypoint folder."""
    pairs = one_shot_pairs(load_coco_keypoints(folder), max_queries, protocol, max_supports)
    return evaluate_pairs(pairs, engines, folder.name)


def summarise(pairs: list[PairResult]) -> dict[str, float]:
    """``metrics.summarise`` of the pairs' errors, with the number of pairs and the mean seconds per pair."""
    out = metrics.summarise([p.errors for p in pairs])
    out["pairs"] = len(pairs)
    out["seconds_per_pair"] = float(np.mean([p.seconds for p in pairs])) if pairs else float("nan")
    return out
