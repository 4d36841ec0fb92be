"""Fixtures of the backend tests: local images and an app whose support lookup points at them instead of a Label
Studio (the e2e tests use a real one)."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from backend.app import create_app
from backend.service import PredictionService
from backend.settings import Settings
from backend.support import SupportRef


class LocalSupportService(PredictionService):
    """The real service with the support lookup pointed at a local image instead of a Label Studio."""

    def __init__(self, settings: Settings, support: SupportRef | None) -> None:
        super().__init__(settings)
        self.support = support

    def find_supports(self, project, controls, conn):
        return [[self.support] if self.support else [] for _ in controls]


@pytest.fixture()
def images(tmp_path: Path, blob_image) -> dict:
    """Paths of a support, a query and a broken PNG under tmp_path, and the support's 3 points in percent ("pct")."""
    support, pts = blob_image()
    query, _ = blob_image(centre=(90, 60))
    paths = {"support": tmp_path / "s.png", "query": tmp_path / "q.png", "broken": tmp_path / "b.png"}
    cv2.imwrite(str(paths["support"]), support[..., ::-1])
    cv2.imwrite(str(paths["query"]), query[..., ::-1])
    paths["broken"].write_bytes(b"\x89PNG\r\n\x1a\n broken")
    h, w = support.shape[:2]
    out: dict = {k: str(v) for k, v in paths.items()}
    out["pct"] = [(float(x) * 100 / w, float(y) * 100 / h) for x, y in pts]
    return out


@pytest.fixture()
def support_ref(images: dict) -> SupportRef:
    """The blob support annotation (id 1) on the local support image."""
    names = ("snout", "leftear", "rightear")
    return SupportRef(1, "2026-01-01T00:00:00Z", 1, images["support"], names, tuple(images["pct"]))


@pytest.fixture(scope="session")
def local_service():
    """The PredictionService subclass whose supports are local (to derive test services from)."""
    return LocalSupportService


@pytest.fixture()
def make_client(tmp_path: Path):
    """make_client(support=None, **settings) -> (app, test client); images are read from tmp_path."""

    def make(support: SupportRef | None = None, service_class=LocalSupportService, **settings_kw):
        settings_kw.setdefault("queue_name", f"kpassist-test-{tmp_path.name}")
        settings = Settings(data_dir=str(tmp_path / "var"), local_root=str(tmp_path), **settings_kw)
        app = create_app(settings, service_class(settings, support))
        return app, app.test_client()

    return make
