"""Benchmark figures: PCK per dataset (engines side by side) and an overlay grid for eyeballing quality."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kp_model.build import PredictorConfig, build_predictor
from kp_model.coco import load_coco_keypoints
from kp_model.evaluation.protocol import best_instance, one_shot_pairs, support_instance
from kp_model.images import load_image_rgb


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def pck_bars(report: dict, out: Path, metric: str = "pck@0.2") -> Path:
    """Bar chart of ``metric`` per folder for every engine of the report."""
    plt = _pyplot()
    folders = list(report["folders"])
    engines = list(next(iter(report["folders"].values())))
    width = 0.8 / len(engines)
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(folders)), 4.5))
    x = np.arange(len(folders))
    for i, engine in enumerate(engines):
        ax.bar(x + i * width, [report["folders"][f][engine][metric] for f in folders], width, label=engine)
    ax.set_xticks(x + width * (len(engines) - 1) / 2)
    ax.set_xticklabels([f.replace("mmpose__", "") for f in folders], rotation=70, ha="right", fontsize=8)
    ax.set_ylabel(metric.upper())
    ax.set_ylim(0, 1)
    ax.set_title(f"one-shot {metric.upper()} per dataset")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def overlay_grid(folders: list[Path], out: Path, cfg: PredictorConfig | None = None, queries: int = 3) -> Path:
    """One row per folder: the support with its keypoints, then ``queries`` queries with predictions (red)
    against the ground truth (green) of the instance they match best."""
    plt = _pyplot()
    predictor = build_predictor(cfg)
    fig, axes = plt.subplots(len(folders), queries + 1, figsize=(3.2 * (queries + 1), 2.6 * len(folders)), squeeze=False)
    for row, folder in zip(axes, folders, strict=True):
        for ax in row:
            ax.axis("off")
        pairs = list(one_shot_pairs(load_coco_keypoints(folder)))[:queries]
        if not pairs:
            continue
        sup = pairs[0][0]
        inst = support_instance(sup)
        mask = inst.visible
        names = [n for n, m in zip(sup.keypoint_names, mask, strict=True) if m]
        support = load_image_rgb(sup.image_path)
        predictor.set_support(support, inst.keypoints[mask, :2], names)
        row[0].imshow(support)
        row[0].scatter(*inst.keypoints[mask, :2].T, s=8, c="lime")
        row[0].set_title(f"{folder.name.replace('mmpose__', '')}: support", fontsize=8)
        for ax, (_, query) in zip(row[1:], pairs, strict=False):
            image = load_image_rgb(query.image_path)
            pred = np.full((len(mask), 2), np.nan)
            pred[mask] = predictor.predict([image])[0].points
            found = best_instance(pred, mask, query)
            ax.imshow(image)
            ax.scatter(*pred[mask].T, s=10, facecolors="none", edgecolors="red")
            if found is None:
                ax.set_title("no ground truth to compare", fontsize=8)
                continue
            inst, errors = found  # the instance the PCK in the title is measured against
            ax.scatter(*inst.keypoints[mask & inst.visible, :2].T, s=8, c="lime")
            ax.set_title(f"PCK@0.2 {np.mean(errors <= 0.2):.2f}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def scale_plot(scale: dict, out: Path) -> Path:
    """Predict latency and process peak memory against image size and keypoint count, one line per engine."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for engine, rows in scale["image_size"].items():
        x = [r["longer_side_px"] for r in rows]
        axes[0].plot(x, [r["predict_median_s"] for r in rows], "o-", label=engine)
        axes[1].plot(x, [r["peak_rss_mb"] for r in rows], "o-", label=engine)
    for engine, rows in scale["keypoints"].items():
        axes[2].plot([r["keypoints"] for r in rows], [r["predict_median_s"] for r in rows], "o-", label=engine)
    axes[0].set(xlabel="image longer side (px)", ylabel="predict time (s)", xscale="log", yscale="log")
    axes[1].set(xlabel="image longer side (px)", ylabel="process peak RSS so far (MB)", xscale="log")
    axes[2].set(xlabel="keypoints in the support", ylabel="predict time (s)")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def fewshot_curves(report: dict, out: Path) -> Path:
    """PCK@0.2 against k labelled images: few-shot vs copying the nearest labelled image, per half and overall."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for tag, style in (("all", "-"), ("half_a", ":"), ("half_b", "--")):
        rows = report["summary"][tag]
        ks = sorted(int(k) for k in rows if str(k).isdigit())
        for engine, colour in (("fewshot", "tab:blue"), ("copy_nearest", "tab:grey")):
            ax.plot(ks, [rows[k][f"{engine}_pck@0.2"] for k in ks], style, color=colour, marker="o", label=f"{engine} {tag}")
    for name, row in report["folders"].items():
        if row["video"]:
            ks = sorted(int(k) for k in row["k"])
            ax.plot(ks, [row["k"][k]["fewshot"]["pck@0.2"] for k in ks], "-", color="tab:red", marker="s", label=name)
    ax.set_xscale("log")
    ax.set_xticks([1, 2, 5, 10, 20])
    ax.set_xticklabels(["1", "2", "5", "10", "20"])
    ax.set_xlabel("labelled images k (no training)")
    ax.set_ylabel("PCK@0.2 on the unlabelled images")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def instance_overlays(records: list[dict], counts: dict[int, int], out: Path, per_folder: int = 1) -> Path:
    """The first ``per_folder`` query of each folder: annotated instances (green crosses) and the estimated
    instances (one colour each, circles joined to their box); ``counts`` maps a record's index to its estimate."""
    plt = _pyplot()
    chosen, seen = [], {}
    for i, r in enumerate(records):
        if seen.get(r["folder"], 0) < per_folder:
            seen[r["folder"]] = seen.get(r["folder"], 0) + 1
            chosen.append(i)
    cols = 4
    rows = max(1, -(-len(chosen) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows), squeeze=False)
    for ax, i in zip(axes.ravel(), chosen, strict=False):
        r = records[i]
        ax.imshow(load_image_rgb(Path(r["data"]) / r["folder"] / "images" / r["query"]))
        for t in r["truths"]:
            p = t.keypoints[t.counted]
            ax.plot(p[:, 0], p[:, 1], "g+", ms=6)
        for j, pts in enumerate(r["ranked"][: counts[i]]):
            colour = plt.cm.tab10(j % 10)
            ax.plot(pts[:, 0], pts[:, 1], "o", ms=3, color=colour)
            ok = np.isfinite(pts).all(axis=1)
            if ok.any():
                x0, y0 = pts[ok].min(axis=0)
                x1, y1 = pts[ok].max(axis=0)
                ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=colour, lw=1))
        ax.set_title(f"{r['folder'].replace('mmpose__', '')}: {counts[i]} found / {r['true']} true", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
