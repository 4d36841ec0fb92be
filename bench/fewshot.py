"""Few-shot supports without training: for k = 1, 2, 5, 10, 20 labelled images evenly spread over each folder (as
many as it allows, one image at least left to predict), PCK and mean error on the images not labelled, with the
default engine behind kp_model.fewshot; beside copying the nearest labelled image's keypoints and today's one-shot
engine (the first image as the only support; at k > 1 on the same queries too, ``first_only``: what the k - 1 other
labels add, image for image). Folders of 3 to 19 images (categories, not videos) also get ``every_pair``: k = 2 over
every pair of their images, on each other image, against each image of the pair alone on the same query (one spread
draw is one arbitrary pair and 1-3 queries). Scores: does a low task score find the bad predictions (AUROC for
PCK@0.2 < 0.5) and do point scores rank point errors (Spearman)? Cost: seconds per query and memory against k.

Halves, so that settings chosen on one can be checked on the other: folders at even / odd positions (sorted by name)
and, for video folders, queries in the first / second half of the frames."""

from __future__ import annotations

import functools
import itertools
import logging
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kp_model.build import PredictorConfig, build_predictor
from kp_model.coco import Sample, load_coco_keypoints
from kp_model.evaluation import metrics
from kp_model.evaluation.protocol import best_instance, spread, support_instance
from kp_model.evaluation.ranking import auroc, spearman
from kp_model.fewshot import FewShotConfig, FewShotPredictor, global_descriptor
from kp_model.images import load_image_rgb
from kp_model.interactive import constrain

log = logging.getLogger(__name__)

KS = (1, 2, 5, 10, 20)
VIDEO_MIN_IMAGES = 20  # folders with at least this many images of one category are treated as videos (frame halves)


def _labelled(sample: Sample) -> tuple[np.ndarray, list[str], np.ndarray]:
    inst = support_instance(sample)
    vis = inst.visible
    return inst.keypoints[vis, :2], [n for n, v in zip(sample.keypoint_names, vis, strict=True) if v], vis


def _score(pred_points: np.ndarray, pred_scores: np.ndarray, names: list[str], query: Sample) -> dict | None:
    """Normalised errors and scores of the keypoints that count (predicted and visible in the best-matching instance)."""
    full = np.full((len(query.keypoint_names), 2), np.nan)
    scores = np.zeros(len(query.keypoint_names))
    for name, p, s in zip(names, pred_points, pred_scores, strict=True):
        i = query.keypoint_names.index(name)
        full[i], scores[i] = p, s
    mask = np.isfinite(full).all(axis=1)
    found = best_instance(np.nan_to_num(full), mask, query)
    if found is None:
        return None
    inst, errors = found
    counted = mask & inst.visible
    return {"errors": errors, "scores": scores[counted], "task_score": float(np.mean(scores[mask])) if mask.any() else 0.0}


