"""Bounding a process's compute threads: torch's intra-op pool, OpenCV's and the BLAS numpy links (OpenBLAS reads
its thread count once, at load, so it is set through threadpoolctl)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def limit_threads(n: int) -> None:
    """At most ``n`` compute threads per library in this process (a training job, a pre-labelling job, a worker
    process of ``kp_model.parallel``), so that the machine's other cores stay free for other work. torch is bounded
    now if loaded, else through OMP_NUM_THREADS when it loads (a prediction worker never imports it)."""
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    import cv2
    from threadpoolctl import threadpool_limits

    os.environ["OMP_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    cv2.setNumThreads(n)
    threadpool_limits(limits=n)  # numpy's OpenBLAS and any other BLAS/OpenMP pool loaded so far


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block, restored after: for torch work that runs beside busy
    worker processes (an OpenMP pool bigger than the cores left to it spins and runs several times slower)."""
    import torch

    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
