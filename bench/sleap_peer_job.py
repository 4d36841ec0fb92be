"""One sleap-nn peer run, executed by the python of sleap-nn's own virtualenv (never kpassist's): train a
single-instance UNet from scratch on the labelled frames, predict the test frames, write the points as JSON.

python -I bench/sleap_peer_job.py JOB.json OUT.json   (-I: this folder's http.py must not shadow the standard library)

JOB: {"names": [K], "train": [{"image": png, "points": [[x, y] | [null, null]] * K}], "test": [png], "steps": int,
"threads": int, "workdir": dir}. OUT: {"points": [[[x, y] | [null, null]] * K] per test image, "train_s", "predict_s"}.
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
    from sleap_nn.train import train

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
    sio.Labels(labeled_frames=frames, videos=[video], skeletons=[skeleton]).save(str(labels_path))
    steps_per_epoch = 100
    t0 = time.perf_counter()
    train(
        train_labels_path=[str(labels_path)],
        use_same_data_for_val=True,  # every labelled frame trains (a held-out frame of 1-5 would be most of them)
        backbone_config="unet",
        head_configs="single_instance",
        max_epochs=max(1, round(job["steps"] / steps_per_epoch)),
        min_train_steps_per_epoch=steps_per_epoch,
        trainer_accelerator="cpu",
        save_ckpt=True,
        ckpt_dir=str(work / "models"),
        run_name="peer",
        enable_progress_bar=False,
    )
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
