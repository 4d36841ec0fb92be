"""``kpassist bench instances``: several individuals per image, on the multi-instance COCO folders.

Protocol: in each folder (category), every image in turn is the support image of every other (all-pairs, at most
``max_supports`` spread support images). Each query is predicted three ways:
- ``single``: today's behaviour: one support (the support image's instance with the most visible keypoints, its
  visible keypoints only) and the engine's one answer (``predict``);
- ``estimated``: every individual of the support image is a support (as the backend does with an annotation of
  several boxes); their candidates ranked together (``FewShotPredictor.ranked_instances``), cut at the count rule
  (kp_model.oneshot.instances.count_instances);
- ``oracle``: the same ranked list cut at the true number of instances.
A keypoint counts when it is labelled in the main support instance and visible in the annotated query instance.
Predictions are matched to the annotated instances by Hungarian assignment on OKS (kp_model.evaluation.instances).

Settings are chosen on one half of the folders (``--tune``: the count rule's margin and floor that maximise count
accuracy on half A, then applied everywhere); figures are reported for half A, half B and all folders.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from kp_model.build import PredictorConfig, build_predictor
from kp_model.coco import Instance, Sample, load_coco_keypoints
from kp_model.evaluation.instances import ImageScore, Truth, score_image, summarise_instances
from kp_model.evaluation.protocol import one_shot_pairs, support_instance
from kp_model.fewshot import FewShotPredictor
from kp_model.fusion import reorder
from kp_model.images import load_image_rgb
from kp_model.oneshot.instances import InstanceConfig, count_instances
from kp_model.predictor import SupportError

log = logging.getLogger(__name__)

VARIANTS = ("single", "estimated", "oracle")
RATIOS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
FLOORS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)


def multi_instance_folders(data: Path) -> list[Path]:
    """The COCO folders under ``data`` where at least one image holds two or more annotated instances."""
    out = []
    for folder in sorted(p for p in data.iterdir() if (p / "annotations.json").is_file()):
        if any(len(s.instances) > 1 for s in load_coco_keypoints(folder)):
            out.append(folder)
    return out


def _truths(query: Sample, mask: np.ndarray) -> list[Truth]:
    """The query's annotated instances, counting the keypoints visible in it and in the support (``mask``)."""
    return [Truth(i.keypoints[:, :2], i.visible & mask, i.box) for i in query.instances if (i.visible & mask).any()]


def _supports(sample: Sample) -> list[Instance]:
    """The support image's individuals used as supports: every instance with at least 3 visible keypoints (the
    one with most when none has), the main one (``support_instance``) first."""
    main = support_instance(sample)
    others = [i for i in sample.instances if i is not main and int(i.visible.sum()) >= 3]
    return [main, *others]


def evaluate_folder(folder: Path, engine: PredictorConfig, max_supports: int, max_queries: int | None) -> list[dict]:
    """One record per (support, query) pair: the ranked candidates' evidence, each variant's predictions, and the
    seconds of the single-instance and the ranked search. ``single`` is today's one support (the support image's
    main instance) and one answer; the others search with every individual of the support image as a support
    (kp_model.fewshot.FewShotPredictor.ranked_instances), as the backend does."""
    records = []
    single_predictor = build_predictor(engine)
    for sup, qry in one_shot_pairs(load_coco_keypoints(folder), max_queries, "all-pairs", max_supports):
        names = sup.keypoint_names
        support_image = load_image_rgb(sup.image_path)
        instances = _supports(sup)
        mask = instances[0].visible
        single_predictor.set_support(
            support_image, instances[0].keypoints[mask, :2], [n for n, m in zip(names, mask, strict=True) if m]
        )
        fewshot = FewShotPredictor(lambda: build_predictor(engine), replace(engine.fewshot, instance_supports=len(instances)))
        for j, inst in enumerate(instances):
            vis = inst.visible
            try:
                fewshot.add_support(
                    str(j), support_image, inst.keypoints[vis, :2], [n for n, v in zip(names, vis, strict=True) if v]
                )
            except SupportError as exc:  # as the backend does: an unusable individual is left out, logged
                log.warning("%s: support %s individual %d left out: %s", folder.name, sup.image_path.name, j, exc)
        image = load_image_rgb(qry.image_path)
        truths = _truths(qry, mask)
        if not truths:
            continue
        t0 = time.perf_counter()
        [single] = single_predictor.predict([image])
        t1 = time.perf_counter()
        ranked, evidence = fewshot.ranked_instances(image)
        t2 = time.perf_counter()
        records.append(
            {
                "folder": folder.name,
                "data": str(folder.parent),
                "support": sup.image_path.name,
                "support_instances": len(instances),
                "query": qry.image_path.name,
                "true": len(truths),
                "scores": evidence,
                "ranked": [reorder(p, names).points for p in ranked],
                "single": reorder(single, names).points,  # in the category's keypoint order
                "truths": truths,
                "seconds_single": t1 - t0,
                "seconds_ranked": t2 - t1,
            }
        )
        log.info(
            "%s: %s -> %s: %d true, %d candidates",
            folder.name,
            sup.image_path.name,
            qry.image_path.name,
            *map(len, (truths, ranked)),
        )
    return records


