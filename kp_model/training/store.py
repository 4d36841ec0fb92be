"""Versioned model store of one project: every training run is kept as a version (checkpoint + record), and
one version is *served*. Everything is written atomically (temporary file/directory + rename), so a crash at
any point leaves the previous served model in place and no half-written version visible.

<root>/
  versions/v0001/            checkpoint (kp_model.kptllm.checkpoint), present once complete
  versions/v0001.json        record: status, metrics, annotation ids, config, duration, times
  served.json                {"version": "v0001"}; absent: the default engine is served
  split.json                 {"<image group>": "train" | "heldout"}: the fixed held-out split
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from kp_model.build import PredictorConfig
from kp_model.files import write_json_atomic

_VERSION = re.compile(r"^v(\d{4,})$")


class StoreError(RuntimeError):
    """A version is missing or a record is unreadable."""


class ModelStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"

    def versions(self) -> list[str]:
        """Versions with a record, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        names = [p.stem for p in self.versions_dir.glob("v*.json") if _VERSION.match(p.stem)]
        return sorted(names, key=lambda n: int(n[1:]))

    def next_version(self) -> str:
        """A version name not used by any record or checkpoint directory."""
        used = [
            int(m.group(1))
            for p in (self.versions_dir.iterdir() if self.versions_dir.is_dir() else [])
            if (m := _VERSION.match(p.name.removesuffix(".json")))
        ]
        return f"v{max(used, default=0) + 1:04d}"

    def checkpoint_dir(self, version: str) -> Path:
        return self.versions_dir / version

    def record(self, version: str) -> dict:
        path = self.versions_dir / f"{version}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise StoreError(f"version record {path} unreadable: {exc}") from exc

    def records(self) -> list[dict]:
        return [self.record(v) for v in self.versions()]

    def write_record(self, version: str, record: dict) -> None:
        write_json_atomic(self.versions_dir / f"{version}.json", {**record, "version": version})

    def latest(self) -> str | None:
        """The newest version with a record and a complete checkpoint (promoted or not), or None."""
        for version in reversed(self.versions()):
            if (self.checkpoint_dir(version) / "config.json").is_file():
                return version
        return None

    def served(self) -> str | None:
        """The served version, or None (default engine). A served version always has a complete checkpoint."""
        path = self.root / "served.json"
        if not path.is_file():
            return None
        try:
            version = json.loads(path.read_text())["version"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise StoreError(f"{path} unreadable: {exc}") from exc
        return version

    def predictor_config(self, default: PredictorConfig, version: str | None = None) -> PredictorConfig:
        """The config that serves ``version`` (None: the served one): its checkpoint on ``default``'s device, or
        ``default`` itself while no version is served. ``kp_model.build.build_predictor`` turns it into a predictor."""
        version = version or self.served()
        if version is None:
            return default
        return PredictorConfig(engine="kptllm", checkpoint=str(self.checkpoint_dir(version)), device=default.device)

    def promote(self, version: str) -> None:
        """Serve ``version`` from now on (its checkpoint must be complete)."""
        if not (self.checkpoint_dir(version) / "config.json").is_file():
            raise StoreError(f"cannot serve {version}: its checkpoint {self.checkpoint_dir(version)} is incomplete or missing")
        write_json_atomic(self.root / "served.json", {"version": version})

    def serve_previous(self, version: str, previous: str | None, reason: str) -> None:
        """Roll ``version`` back: serve ``previous`` (None: the default engine) and note why in ``version``'s record
        (``rolled_back``: to, reason, time)."""
        record = self.record(version)
        record["rolled_back"] = {"to": previous, "reason": reason, "at": time.time()}
        self.write_record(version, record)
        if previous is None:
            (self.root / "served.json").unlink(missing_ok=True)
        else:
            self.promote(previous)

    def split(self) -> dict[str, str]:
        path = self.root / "split.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, json.JSONDecodeError) as exc:
            raise StoreError(f"{path} unreadable: {exc}") from exc

    def write_split(self, split: dict[str, str]) -> None:
        write_json_atomic(self.root / "split.json", split)

    def clean_partial(self) -> list[str]:
        """Remove temporary leftovers of crashed runs (call under the project's training lock)."""
        removed = []
        if self.versions_dir.is_dir():
            for p in self.versions_dir.iterdir():
                if p.name.startswith(".") and p.name.endswith(".tmp"):
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
                    removed.append(p.name)
        return removed
