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
    f = ImageFetcher(None, local_root=tmp_path)
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
        ImageFetcher(None, local_root=tmp_path).fetch(make(tmp_path))


def test_truncated_image(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match="not a readable image"):
        ImageFetcher(None, local_root=tmp_path).fetch(str(tmp_path / "cut.png"))


def test_pixel_cap_and_local_root(tmp_path: Path) -> None:
    big = png(tmp_path / "big.png", (300, 300))
    with pytest.raises(ImageLoadError, match="pixel limit"):
        ImageFetcher(None, local_root=tmp_path, max_pixels=10_000).fetch(str(big))
    with pytest.raises(ImageLoadError, match="KPASSIST_LOCAL_ROOT"):
        ImageFetcher(None).fetch(str(big))  # no local root: no local file is read
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


def test_http_download_size_cap_and_no_redirects(tmp_path: Path) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = io.BytesIO()
    Image.new("RGB", (20, 10), (5, 6, 7)).save(body, format="PNG")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/img.png":
                self.send_response(200)
                self.send_header("Content-Length", str(len(body.getvalue())))
                self.end_headers()
                self.wfile.write(body.getvalue())
            else:
                self.send_response(302)
                self.send_header("Location", "http://example.invalid/evil.png")
                self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    allowed = ("127.0.0.1",)
    try:
        assert ImageFetcher(None, allowed_hosts=allowed).fetch(f"{base}/img.png").shape == (10, 20, 3)
        with pytest.raises(ImageLoadError, match="KPASSIST_ALLOWED_HOSTS"):
            ImageFetcher(None).fetch(f"{base}/img.png")  # a host nobody allowed
        with pytest.raises(ImageLoadError, match="redirects are not followed"):
            ImageFetcher(None, allowed_hosts=allowed).fetch(f"{base}/moved.png")
        with pytest.raises(ImageLoadError, match="byte image limit"):
            ImageFetcher(None, allowed_hosts=allowed, max_bytes=10).fetch(f"{base}/img.png")
    finally:
        server.shutdown()


def test_label_studio_files_are_fetched_with_its_token(tmp_path: Path) -> None:
    """Protocol fact: the backend downloads ``hostname + /data/upload/...`` with ``Authorization: Token <key>``; a
    personal access token (a JWT) is exchanged at /api/token/refresh and sent as ``Bearer``."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from backend.ls_client import LabelStudioClient

    body = io.BytesIO()
    Image.new("RGB", (12, 8), (1, 2, 3)).save(body, format="PNG")
    seen: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append((self.path, self.headers.get("Authorization", "")))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body.getvalue())))
            self.end_headers()
            self.wfile.write(body.getvalue())

        def do_POST(self) -> None:  # noqa: N802
            payload = json.dumps({"access": "short-lived-access"}).encode()
            seen.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))["refresh"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        legacy = ImageFetcher(LabelStudioClient(url, "legacy0123"))
        assert legacy.fetch("/data/upload/3/abc-frame.png").shape == (8, 12, 3)
        assert seen[-1] == ("/data/upload/3/abc-frame.png", "Token legacy0123")
        jwt = "header.payload.signature"
        ImageFetcher(LabelStudioClient(url, jwt)).fetch("/data/upload/3/abc-frame.png")
        assert seen[-2:] == [("/api/token/refresh", jwt), ("/data/upload/3/abc-frame.png", "Bearer short-lived-access")]
    finally:
        server.shutdown()