def variant_scores(records: Sequence[dict], cfg: InstanceConfig) -> dict[str, list[ImageScore]]:
    """Each variant's per-image scores under the count rule ``cfg``."""
    out: dict[str, list[ImageScore]] = {v: [] for v in VARIANTS}
    for r in records:
        n = count_instances(r["scores"], cfg)
        out["single"].append(score_image([r["single"]], r["truths"]))
        out["estimated"].append(score_image(r["ranked"][:n], r["truths"]))
        out["oracle"].append(score_image(r["ranked"][: r["true"]], r["truths"]))
    return out


def summary(records: Sequence[dict], cfg: InstanceConfig) -> dict:
    scores = variant_scores(records, cfg)
    out = {v: summarise_instances(s) for v, s in scores.items()}
    out["seconds_per_image"] = {
        "single": float(np.mean([r["seconds_single"] for r in records])) if records else float("nan"),
        "ranked": float(np.mean([r["seconds_ranked"] for r in records])) if records else float("nan"),
    }
    return out


def tune_rule(records: Sequence[dict], cfg: InstanceConfig) -> InstanceConfig:
    """The (min_ratio, min_evidence) of the grid with the best count accuracy on ``records`` (ties: the best
    estimated-variant F1 at OKS 0.5, then the grid's order)."""
    best = None
    for ratio in RATIOS:
        for floor in FLOORS:
            c = replace(cfg, min_ratio=ratio, min_evidence=floor)
            s = summarise_instances(variant_scores(records, c)["estimated"])
            p, r = s["precision"], s["recall"]
            f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
            key = (s["count_accuracy"], f1)
            if best is None or key > best[0]:
                best = (key, c)
    return best[1] if best else cfg


def run_instances_bench(
    folders: Sequence[Path],
    engine: PredictorConfig,
    max_supports: int = 4,
    max_queries: int | None = None,
    tune: bool = True,
) -> tuple[dict, list[dict], InstanceConfig]:
    """(report, records, count rule): the rule is the engine's, or tuned on half A of ``folders`` (0, 2, 4, ... in
    name order); the report summarises half A, half B, all folders and each folder."""
    records = {f.name: evaluate_folder(f, engine, max_supports, max_queries) for f in folders}
    names = sorted(records)
    half_a = [n for i, n in enumerate(names) if i % 2 == 0]
    half_b = [n for i, n in enumerate(names) if i % 2 == 1]
    rows_a = [r for n in half_a for r in records[n]]
    cfg = tune_rule(rows_a, engine.instances) if tune else engine.instances
    all_rows = [r for n in names for r in records[n]]
    report = {
        "engine": engine.to_dict(),
        "engine_version": engine.version,
        "count_rule": {"min_ratio": cfg.min_ratio, "min_evidence": cfg.min_evidence, "tuned_on": half_a if tune else []},
        "halves": {"A": half_a, "B": half_b},
        "summary": {
            "A": summary(rows_a, cfg),
            "B": summary([r for n in half_b for r in records[n]], cfg),
            "all": summary(all_rows, cfg),
            "all_default_rule": summary(all_rows, engine.instances),
            "real_folders": summary([r for n in names if not n.startswith("composite") for r in records[n]], cfg),
            "composites": summary([r for n in names if n.startswith("composite") for r in records[n]], cfg),
        },
        "folders": {n: summary(rows, cfg) for n, rows in records.items()},
        "pairs": [
            {k: r[k] for k in ("folder", "support", "query", "true", "scores", "seconds_single", "seconds_ranked")}
            | {"estimated": count_instances(r["scores"], cfg)}
            for rows in records.values()
            for r in rows
        ],
    }
    return report, [r for rows in records.values() for r in rows], cfg
