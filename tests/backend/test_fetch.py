import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.fetch import ImageFetcher
from kp_model.images import ImageLoadError


def png(path: Path, size: tuple[int, int] = (40, 30), exif_rotate: bool = False) -> Path:
    img = Image.new("RGB", size, (10, 20, 30))
    if exif_rotate:
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
        img.save(path, format="JPEG", exif=exif)
    else:
        img.save(path)
    return path


def test_local_path_file_url_and_exif(tmp_path: Path) -> None:
    f = ImageFetcher(None)
    assert f.fetch(str(png(tmp_path / "a.png"))).shape == (30, 40, 3)
    assert f.fetch(f"file://{tmp_path / 'a.png'}").dtype == np.uint8
    assert f.fetch(str(png(tmp_path / "r.jpg", exif_rotate=True))).shape == (40, 30, 3)  # EXIF applied


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: str(d / "missing.png"), "no such image file"),
        (lambda d: (d / "t.png").write_text("not an image") and str(d / "t.png"), "not a readable image"),
        (lambda d: str(png(d / "tiny.png", (1, 1))), "too small"),
        (lambda d: "ftp://host/x.png", "unsupported image URL scheme"),
        (lambda d: "/data/upload/1/x.png", "no Label Studio URL"),
        (lambda d: 42, "non-empty string"),
    ],
)
def test_bad_images_fail_clearly(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(ImageLoadError, match=message):
        ImageFetcher(None).fetch(make(tmp_path))


def test_truncated_image(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match="not a readable image"):
        ImageFetcher(None).fetch(str(tmp_path / "cut.png"))


def test_pixel_cap_and_local_root(tmp_path: Path) -> None:
    big = png(tmp_path / "big.png", (300, 300))
    with pytest.raises(ImageLoadError, match="pixel limit"):
        ImageFetcher(None, max_pixels=10_000).fetch(str(big))
    root = tmp_path / "root"
    root.mkdir()
    inside = png(root / "in.png")
    fetcher = ImageFetcher(None, local_root=root)
    assert fetcher.fetch(str(inside)).shape == (30, 40, 3)
    assert fetcher.fetch("/data/local-files/?d=in.png").shape == (30, 40, 3)
    with pytest.raises(ImageLoadError, match="outside the allowed local root"):
        fetcher.fetch(str(big))
    with pytest.raises(ImageLoadError, match="outside the allowed local root"):
        fetcher.fetch("/data/local-files/?d=../big.png")
