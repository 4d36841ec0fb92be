"""Ready Label Studio labelling configs for common keypoint sets (XML files beside this module)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def names() -> list[str]:
    """Names of the shipped configs (file stems)."""
    return sorted(p.stem for p in HERE.glob("*.xml"))


def read(name: str) -> str:
    """XML text of a shipped config, e.g. ``read("mouse_topview_4")``."""
    path = HERE / f"{name}.xml"
    if not path.is_file():
        raise FileNotFoundError(f"no label config {name!r}; available: {', '.join(names())}")
    return path.read_text()