def _folder(folder: Path, ks: tuple[int, ...], cfg: FewShotConfig, engine: PredictorConfig, max_queries: int | None) -> dict:
    samples = load_coco_keypoints(folder)
    category = max({s.category for s in samples}, key=lambda c: sum(s.category == c for s in samples))
    group = [s for s in samples if s.category == category]
    images: dict[Path, np.ndarray] = {}

    def image(s: Sample) -> np.ndarray:
        if s.image_path not in images:
            images[s.image_path] = load_image_rgb(s.image_path)
        return images[s.image_path]

    video = len(group) >= VIDEO_MIN_IMAGES
    out: dict = {"images": len(group), "category": category, "video": video, "k": {}}
    today = build_predictor(engine)  # today's engine: the first image is the only support
    kps, names, _ = _labelled(group[0])
    today.set_support(image(group[0]), kps, names)
    for k in ks:
        if k >= len(group):
            continue
        labelled = spread(group, k)
        rest = [s for s in group if s not in labelled]
        queries = spread(rest, max_queries)
        predictor = FewShotPredictor(lambda: build_predictor(engine), cfg)
        t0 = time.perf_counter()
        for s in labelled:
            kps, names, _ = _labelled(s)
            predictor.add_support(s.image_path.name, image(s), kps, names)
        support_s = time.perf_counter() - t0
        rows: dict[str, list] = {"fewshot": [], "copy_nearest": [], "today_k1": [], "first_only": []}
        seconds = []
        for q in queries:
            img = image(q)
            t0 = time.perf_counter()
            [pred] = predictor.predict([img])
            seconds.append(time.perf_counter() - t0)
            rows["fewshot"].append(_score(pred.points, pred.scores, pred.names, q))
            if k in (ks[0], 5):
                rows.setdefault("interactive", []).append(_interactive(pred, q))
            nearest = max(labelled, key=lambda s: float(global_descriptor(image(s)) @ global_descriptor(img)))
            kps, names, _ = _labelled(nearest)
            nh, nw = image(nearest).shape[:2]
            copied = kps * np.array([img.shape[1] / nw, img.shape[0] / nh])
            rows["copy_nearest"].append(_score(copied, np.ones(len(names)), names, q))
            if k == ks[0] or k > 1:  # today's engine: the first image alone (at k = 1 the support itself)
                [base] = today.predict([img])
                alone = _score(base.points, base.scores, base.names, q)
                if k == ks[0]:
                    rows["today_k1"].append(alone)
                if k > 1:
                    rows["first_only"].append(alone)
        interactive = [r for r in rows.pop("interactive", []) if r is not None]
        half = len(group) // 2
        first_half = [group.index(q) < half for q in queries]
        entry = {
            "labelled": [s.image_path.name for s in labelled],
            "queries": len(queries),
            "support_seconds": round(support_s, 2),
            "seconds_per_query": float(np.mean(seconds)) if seconds else float("nan"),
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        for name, found in rows.items():
            if not found:
                continue
            entry[name] = metrics.summarise([r["errors"] for r in found if r is not None])
            if video:
                for tag, keep in (("first_half", True), ("second_half", False)):
                    part = [r["errors"] for r, f in zip(found, first_half, strict=True) if r is not None and f == keep]
                    entry[f"{name}_{tag}"] = metrics.summarise(part)
        if interactive:
            entry["interactive_pck@0.2"] = {s: float(np.mean([r[s] for r in interactive])) for s in ("none", "one", "two")}
        entry["ranking"] = _ranking([r for r in rows["fewshot"] if r is not None])
        if rows["today_k1"]:
            entry["ranking_today_k1"] = _ranking([r for r in rows["today_k1"] if r is not None])
        entry["_raw"] = [r for r in rows["fewshot"] if r is not None]
        out["k"][k] = entry
        log.info(
            "%s k=%d: fewshot PCK@0.2 %.3f, copy nearest %.3f (%d queries, %.2f s each)",
            folder.name, k, entry["fewshot"]["pck@0.2"], entry["copy_nearest"]["pck@0.2"], len(queries),
            entry["seconds_per_query"],
        )  # fmt: skip
    if 2 in ks and 3 <= len(group) < VIDEO_MIN_IMAGES:
        out["every_pair"] = _every_pair(group, image, cfg, engine)
    return out


def _every_pair(group: list[Sample], image: Callable[[Sample], np.ndarray], cfg: FewShotConfig, engine: PredictorConfig) -> dict:
    """k = 2 over every pair of ``group``'s images, on every other image, against each image of the pair alone (the
    engine with it as the only support, as ``first_only``) on the same query, and against the better of the two on
    each query (the most a choice between them could give). Each image is described once."""
    alone, labels = [], []
    for s in group:
        kps, names, _ = _labelled(s)
        predictor = build_predictor(engine)
        predictor.set_support(image(s), kps, names)
        alone.append(predictor)
        labels.append((kps, names))

    @functools.cache
    def single(i: int, q: int) -> dict | None:
        [pred] = alone[i].predict([image(group[q])])
        return _score(pred.points, pred.scores, pred.names, group[q])

    fewshot, singles, better = [], [], []
    for a, b in itertools.combinations(range(len(group)), 2):
        pair = FewShotPredictor(None, cfg)
        for i in (a, b):
            pair.add_support(group[i].image_path.name, image(group[i]), *labels[i], described=alone[i])
        for q in (q for q in range(len(group)) if q not in (a, b)):
            [pred] = pair.predict([image(group[q])])
            found = [_score(pred.points, pred.scores, pred.names, group[q]), single(a, q), single(b, q)]
            if all(r is not None for r in found):
                fewshot.append(found[0]["errors"])
                singles += [found[1]["errors"], found[2]["errors"]]
                better.append(max(found[1:], key=lambda r: float(np.mean(r["errors"] <= 0.2)))["errors"])
    return {
        "pairs": len(group) * (len(group) - 1) // 2,
        "draws": len(fewshot),
        "fewshot": metrics.summarise(fewshot),
        "alone": metrics.summarise(singles),
        "better_alone": metrics.summarise(better),  # the pair's better image alone on each query (known afterwards): the
        # most that choosing one of the two supports could give
    }


def _interactive(pred, query: Sample) -> dict | None:
    """PCK@0.2 of the keypoints not placed: with no placement, after the worst-predicted keypoint is placed at its
    ground truth (kp_model.interactive.constrain), and after the worst of the rest is placed too."""
    full = np.full((len(query.keypoint_names), 2), np.nan)
    for name, p in zip(pred.names, pred.points, strict=True):
        full[query.keypoint_names.index(name)] = p
    mask = np.isfinite(full).all(axis=1)
    found = best_instance(np.nan_to_num(full), mask, query)
    if found is None:
        return None
    inst = found[0]
    counted = [n for n, m, v in zip(query.keypoint_names, mask, inst.visible, strict=True) if m and v]
    if len(counted) < 3:
        return None
    truth = {n: inst.keypoints[query.keypoint_names.index(n), :2] for n in counted}

    def errors(p) -> dict[str, float]:
        at = {n: p.points[p.names.index(n)] for n in counted}
        e = metrics.normalised_errors(np.array([at[n] for n in counted]), np.array([truth[n] for n in counted]), inst.box)
        return dict(zip(counted, e, strict=True))

    out, placed, current = {}, {}, pred
    for step in ("none", "one", "two"):
        err = errors(current)
        others = [e for n, e in err.items() if n not in placed]
        out[step] = float(np.mean(np.array(others) <= 0.2))
        worst = max((n for n in err if n not in placed), key=lambda n: err[n])
        placed[worst] = tuple(truth[worst])
        current = constrain(pred, placed)
    return out


def _ranking(found: list[dict]) -> dict:
    """AUROC of a low task score for PCK@0.2 < 0.5, and Spearman of point score vs point error."""
    if not found:
        return {}
    task_pck = np.array([float(np.mean(r["errors"] <= 0.2)) for r in found])
    task_score = np.array([r["task_score"] for r in found])
    point_err = np.concatenate([r["errors"] for r in found])
    point_score = np.concatenate([r["scores"] for r in found])
    return {
        "tasks": len(found),
        "bad_tasks": int((task_pck < 0.5).sum()),
        "auroc_low_score_finds_bad": auroc(-task_score, task_pck < 0.5),
        "spearman_point_score_vs_error": spearman(point_score, point_err),
    }


def _mean(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return float(np.mean(values)) if values else float("nan")


def _versus(entries: list[dict], baseline: str) -> dict:
    """Per folder entry, few-shot PCK@0.2 against ``baseline``'s on the same queries: how many folders, the mean
    gain, how many gained and how many lost."""
    gains = [e["fewshot"]["pck@0.2"] - e[baseline]["pck@0.2"] for e in entries]
    return {
        "folders": len(gains),
        "mean_gain_pck@0.2": _mean(gains),
        "better": sum(g > 0 for g in gains),
        "worse": sum(g < 0 for g in gains),
    }


def run_fewshot_bench(
    folders: list[Path], ks: tuple[int, ...] = KS, cfg: FewShotConfig | None = None, engine: PredictorConfig | None = None,
    max_queries: int | None = None,
) -> dict:  # fmt: skip
    cfg = cfg or FewShotConfig()
    engine = engine or PredictorConfig()
    folders = sorted(folders, key=lambda f: f.name)
    report: dict = {"fewshot_config": cfg.to_dict(), "engine": engine.version, "ks": list(ks), "folders": {}}
    t0 = time.perf_counter()
    for folder in folders:
        report["folders"][folder.name] = _folder(folder, ks, cfg, engine, max_queries)
    report["seconds"] = time.perf_counter() - t0
    halves = {"all": folders, "half_a": folders[0::2], "half_b": folders[1::2]}
    summary: dict = {}
    for tag, members in halves.items():
        rows = [report["folders"][f.name] for f in members]
        summary[tag] = {}
        for k in ks:
            entries = [r["k"][k] for r in rows if k in r["k"]]
            if not entries:
                continue
            raw = [x for e in entries for x in e["_raw"]]
            summary[tag][k] = {
                "folders": len(entries),
                **{
                    f"{engine_name}_{m}": _mean([e[engine_name][m] for e in entries if engine_name in e])
                    for engine_name in ("fewshot", "copy_nearest")
                    for m in ("pck@0.05", "pck@0.1", "pck@0.2", "mean_error")
                },
                "ranking_pooled": _ranking(raw),
                "interactive_pck@0.2": {
                    s: _mean([e["interactive_pck@0.2"][s] for e in entries if "interactive_pck@0.2" in e])
                    for s in ("none", "one", "two")
                },
                "seconds_per_query": _mean([e["seconds_per_query"] for e in entries]),
            }
            paired = [e for e in entries if "first_only" in e]  # the same queries answered by the first image alone
            if paired:
                summary[tag][k]["first_only_pck@0.2"] = _mean([e["first_only"]["pck@0.2"] for e in paired])
                summary[tag][k]["vs_first_only"] = _versus(paired, "first_only")
        drawn = [r["every_pair"] for r in rows if r.get("every_pair", {}).get("draws")]
        if drawn:
            summary[tag]["every_pair_k2"] = {
                "fewshot_pck@0.2": _mean([e["fewshot"]["pck@0.2"] for e in drawn]),
                "alone_pck@0.2": _mean([e["alone"]["pck@0.2"] for e in drawn]),
                "better_alone_pck@0.2": _mean([e["better_alone"]["pck@0.2"] for e in drawn]),
                **_versus(drawn, "alone"),
            }
        k1 = [r["k"][ks[0]] for r in rows if ks[0] in r["k"] and "today_k1" in r["k"][ks[0]]]
        summary[tag]["today_k1_pck@0.2"] = _mean([e["today_k1"]["pck@0.2"] for e in k1])
    report["summary"] = summary
    for row in report["folders"].values():
        for entry in row["k"].values():
            entry.pop("_raw")
    return report
