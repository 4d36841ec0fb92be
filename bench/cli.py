"""``kpassist bench ...`` (also ``python -m bench.cli ...``): benchmarks that write JSON reports (and PNG figures).
Every figure in the README comes from one of these commands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("kpassist.bench")

THREADS_HELP = "torch/OpenCV threads, as KPASSIST_TRAIN_THREADS gives a training job; only 1 is reproducible run to run"


def limit_threads(n: int) -> None:
    from kp_model.threads import limit_threads as limit

    limit(n)


def bench_fewshot(args: argparse.Namespace) -> int:
    from bench.fewshot import run_fewshot_bench
    from kp_model.build import PredictorConfig
    from kp_model.fewshot import FewShotConfig

    data = Path(args.data)
    folders = (
        [data]
        if (data / "annotations.json").is_file()
        else sorted(p for p in data.iterdir() if (p / "annotations.json").is_file())
    )
    if args.folders:
        folders = [f for f in folders if f.name in args.folders]
    cfg = FewShotConfig.from_json(Path(args.config).read_text()) if args.config else FewShotConfig()
    engine = PredictorConfig.from_file(args.engine_config) if args.engine_config else PredictorConfig()
    report = run_fewshot_bench(folders, tuple(args.ks), cfg, engine, args.max_queries)
    out = _write(report, args.out)
    if not args.no_plots:
        from bench.plots import fewshot_curves

        fewshot_curves(report, out.with_suffix(".png"))
    for tag, rows in report["summary"].items():
        line = ", ".join(
            f"k={k}: {r['fewshot_pck@0.2']:.3f} (copy {r['copy_nearest_pck@0.2']:.3f}"
            + (f", first image alone {r['first_only_pck@0.2']:.3f}" if "first_only_pck@0.2" in r else "")
            + ")"
            for k, r in rows.items()
            if isinstance(k, int)
        )
        print(f"{tag}: PCK@0.2 {line}; today's engine k=1: {rows['today_k1_pck@0.2']:.3f}")
        if "every_pair_k2" in rows:
            e = rows["every_pair_k2"]
            print(
                f"{tag}: k=2 over every pair, {e['folders']} folders: {e['fewshot_pck@0.2']:.3f} against each image alone "
                f"{e['alone_pck@0.2']:.3f} (mean gain {e['mean_gain_pck@0.2']:+.3f}, {e['better']} better, {e['worse']} worse; "
                f"the better image of each pair, known afterwards, {e['better_alone_pck@0.2']:.3f})"
            )
    return 0


def bench_oneshot(args: argparse.Namespace) -> int:
    from bench.oneshot import markdown_table, run_oneshot_bench

    report = run_oneshot_bench(
        Path(args.data), args.folders, args.max_queries, args.config, args.protocol, args.max_supports, args.kptllm_checkpoint
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    table = markdown_table(report)
    Path(args.out).with_suffix(".md").write_text(table + "\n")
    if not args.no_plots:
        from bench.plots import overlay_grid, pck_bars

        out = Path(args.out)
        pck_bars(report, out.with_name(out.stem + "-pck.png"))
        data = Path(args.data)
        folders = [data] if (data / "annotations.json").is_file() else [data / name for name in report["folders"]]
        overlay_grid(folders[:8], out.with_name(out.stem + "-overlays.png"))
        log.info("plots written beside %s", out)
    print(table)
    log.info("report written to %s", args.out)
    return 0


def bench_instances(args: argparse.Namespace) -> int:
    from bench.instances import multi_instance_folders, run_instances_bench
    from kp_model.build import PredictorConfig
    from kp_model.oneshot.instances import count_instances

    folders = multi_instance_folders(Path(args.data)) + [Path(c) for c in args.coco]
    if args.folders:
        folders = [f for f in folders if f.name in args.folders]
    engine = PredictorConfig.from_file(args.engine_config) if args.engine_config else PredictorConfig()
    scratch = tempfile.TemporaryDirectory(prefix="kpassist-composite-")
    if args.composite:  # two disjoint composite sets, from the even and the odd frames: one lands in each half
        from bench.composite import composite_folder

        source = Path(args.data) / args.composite
        for parity, tag in ((0, "even"), (1, "odd")):
            out_dir = Path(scratch.name) / f"composite_{tag}__{source.name}"
            folders.append(composite_folder(source, out_dir, args.composite_images, seed=parity, parity=parity))
    report, records, rule = run_instances_bench(folders, engine, args.max_supports, args.max_queries, not args.no_tune)
    out = _write(report, args.out)
    if not args.no_plots:
        from bench.plots import instance_overlays

        counts = {i: count_instances(r["scores"], rule) for i, r in enumerate(records)}
        instance_overlays(records, counts, out.with_suffix(".png"))
    scratch.cleanup()
    for tag in ("A", "B", "all"):
        s = report["summary"][tag]
        line = "; ".join(
            f"{v}: PCK@0.2 {s[v]['pck@0.2']:.3f}, count {s[v]['count_accuracy']:.2f}, "
            f"P {s[v]['precision']:.2f}, R {s[v]['recall']:.2f}"
            for v in ("single", "estimated", "oracle")
        )
        print(f"{tag} ({s['estimated']['images']} images): {line}")
    return 0


def _write(report: dict, out: str) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    log.info("report written to %s", path)
    return path


def _speed_report(data: Path, repeats: int, load_seconds: float, kptllm_checkpoint: str | None) -> dict:
    import tempfile

    from bench.http import run_http_bench
    from bench.machine import machine_info
    from bench.scale import run_scale_bench
    from kp_model.build import PredictorConfig, build_predictor

    engines = {"oneshot": lambda: build_predictor(PredictorConfig())}
    if kptllm_checkpoint:
        cfg = PredictorConfig(engine="kptllm", checkpoint=kptllm_checkpoint)
        engines["kptllm"] = lambda: build_predictor(cfg)
    report: dict = {"machine": machine_info()}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kpassist-bench-") as tmp:
        report["http"] = run_http_bench(data, Path(tmp), repeats, load_seconds)
    report["scale"] = run_scale_bench(data, engines)
    report["seconds"] = time.perf_counter() - t0
    return report


def bench_speed(args: argparse.Namespace) -> int:
    from bench.plots import scale_plot

    report = _speed_report(Path(args.data), args.repeats, args.load_seconds, args.kptllm_checkpoint)
    path = _write(report, args.out)
    scale_plot(report["scale"], path.with_name(path.stem + "-scale.png"))
    print(json.dumps(report["http"]["predict_latency"], indent=2))
    return 0


def bench_all(args: argparse.Namespace) -> int:
    from bench.oneshot import markdown_table, run_oneshot_bench
    from bench.plots import overlay_grid, pck_bars, scale_plot

    t0 = time.perf_counter()
    data = Path(args.data)
    accuracy = run_oneshot_bench(data, None, args.max_queries, None, "all-pairs", 5, args.kptllm_checkpoint)
    report = {"accuracy": accuracy, **_speed_report(data, 10, 60.0, args.kptllm_checkpoint)}
    report["seconds"] = time.perf_counter() - t0
    path = _write(report, args.out)
    path.with_suffix(".md").write_text(markdown_table(accuracy) + "\n")
    pck_bars(accuracy, path.with_name(path.stem + "-pck.png"))
    overlay_grid([data / name for name in accuracy["folders"]][:8], path.with_name(path.stem + "-overlays.png"))
    scale_plot(report["scale"], path.with_name(path.stem + "-scale.png"))
    print(markdown_table(accuracy))
    return 0


def bench_finetune(args: argparse.Namespace) -> int:
    from bench.finetune import run_finetune_bench

    out = Path(args.out)
    save_to = out.with_name(out.stem + "-checkpoint") if args.save_checkpoint else None
    if save_to is not None and save_to.exists():
        import shutil

        shutil.rmtree(save_to)
    limit_threads(args.threads)
    report = run_finetune_bench(Path(args.data), args.frames, args.steps, save_to=save_to)
    _write(report, args.out)
    print(json.dumps({k: report[k] for k in ("train_seconds", "peak_rss_mb_training", "scores")}, indent=2))
    return 0


def bench_device(args: argparse.Namespace) -> int:
    from bench.device import run_device_bench

    limit_threads(args.threads)
    report = run_device_bench(args.device, args.steps)
    _write(report, args.out)
    print(json.dumps(report, indent=2))
    return 0


def bench_loop(args: argparse.Namespace) -> int:
    from bench.loop import busy_cores, plot_loop, run_loop_bench

    limit_threads(args.threads)
    peer = None
    if args.sleap_venv:
        peer = {
            "venv": Path(args.sleap_venv),
            "steps": args.peer_steps,
            "threads": args.peer_threads or args.threads,
            "scale": args.peer_scale,
            "batch_size": args.peer_batch,
        }
    reports: dict[str, dict] = {}
    with busy_cores(args.busy):
        for order in args.orders:
            reports[order] = run_loop_bench(
                Path(args.data),
                tuple(args.k),
                args.steps,
                order=order,
                peer=peer,
                threads=args.threads,
                budget_s=args.budget,
                adapt_threads=not args.fixed_threads,
            )
            # written after each order: a run stopped during the next one (a peer column takes hours) keeps this one
            path = _write({"orders": reports, "busy_processes": args.busy}, args.out)
    for order, report in reports.items():
        plot_loop(report, path.with_name(f"{path.stem}-{order}.png"))
        for p in report["points"]:
            served, cand, default = p["served_pck@0.2"], p["candidate_pck@0.2"], p["default_engine_pck@0.2"]
            sleap = f"  sleap-nn {p['sleap_nn']['pck@0.2']:.3f} ({p['sleap_nn']['wall_s']:.0f}s)" if "sleap_nn" in p else ""
            print(
                f"{order:>6} k={p['k']:>3}  served {served:.3f}  candidate {cand:.3f}  default {default:.3f}  "
                f"retrain {p['retrain_seconds']:.0f}s ({p['train_steps']} steps)  {p['decision']}{sleap}"
            )
    return 0


def bench_models(args: argparse.Namespace) -> int:
    from bench.models import run_models_bench

    report = run_models_bench(Path(args.data), args.projects, tuple(args.caps))
    _write(report, args.out)
    for run in report["runs"]:
        print(
            f"{run['projects']} projects, max {run['max_loaded_models']} models: RSS {run['rss_mb_after_all_projects']:.0f} MB, "
            f"{run['model_loads']} loads, {run['seconds_per_project_second_round']:.3f} s/project (2nd round)"
        )
    return 0


def bench_prelabel(args: argparse.Namespace) -> int:
    from bench.prelabel import run_prelabel_bench

    report = run_prelabel_bench(Path(args.data), args.tasks, tuple(args.workers), args.kill_tasks, args.chunk, args.frames)
    _write(report, args.out)
    for row in report["runs"] + ([report["kill"]] if "kill" in report else []):
        print(
            f"{row['workers']} worker(s), {row['tasks']} tasks: {row['status']}, {row['tasks_per_s_wall']:.2f} tasks/s, "
            f"{row['written']} written, {row['failed']} failed, exactly one prediction each: {row['exactly_one_each']}"
        )
    return 0


def bench_scale_ls(args: argparse.Namespace) -> int:
    from bench.scale_ls import run_scale_ls_bench

    backend_dir = Path(args.backend_dir) if args.backend_dir else None
    report = run_scale_ls_bench(Path(args.data), tuple(args.sizes), args.repeats, args.backend_python, backend_dir)
    _write(report, args.out)
    for row in report["sizes"]:
        s, p = row["setup"], row["predict_one_task"]
        setup = f"/setup p50 {s['p50_s']:.3f} p95 {s['p95_s']:.3f} s"
        print(f"{row['annotated_tasks']:>6} tasks: {setup}; /predict p50 {p['p50_s']:.3f} p95 {p['p95_s']:.3f} s")
    return 0


def bench_contention(args: argparse.Namespace) -> int:
    from bench.contention import run_contention_bench

    report = run_contention_bench(Path(args.data), tuple(args.threads), args.steps, args.repeats, tuple(args.nice))
    _write(report, args.out)
    for row in report["settings"]:
        nan = float("nan")
        idle, busy = row["idle"]["p50_s"], (row["while_training"] or {}).get("p50_s", nan)
        ratio, train = row.get("p50_ratio", nan), row["train_seconds"] or nan
        head = f"train threads {row['train_threads']}, nice {row['job_nice']}: /predict p50 {idle:.2f} s idle"
        print(f"{head}, {busy:.2f} s while training (x{ratio:.2f}); training took {train:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="kpassist bench", description="kpassist benchmarks (JSON reports)")
    bench = parser.add_subparsers(dest="bench", required=True)
    b = bench.add_parser("oneshot", help="one-shot PCK of the default engine vs copying the support, per COCO folder")
    b.add_argument("--data", default="../shared/data", help="folder of COCO keypoint folders, or one such folder")
    b.add_argument("--folders", nargs="*", default=None, help="only these sub-folders")
    b.add_argument("--max-queries", type=int, default=None, help="at most this many queries per category")
    b.add_argument("--config", default=None, help="PredictorConfig JSON file (default: built-in)")
    b.add_argument("--out", default="bench-out/oneshot.json")
    b.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    b.add_argument("--protocol", choices=["first", "all-pairs"], default="first", help="support/query pairing")
    b.add_argument("--max-supports", type=int, default=5, help="all-pairs: supports per category at most")
    b.add_argument("--kptllm-checkpoint", default=None, help="also score the kptllm engine of this checkpoint")
    b.set_defaults(func=bench_oneshot)
    b = bench.add_parser("fewshot", help="PCK against k labelled images (few-shot supports, no training), scores, cost")
    b.add_argument("--data", default="../shared/data", help="folder of COCO keypoint folders, or one such folder")
    b.add_argument("--folders", nargs="*", default=None, help="only these sub-folders")
    b.add_argument("--ks", type=int, nargs="+", default=[1, 2, 5, 10, 20], help="labelled images per folder")
    b.add_argument("--max-queries", type=int, default=None, help="at most this many queries per folder and k (spread)")
    b.add_argument("--config", default=None, help="FewShotConfig JSON file (default: built-in)")
    b.add_argument("--engine-config", default=None, help="PredictorConfig JSON file of the engine (default: built-in)")
    b.add_argument("--out", default="bench-out/fewshot.json")
    b.add_argument("--no-plots", action="store_true", help="skip the PNG figure")
    b.set_defaults(func=bench_fewshot)
    b = bench.add_parser("speed", help="/predict latency, throughput, load time, memory and a 60 s load test (real LS)")
    b.add_argument("--data", default="../shared/data")
    b.add_argument("--repeats", type=int, default=10)
    b.add_argument("--load-seconds", type=float, default=60.0)
    b.add_argument("--kptllm-checkpoint", default=None, help="also time the kptllm engine in the scale sweep")
    b.add_argument("--out", default="bench-out/speed.json")
    b.set_defaults(func=bench_speed)
    b = bench.add_parser("all", help="accuracy (all pairs) + speed + memory + scale + load: the README's figures")
    b.add_argument("--data", default="../shared/data")
    b.add_argument("--max-queries", type=int, default=12, help="queries per support in large categories")
    b.add_argument("--kptllm-checkpoint", default=None, help="also score and time the kptllm engine of this checkpoint")
    b.add_argument("--out", default="bench-out/report.json")
    b.set_defaults(func=bench_all)
    b = bench.add_parser("finetune", help="train the tiny kptllm preset on n frames of a video folder, PCK on the rest")
    b.add_argument("--data", default="../shared/data/dlc__openfield_mouse", help="one COCO keypoint folder")
    b.add_argument("--frames", type=int, default=20, help="training frames, evenly spread")
    b.add_argument("--steps", type=int, default=600)
    b.add_argument("--save-checkpoint", action="store_true", help="keep the trained model beside the report")
    b.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    b.add_argument("--out", default="bench-out/finetune.json")
    b.set_defaults(func=bench_finetune)
    b = bench.add_parser("loop", help="annotate-correct-retrain curve: PCK after k corrected frames, retraining time")
    b.add_argument("--data", default="../shared/data/dlc__openfield_mouse", help="one COCO keypoint folder (a video)")
    b.add_argument("--k", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    b.add_argument("--steps", type=int, default=300, help="optimiser steps per retraining (warm-started)")
    b.add_argument("--budget", type=float, default=55.0, help="seconds per retraining, evidence included (0: no limit)")
    b.add_argument("--busy", type=int, default=0, help="processes keeping one core each busy throughout (other work)")
    b.add_argument("--fixed-threads", action="store_true", help="train every step on --threads (no AdaptiveThreads)")
    b.add_argument("--threads", type=int, default=2, help=THREADS_HELP + " (default: a training job's default)")
    b.add_argument("--orders", nargs="+", choices=["random", "spread"], default=["random", "spread"], help="labelling orders")
    b.add_argument("--sleap-venv", default=None, help="peer column: a virtualenv with sleap-nn (bench/peer.py says how)")
    b.add_argument("--peer-steps", type=int, default=600, help="sleap-nn training steps per k (from scratch)")
    b.add_argument("--peer-scale", type=float, default=None, help="sleap-nn input scale (default: its generator's)")
    b.add_argument("--peer-batch", type=int, default=None, help="sleap-nn batch size (default: its generator's)")
    b.add_argument("--peer-threads", type=int, default=None, help="sleap-nn's torch threads (default: --threads)")
    b.add_argument("--out", default="bench-out/loop.json")
    b.set_defaults(func=bench_loop)
    b = bench.add_parser("models", help="RSS with many projects each serving its own fine-tuned version, per model cap")
    b.add_argument("--data", default="../shared/data", help="folder holding dlc__openfield_mouse")
    b.add_argument("--projects", type=int, default=50)
    b.add_argument("--caps", type=int, nargs="+", default=[8, 50], help="KPASSIST_MAX_LOADED_MODELS values to compare")
    b.add_argument("--out", default="bench-out/models.json")
    b.set_defaults(func=bench_models)
    b = bench.add_parser("scale-ls", help="/setup and /predict latency against a real Label Studio, 10 to 10,000 annotated tasks")
    b.add_argument("--data", default="../shared/data", help="folder holding dlc__openfield_mouse")
    b.add_argument("--sizes", type=int, nargs="+", default=[10, 500, 2000, 10000], help="annotated tasks per project")
    b.add_argument("--repeats", type=int, default=20)
    b.add_argument("--backend-python", default="", help="interpreter of the backend to measure (default: this one)")
    b.add_argument("--backend-dir", default="", help="its source folder (default: this checkout)")
    b.add_argument("--out", default="bench-out/scale-ls.json")
    b.set_defaults(func=bench_scale_ls)
    b = bench.add_parser("prelabel", help="whole-project pre-labelling on 1 and 2 RQ workers, and a worker killed mid-chunk")
    b.add_argument("--data", default="../shared/data", help="folder holding dlc__openfield_mouse")
    b.add_argument("--tasks", type=int, default=1000, help="tasks per project")
    b.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="worker processes of each run (1 thread each)")
    b.add_argument("--kill-tasks", type=int, default=200, help="tasks of the run whose worker is killed (0: no such run)")
    b.add_argument("--chunk", type=int, default=50, help="KPASSIST_PRELABEL_CHUNK")
    b.add_argument("--frames", type=int, default=50, help="distinct mouse frames the tasks cycle through")
    b.add_argument("--out", default="bench-out/prelabel.json")
    b.set_defaults(func=bench_prelabel)
    b = bench.add_parser("instances", help="several individuals per image: count, OKS-matched PCK, precision/recall")
    b.add_argument("--data", default="../shared/data", help="folder of COCO keypoint folders (multi-instance ones are used)")
    b.add_argument("--coco", nargs="*", default=[], help="more COCO keypoint folders to include")
    b.add_argument("--folders", nargs="*", default=None, help="only these folders")
    b.add_argument("--max-supports", type=int, default=4, help="supports per folder at most (all-pairs)")
    b.add_argument("--max-queries", type=int, default=None, help="queries per support at most")
    b.add_argument("--engine-config", default=None, help="PredictorConfig JSON file (default: built-in)")
    b.add_argument("--no-tune", action="store_true", help="use the engine's count rule instead of tuning it on half A")
    b.add_argument(
        "--composite", default="dlc__openfield_mouse", help="video folder of --data made into 1-4 animal composites ('' none)"
    )
    b.add_argument("--composite-images", type=int, default=24, help="images per composite set (2 x 2 cells, 1 to 4 animals)")
    b.add_argument("--out", default="bench-out/instances.json")
    b.add_argument("--no-plots", action="store_true", help="skip the PNG overlays")
    b.set_defaults(func=bench_instances)
    b = bench.add_parser("device", help="the learned model trained and predicted on an accelerator, against the CPU")
    b.add_argument("--device", default="cuda", help="torch device to check (cuda, cuda:1, mps, cpu)")
    b.add_argument("--steps", type=int, default=300, help="training steps of the tiny preset on synthetic images")
    b.add_argument("--threads", type=int, default=2, help=THREADS_HELP)
    b.add_argument("--out", default="bench-out/device.json")
    b.set_defaults(func=bench_device)
    b = bench.add_parser("contention", help="/predict latency idle and while the worker trains, per KPASSIST_TRAIN_THREADS")
    b.add_argument("--data", default="../shared/data", help="folder holding dlc__openfield_mouse")
    b.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    b.add_argument("--steps", type=int, default=300, help="KPASSIST_TRAIN_STEPS of the training job")
    b.add_argument("--repeats", type=int, default=15)
    b.add_argument("--nice", type=int, nargs="+", default=[0, 10], help="KPASSIST_JOB_NICE values (0: no priority)")
    b.add_argument("--out", default="bench-out/contention.json")
    b.set_defaults(func=bench_contention)
    args = parser.parse_args(argv)
    out = getattr(args, "out", None)
    if out is not None and Path(out).is_dir():  # found before a run of minutes, not when its report is written
        parser.error(f"--out {out} is a folder: name the JSON report file, e.g. {Path(out) / 'report.json'}")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
