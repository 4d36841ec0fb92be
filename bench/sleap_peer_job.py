"""One sleap-nn peer run, executed by the python of sleap-nn's own virtualenv (never kpassist's): train the
single-instance model sleap-nn's config generator recommends for the labelled frames, from scratch, for a fixed
number of steps, predict the test frames, write the points as JSON.

python -I bench/sleap_peer_job.py JOB.json OUT.json   (-I: this folder's http.py must not shadow the standard library)

JOB: {"names": [K], "train": [{"image": png, "points": [[x, y] | [null, null]] * K}], "test": [png], "steps": int,
"threads": int, "workdir": dir, "scale": float | null, "batch_size": int | null (null: the generator's)}.
OUT: {"points": [[[x, y] | [null, null]] * K] per test image, "train_s", "predict_s"}.
Imports only the standard library, numpy, sleap-io and sleap-nn (this file is not part of the kpassist packages' API).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main(job_path: str, out_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    os.environ["OMP_NUM_THREADS"] = str(job["threads"])
    import numpy as np
    import sleap_io as sio
    import torch
    from sleap_nn import predict
    from sleap_nn.config_generator.generator import ConfigGenerator
    from sleap_nn.train import run_training

    torch.set_num_threads(job["threads"])
    work = Path(job["workdir"])
    skeleton = sio.Skeleton(nodes=job["names"])
    video = sio.Video.from_filename([t["image"] for t in job["train"]])
    frames = [
        sio.LabeledFrame(
            video=video,
            frame_idx=i,
            instances=[sio.Instance.from_numpy(np.array(t["points"], dtype=float), skeleton=skeleton)],
        )
        for i, t in enumerate(job["train"])
    ]
    labels_path = work / "train.slp"
    labels = sio.Labels(labeled_frames=frames, videos=[video], skeletons=[skeleton])
    labels.save(str(labels_path))
    # sleap-nn's own recommendation for this data (its config generator, as its web app and `sleap-nn config` give it),
    # single-instance; only the budget is ours: a fixed number of steps on the CPU, no early stopping
    cfg = ConfigGenerator.from_labels(labels).auto().pipeline("single_instance").build()
    if job.get("scale"):  # the budget's other knob: input scale (the generator says 1.0 for 640x480)
        cfg.data_config.preprocessing.scale = job["scale"]
    if job.get("batch_size"):
        cfg.trainer_config.train_data_loader.batch_size = job["batch_size"]
    steps_per_epoch = min(100, job["steps"])
    cfg.data_config.train_labels_path = [str(labels_path)]
    cfg.data_config.use_same_data_for_val = True  # every labelled frame trains (a held-out 1-5 frames would be most)
    trainer = cfg.trainer_config
    trainer.max_epochs = max(1, round(job["steps"] / steps_per_epoch))
    trainer.min_train_steps_per_epoch = steps_per_epoch
    trainer.train_steps_per_epoch = steps_per_epoch
    trainer.trainer_accelerator = "cpu"
    trainer.enable_progress_bar = False
    trainer.early_stopping.stop_training_on_plateau = False
    trainer.save_ckpt = True
    trainer.ckpt_dir = str(work / "models")
    trainer.run_name = "peer"
    t0 = time.perf_counter()
    run_training(cfg)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    test = sio.Video.from_filename(job["test"])
    predicted = predict(test, model_paths=[str(work / "models" / "peer")], device="cpu", batch_size=4)
    points = np.full((len(job["test"]), len(job["names"]), 2), np.nan)
    for lf in predicted.labeled_frames:
        if lf.instances:
            points[lf.frame_idx] = lf.instances[0].numpy()[:, :2]
    out = {
        "points": [[[None if np.isnan(v) else float(v) for v in p] for p in img] for img in points],
        "train_s": train_s,
        "predict_s": time.perf_counter() - t0,
    }
    Path(out_path).write_text(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
