"""What every RQ job process sets up first: logging for kpassist's loggers and bounded compute threads."""

from __future__ import annotations

import logging
import os

from kp_model.threads import limit_threads

__all__ = ["job_logging", "limit_threads"]


def job_logging() -> None:
    """rq configures only its own logger: give kpassist's loggers (progress lines) a handler in the job process."""
    if not logging.getLogger().handlers:
        level = os.environ.get("KPASSIST_LOG_LEVEL", "INFO").upper()
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
