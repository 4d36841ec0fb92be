"""WSGI entry for gunicorn: ``gunicorn 'backend.wsgi:create()'`` (the app is built when called, not at import)."""

from __future__ import annotations

import logging
import os

from flask import Flask


def create() -> Flask:
    from backend.app import create_app

    logging.basicConfig(
        level=os.environ.get("KPASSIST_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return create_app()
