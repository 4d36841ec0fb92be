"""Memory of the backend's prediction service when many projects each serve their own fine-tuned version: RSS after
every project got a prediction (its support cached, as the backend keeps it), for several caps on loaded models
(KPASSIST_MAX_LOADED_MODELS), and the cost of a second round over all projects (evicted models are reloaded).
Each cap runs in a fresh process, so resident memory is not carried over."""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.machine import machine_info, memory_mb

log = logging.getLogger(__name__)


def _serve_all(data_dir: str, n_projects: int, max_loaded: int, image_path: str, keypoints: list, names: list) -> dict:
    """In a fresh process: one /predict's worth of work per project (support built and cached, one query)."""
    from backend.label_config import KeypointControl
    from backend.service import PredictionService
    from backend.settings import Settings
    from backend.support import SupportRef
    from kp_model.images import load_image_rgb

    image = load_image_rgb(Path(image_path))
    h, w = image.shape[:2]
    pct = tuple((float(x) * 100 / w, float(y) * 100 / h) for x, y in keypoints)
    control = KeypointControl("kp", "image", "image", tuple(names))
    service = PredictionService(Settings(data_dir=data_dir, max_loaded_models=max_loaded))
    start = memory_mb()["rss_mb"]

    def one_round() -> float:
        t0 = time.perf_counter()
        for project in range(1, n_projects + 1):
            version, make = service.engine(project)
            ref = SupportRef(project, "t", 1, image_path, tuple(names), pct)
            cached = service.supports.get(project, control, [ref], lambda _: image, make, version)
            cached.predictor.predict([image])
        return (time.perf_counter() - t0) / n_projects

    first = one_round()
    after = memory_mb()
    second = one_round()
    return {
        "max_loaded_models": max_loaded,
        "projects": n_projects,
        "rss_mb_before": start,
        "rss_mb_after_all_projects": after["rss_mb"],
        "peak_rss_mb": memory_mb()["peak_rss_mb"],
        "cached_supports": len(service.supports),
        "loaded_models": len(service.models),
        "model_loads": service.models.loads,
        "seconds_per_project_first_round": first,
        "seconds_per_project_second_round": second,
    }


def run_models_bench(data: Path, n_projects: int = 50, caps: tuple[int, ...] = (8, 50)) -> dict:
    """Every project serves its own copy of one tiny-preset checkpoint (the size of a fine-tuned tiny model)."""
    from kp_model.coco import load_coco_keypoints
    from kp_model.kptllm.checkpoint import build_model, save_checkpoint
    from kp_model.kptllm.configuration import tiny_config
    from kp_model.kptllm.semantics import semantic_text
    from kp_model.training.store import ModelStore

    sample = load_coco_keypoints(data / "dlc__openfield_mouse")[0]
    inst = sample.instances[0]
    names = list(sample.keypoint_names)
    report: dict = {"machine": machine_info(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="kpassist-models-") as tmp:
        model = build_model(tiny_config(category="mouse"), vocab_texts=[semantic_text(n, "mouse") for n in names])
        source = save_checkpoint(model, Path(tmp) / "source")
        for project in range(1, n_projects + 1):
            store = ModelStore(Path(tmp) / "var" / "projects" / str(project) / "model")
            shutil.copytree(source, store.checkpoint_dir("v0001"))
            store.write_record("v0001", {"decision": "promote"})
            store.promote("v0001")
        args = (str(Path(tmp) / "var"), n_projects)
        point = (str(sample.image_path), inst.keypoints[:, :2].tolist(), names)
        ctx = multiprocessing.get_context("spawn")
        for cap in caps:
            with ctx.Pool(1) as pool:
                run = pool.apply(_serve_all, (*args, cap, *point))
            log.info(
                "%d projects, at most %d models loaded: RSS %.0f MB (%.0f MB before), %.3f s/project on the 2nd round",
                n_projects,
                cap,
                run["rss_mb_after_all_projects"],
                run["rss_mb_before"],
                run["seconds_per_project_second_round"],
            )
            report["runs"].append(run)
    report["checkpoint_mb"] = float(np.sum([f.stat().st_size for f in Path(source).rglob("*") if f.is_file()]) / 2**20)
    return report
