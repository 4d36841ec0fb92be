"""One predictor interface and one builder: both engines satisfy the Predictor protocol, loaded checkpoints are
shared and bounded, and the packages have no import cycles (the server never imports the benchmarks)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kp_model.build import ModelCache, PredictorConfig, build_predictor
from kp_model.kptllm.checkpoint import save_checkpoint
from kp_model.predictor import Predictor, SupportNotSetError

REPO = Path(__file__).resolve().parents[2]


def test_both_engines_implement_the_protocol(tmp_path: Path, small_model, blob_image, blob_names) -> None:
    ckpt = save_checkpoint(small_model(), tmp_path / "ck")
    image, pts = blob_image()
    for cfg in (PredictorConfig(), PredictorConfig(engine="kptllm", checkpoint=str(ckpt))):
        predictor = build_predictor(cfg)
        assert isinstance(predictor, Predictor) and not predictor.is_support_set
        with pytest.raises(SupportNotSetError):
            predictor.predict([image])
        predictor.set_support(image, pts, blob_names)
        [pred] = predictor.predict([image])
        assert predictor.is_support_set and predictor.support_names == blob_names
        assert pred.points.shape == (3, 2) and ((pred.scores >= 0) & (pred.scores <= 1)).all()


def test_model_cache_shares_and_bounds_loaded_checkpoints(tmp_path: Path, small_model) -> None:
    paths = [str(save_checkpoint(small_model(), tmp_path / f"v{i}")) for i in range(3)]
    cache = ModelCache(max_models=2)
    a = build_predictor(PredictorConfig(engine="kptllm", checkpoint=paths[0]), cache)
    b = build_predictor(PredictorConfig(engine="kptllm", checkpoint=paths[0]), cache)
    assert a.model is b.model and cache.loads == 1  # one load, two predictors (two projects' supports)
    for p in paths[1:]:
        build_predictor(PredictorConfig(engine="kptllm", checkpoint=p), cache)
    assert len(cache) == 2 and cache.evictions == 1 and cache.loads == 3
    build_predictor(PredictorConfig(engine="kptllm", checkpoint=paths[0]), cache)  # was dropped: loaded again
    assert cache.loads == 4


def test_cached_supports_do_not_pin_evicted_models(tmp_path: Path, small_model, blob_image, blob_names) -> None:
    import gc
    import weakref

    paths = [str(save_checkpoint(small_model(), tmp_path / f"v{i}")) for i in range(2)]
    cache = ModelCache(max_models=1)
    image, pts = blob_image()
    first = build_predictor(PredictorConfig(engine="kptllm", checkpoint=paths[0]), cache)
    first.set_support(image, pts, blob_names)  # a project's cached support
    before = first.predict([image])[0].points
    gone = weakref.ref(first.model)
    build_predictor(PredictorConfig(engine="kptllm", checkpoint=paths[1]), cache)  # another project: evicts the first
    gc.collect()
    assert gone() is None  # the support kept no reference: the model's memory is freed
    np.testing.assert_allclose(first.predict([image])[0].points, before, atol=1e-4)  # reloaded on use, same answer
    assert cache.loads == 3
    with pytest.raises(ValueError, match="max_models"):
        ModelCache(0)


def _imports(path: Path, package: str) -> set[str]:
    """Project modules imported anywhere in ``path`` (module level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    roots = ("backend", "kp_model", "bench", "label_config")
    return {m for m in found if m.split(".")[0] in roots and m != package}


def _module_graph() -> dict[str, set[str]]:
    graph = {}
    for root in ("backend", "kp_model", "bench"):
        for path in (REPO / root).rglob("*.py"):
            rel = path.relative_to(REPO).with_suffix("")
            name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            graph[name] = _imports(path, name)
    return graph


def test_no_import_cycles() -> None:
    graph = _module_graph()
    for name in graph:  # a package import (kp_model.kptllm) stands for its __init__
        graph[name] = {m for m in graph[name] if m in graph}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join([*path, node, nxt])
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_runtime_packages_never_import_the_benchmarks() -> None:
    graph = _module_graph()
    for name, deps in graph.items():
        if name.startswith(("backend", "kp_model")):
            allowed = {"bench.cli"} if name == "backend.cli" else set()  # `kpassist bench` forwards, imported on use only
            assert not [d for d in deps if d.startswith("bench") and d not in allowed], name
    modules = "backend.app, backend.wsgi, backend.jobs, backend.cli"
    code = f"import sys, {modules}; print(sorted(m for m in sys.modules if m.startswith('bench')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_predict_returns_numpy_in_pixels(blob_image, blob_names) -> None:
    image, pts = blob_image()
    predictor = build_predictor()
    predictor.set_support(image, pts, blob_names)
    [pred] = predictor.predict([image])
    assert isinstance(pred.points, np.ndarray) and np.abs(pred.points - pts).max() < 10  # same image: near its points


def test_model_cache_is_bounded_in_bytes(tmp_path: Path, small_model) -> None:
    paths = [str(save_checkpoint(small_model(), tmp_path / f"v{i}")) for i in range(2)]
    cache = ModelCache(max_models=8, max_bytes=1)  # smaller than any model: only the newest stays loaded
    for p in paths:
        build_predictor(PredictorConfig(engine="kptllm", checkpoint=p), cache)
    assert len(cache) == 1 and cache.evictions == 1 and cache.nbytes > 1
