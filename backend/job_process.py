"""What every RQ job process sets up first: logging for kpassist's loggers and bounded compute threads."""

from __future__ import annotations

import logging
import os


def job_logging() -> None:
    """rq configures only its own logger: give kpassist's loggers (progress lines) a handler in the job process."""
    if not logging.getLogger().handlers:
        level = os.environ.get("KPASSIST_LOG_LEVEL", "INFO").upper()
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def limit_threads(n: int) -> None:
    """Bound the compute threads of this (job) process: torch's intra-op pool and OpenCV's, so training leaves the
    machine's other cores to /predict."""
    import cv2
    import torch

    torch.set_num_threads(n)
    cv2.setNumThreads(n)
