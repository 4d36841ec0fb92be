"""The benchmark report: schema and figures (numbers are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.cli import main

pytestmark = pytest.mark.slow


def test_bench_report_schema_and_plots(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "report.json"
    folders = ["--folders", "mmpose__zebra_zebra", "mmpose__fly_fly"]
    assert main(["bench", "oneshot", "--data", str(shared_data), *folders, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"protocol", "engine_version", "engine_config", "machine", "seconds", "summary", "folders"}
    assert set(report["machine"]) >= {"cpu", "cpus", "python", "numpy", "platform"}
    assert set(report["folders"]) == {"mmpose__zebra_zebra", "mmpose__fly_fly"}
    for engines in report["folders"].values():
        assert set(engines) == {"oneshot", "copy"}
        for metrics in engines.values():
            assert set(metrics) >= {"pck@0.05", "pck@0.1", "pck@0.2", "mean_error", "pairs", "keypoints", "seconds_per_pair"}
            assert 0 <= metrics["pck@0.2"] <= 1 and metrics["pairs"] == 1
    assert set(report["summary"]) == {"all_folders", "mmpose_mean"}
    assert out.with_suffix(".md").read_text().startswith("| set |")
    for png in ("report-pck.png", "report-overlays.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_all_pairs_protocol_and_a_kptllm_column(tmp_path: Path, shared_data: Path, small_model) -> None:
    from kp_model.kptllm.checkpoint import save_checkpoint

    ckpt = save_checkpoint(small_model(), tmp_path / "ck")
    out = tmp_path / "pairs.json"
    args = ["bench", "oneshot", "--data", str(shared_data), "--folders", "mmpose__zebra_zebra", "--protocol", "all-pairs"]
    assert main([*args, "--kptllm-checkpoint", str(ckpt), "--no-plots", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    zebra = report["folders"]["mmpose__zebra_zebra"]
    assert set(zebra) == {"oneshot", "copy", "kptllm"} and zebra["oneshot"]["pairs"] == 2  # 2 images: both directions
    assert "each image in turn" in report["protocol"]
    assert "kptllm PCK@0.2" in out.with_suffix(".md").read_text()


def test_pairs_of_each_protocol() -> None:
    from kp_model.coco import Sample
    from kp_model.evaluation.protocol import one_shot_pairs

    group = [Sample(Path(f"{i}.png"), 10, 10, "c", ["a"], []) for i in range(8)]
    first = [(s.image_path.name, q.image_path.name) for s, q in one_shot_pairs(group)]
    assert first == [("0.png", f"{i}.png") for i in range(1, 8)]
    pairs = list(one_shot_pairs(group, max_queries=3, protocol="all-pairs", max_supports=4))
    supports = sorted({s.image_path.name for s, _ in pairs})
    assert len(supports) == 4 and len(pairs) == 12 and all(s is not q for s, q in pairs)
    with pytest.raises(ValueError, match="protocol"):
        list(one_shot_pairs(group, protocol="some"))


def test_speed_and_loop_figures_from_report_shapes(tmp_path: Path) -> None:
    import os

    from bench.http import percentiles, process_tree_memory_mb
    from bench.loop import plot_loop
    from bench.plots import scale_plot

    assert percentiles([1.0, 2.0, 3.0])["p50_s"] == 2.0
    mem = process_tree_memory_mb(os.getpid())
    assert mem["rss_mb"] > 0 and mem["peak_rss_mb"] >= mem["rss_mb"] and mem["processes"] >= 1
    row = {"set_support_s": 1.0, "predict_median_s": 0.5, "rss_mb": 100.0, "peak_rss_mb": 120.0}
    scale = {
        "image_size": {"oneshot": [{"longer_side_px": s, **row} for s in (256, 512)]},
        "keypoints": {"oneshot": [{"keypoints": 4, **row}]},
    }
    assert scale_plot(scale, tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    point = {"k": 1, "served_pck@0.2": 0.5, "candidate_pck@0.2": 0.4, "default_engine_pck@0.2": 0.5, "retrain_seconds": 10.0}
    plot_loop({"points": [point, {**point, "k": 2}], "folder": "f", "machine": {"cpus": 2}}, tmp_path / "l.png")
    assert (tmp_path / "l.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_instances_report_and_overlays(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "instances.json"
    args = ["bench", "instances", "--data", str(shared_data), "--folders", "mmpose__mhp_person", "mmpose__panoptic_hand"]
    assert main([*args, "--composite-images", "4", "--max-supports", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    folders = {
        "mmpose__mhp_person",
        "mmpose__panoptic_hand",
        "composite_even__dlc__openfield_mouse",
        "composite_odd__dlc__openfield_mouse",
    }
    assert set(report["folders"]) == folders
    assert report["halves"]["A"] and report["halves"]["B"] and set(report["count_rule"]["tuned_on"]) == set(report["halves"]["A"])
    for tag in ("A", "B", "all"):
        for variant in ("single", "estimated", "oracle"):
            s = report["summary"][tag][variant]
            assert set(s) >= {"pck@0.2", "pck@0.2_per_true", "count_accuracy", "precision", "recall", "mean_oks", "images"}
    assert report["summary"]["all"]["oracle"]["count_accuracy"] <= 1
    assert all(p["estimated"] >= 1 for p in report["pairs"])
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_out_that_is_a_folder_is_refused_before_the_run(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "fewshot", "--data", str(tmp_path / "nothing-read"), "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "is a folder" in capsys.readouterr().err


def test_busy_cores_run_while_the_block_does_and_stop_after() -> None:
    import multiprocessing

    from bench.loop import busy_cores

    before = set(multiprocessing.active_children())
    with busy_cores(2):
        spinning = [p for p in multiprocessing.active_children() if p not in before]
        assert len(spinning) == 2 and all(p.is_alive() for p in spinning)
    assert not any(p.is_alive() for p in spinning)


def test_fewshot_reports_the_first_image_alone_on_the_same_queries(tmp_path: Path, shared_data: Path) -> None:
    # three copies of one labelled zebra image: every query shows its supports exactly, so k = 1, k = 2 and the first
    # image alone on k = 2's query all score PCK 1, and k = 2 gains nothing over the first image alone
    source = shared_data / "mmpose__zebra_zebra"
    coco = json.loads((source / "annotations.json").read_text())
    image, annotation = coco["images"][0], coco["annotations"][0]
    folder = tmp_path / "three_copies"
    (folder / "images").mkdir(parents=True)
    coco["images"], coco["annotations"] = [], []
    for i, name in enumerate(("a.jpg", "b.jpg", "c.jpg"), start=1):
        (folder / "images" / name).write_bytes((source / "images" / image["file_name"]).read_bytes())
        coco["images"].append({**image, "id": i, "file_name": name})
        coco["annotations"].append({**annotation, "id": i, "image_id": i})
    (folder / "annotations.json").write_text(json.dumps(coco))
    out = tmp_path / "fewshot.json"
    assert main(["bench", "fewshot", "--data", str(folder), "--ks", "1", "2", "--no-plots", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    k1, k2 = report["folders"]["three_copies"]["k"]["1"], report["folders"]["three_copies"]["k"]["2"]
    assert "first_only" not in k1 and k1["today_k1"]["pck@0.2"] == 1.0 and k1["queries"] == 2
    assert k2["queries"] == 1 and k2["fewshot"]["pck@0.2"] == 1.0 and k2["first_only"]["pck@0.2"] == 1.0
    summary = report["summary"]["all"]["2"]
    assert summary["first_only_pck@0.2"] == 1.0
    assert summary["vs_first_only"] == {"folders": 1, "mean_gain_pck@0.2": 0.0, "better": 0, "worse": 0}
    assert "vs_first_only" not in report["summary"]["all"]["1"]
    # every pair of the three images (3 pairs, the third image the query of each), against each image of the pair alone
    every = report["folders"]["three_copies"]["every_pair"]
    assert every["pairs"] == 3 and every["draws"] == 3
    assert every["fewshot"]["pck@0.2"] == 1.0 and every["alone"]["pck@0.2"] == 1.0 and every["better_alone"]["pck@0.2"] == 1.0
    assert every["alone"]["queries"] == 6
    assert report["summary"]["all"]["every_pair_k2"] == {
        "folders": 1,
        "fewshot_pck@0.2": 1.0,
        "alone_pck@0.2": 1.0,
        "better_alone_pck@0.2": 1.0,
        "mean_gain_pck@0.2": 0.0,
        "better": 0,
        "worse": 0,
    }
