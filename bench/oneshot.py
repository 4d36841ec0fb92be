"""One-shot accuracy benchmark: the default engine vs copying the support, on COCO keypoint folders."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from bench.machine import machine_info
from kp_model.build import PredictorConfig, build_predictor
from kp_model.evaluation.protocol import copy_engine, evaluate_folder, summarise

log = logging.getLogger(__name__)


class CachedSupportEngine:
    """Evaluation engine around a predictor (built from ``cfg``, or given): the support is set once per distinct
    support."""

    def __init__(self, cfg: PredictorConfig | None = None, predictor: object | None = None) -> None:
        self.predictor = predictor if predictor is not None else build_predictor(cfg)
        self._key: bytes | None = None

    def __call__(self, support: np.ndarray, keypoints: np.ndarray, names: list[str], query: np.ndarray) -> np.ndarray:
        key = keypoints.tobytes() + support[:: max(1, support.shape[0] // 16), :: max(1, support.shape[1] // 16)].tobytes()
        if key != self._key:
            self.predictor.set_support(support, keypoints, names)
            self._key = key
        return self.predictor.predict([query])[0].points


def run_oneshot_bench(
    data: Path,
    folders: list[str] | None = None,
    max_queries: int | None = None,
    config: str | None = None,
    protocol: str = "first",
    max_supports: int = 5,
    kptllm_checkpoint: str | None = None,
) -> dict:
    """PCK@0.05/0.1/0.2 and mean error per folder for the default engine, the kptllm engine (when a checkpoint
    is given) and the copy baseline.

    ``data`` is either one COCO keypoint folder or a folder of them.
    """
    cfg = PredictorConfig.from_file(config) if config else PredictorConfig()
    kptllm_cfg = PredictorConfig(engine="kptllm", checkpoint=kptllm_checkpoint) if kptllm_checkpoint else None
    if (data / "annotations.json").is_file():
        paths = [data]
    else:
        paths = sorted(p for p in data.iterdir() if (p / "annotations.json").is_file())
        if folders:
            paths = [p for p in paths if p.name in set(folders)]
    if not paths:
        raise FileNotFoundError(f"{data}: no COCO keypoint folder (images/ + annotations.json) found")
    per_folder = {}
    t0 = time.perf_counter()
    for path in paths:
        engines = {"oneshot": CachedSupportEngine(cfg), "copy": copy_engine}
        if kptllm_cfg is not None:
            engines["kptllm"] = CachedSupportEngine(kptllm_cfg)
        results = evaluate_folder(path, engines, max_queries, protocol, max_supports)
        per_folder[path.name] = {name: summarise(pairs) for name, pairs in results.items()}
        log.info(
            "%s: oneshot PCK@0.2 %.3f, copy %.3f",
            path.name,
            per_folder[path.name]["oneshot"]["pck@0.2"],
            per_folder[path.name]["copy"]["pck@0.2"],
        )
    summary = {}
    for group, names in {
        "all_folders": list(per_folder),
        "mmpose_mean": [n for n in per_folder if n.startswith("mmpose__")],
        "dlc__openfield_mouse": [n for n in per_folder if n == "dlc__openfield_mouse"],
    }.items():
        if not names:
            continue
        summary[group] = {
            engine: {
                metric: float(np.nanmean([per_folder[n][engine][metric] for n in names]))
                for metric in ("pck@0.05", "pck@0.1", "pck@0.2", "mean_error")
            }
            for engine in per_folder[names[0]]
        }
    return {
        "protocol": (
            "first image of each category as support, every other image as query"
            if protocol == "first"
            else f"each image in turn as support for the others of its category ({max_supports} evenly spread supports "
            f"and at most {max_queries} queries each in larger categories)"
        )
        + "; whole images; PCK normalised by the longer bbox side of the best-matching ground-truth instance",
        "engine_version": cfg.version,
        "engine_config": cfg.to_json(),
        "machine": machine_info(),
        "seconds": time.perf_counter() - t0,
        "summary": summary,
        "folders": per_folder,
    }


def markdown_table(report: dict) -> str:
    """The report's per-folder PCK@0.2, PCK@0.1 and mean error of every engine as a markdown table, summary rows first."""
    engines = list(next(iter(report["folders"].values())))
    label = {"oneshot": "kpassist", "kptllm": "kptllm", "copy": "copy"}
    cols = [(m, e) for m in ("pck@0.2", "pck@0.1", "mean_error") for e in engines]
    head = " | ".join(f"{label.get(e, e)} {m.upper() if m != 'mean_error' else 'mean err'}" for m, e in cols)
    rows = [f"| set | {head} |", "|---" * (len(cols) + 1) + "|"]

    def row(name: str, res: dict) -> str:
        return f"| {name} | " + " | ".join(f"{res[e][m]:.3f}" for m, e in cols) + " |"

    for name, res in report["summary"].items():
        rows.append(row(f"**{name}**", res))
    for name, res in report["folders"].items():
        rows.append(row(name, res))
    return "\n".join(rows)
