"""The benchmark report: schema and figures (numbers are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.cli import main
from tests.conftest import DATA

pytestmark = pytest.mark.slow


def test_bench_report_schema_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    assert (
        main(["bench", "oneshot", "--data", str(DATA), "--folders", "mmpose__zebra_zebra", "mmpose__fly_fly", "--out", str(out)])
        == 0
    )
    report = json.loads(out.read_text())
    assert set(report) >= {"protocol", "engine_version", "engine_config", "machine", "seconds", "summary", "folders"}
    assert set(report["machine"]) >= {"cpu", "cpus", "python", "numpy", "platform"}
    assert set(report["folders"]) == {"mmpose__zebra_zebra", "mmpose__fly_fly"}
    for engines in report["folders"].values():
        assert set(engines) == {"oneshot", "copy"}
        for metrics in engines.values():
            assert set(metrics) >= {"pck@0.05", "pck@0.1", "pck@0.2", "mean_error", "pairs", "keypoints", "seconds_per_pair"}
            assert 0 <= metrics["pck@0.2"] <= 1 and metrics["pairs"] == 1
    assert set(report["summary"]) == {"all_folders", "mmpose_mean"}
    assert out.with_suffix(".md").read_text().startswith("| set |")
    for png in ("report-pck.png", "report-overlays.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
