"""Fetching a task's image from where Label Studio says it is."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
import requests

from backend.ls_client import LabelStudioClient, LabelStudioError, read_limited
from kp_model.images import ImageLoadError, decode_image


class ImageFetcher:
    """Resolves task image references to RGB arrays.

    Handles Label Studio paths (``/data/upload/...``, ``/data/local-files/?d=...``; fetched from the
    Label Studio server with its token), http(s) URLs, ``file://`` URLs and local paths.

    Where images may come from: the Label Studio host, the ``allowed_hosts``, and files under
    ``local_root`` (which also serves ``/data/local-files`` from disk). Without a ``local_root`` no local
    file is read. Redirects are not followed; size and time are capped.
    """

    def __init__(
        self,
        client: LabelStudioClient | None,
        local_root: Path | None = None,
        allowed_hosts: tuple[str, ...] = (),
        max_bytes: int = 50_000_000,
        max_pixels: int = 64_000_000,
        timeout_s: float = 20.0,
    ) -> None:
        self.client = client
        self.local_root = local_root.resolve() if local_root else None
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        if client is not None:
            self.allowed_hosts.add((urlparse(client.url).hostname or "").lower())
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.timeout_s = timeout_s

    def fetch(self, ref: object) -> np.ndarray:
        """(H, W, 3) uint8 RGB image for a task's image reference.

        Raises:
            ImageLoadError: with the reference and what went wrong (missing, refused, not an image, ...).
        """
        if not isinstance(ref, str) or not ref.strip():
            raise ImageLoadError(f"task image reference must be a non-empty string, got {ref!r}")
        return decode_image(self._bytes(ref.strip()), ref, self.max_pixels)

    def _bytes(self, ref: str) -> bytes:
        parsed = urlparse(ref)
        if ref.startswith("/data/local-files") and self.local_root is not None:
            d = parse_qs(parsed.query).get("d", [""])[0]
            return self._read_local(self.local_root / unquote(d))
        if ref.startswith("/data/") or ref.startswith("data/"):
            if self.client is None:
                raise ImageLoadError(
                    f"{ref}: a Label Studio file, but no Label Studio URL is known: connect from Label Studio "
                    "or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"
                )
            try:
                return self.client.get_bytes(ref, self.max_bytes)
            except (LabelStudioError, ValueError) as exc:
                raise ImageLoadError(f"{ref}: {exc}") from exc
        if parsed.scheme in ("http", "https"):
            return self._download(ref)
        if parsed.scheme == "file":
            return self._read_local(Path(unquote(parsed.path)))
        if parsed.scheme in ("",) or len(parsed.scheme) == 1:  # plain path (or a Windows drive letter)
            return self._read_local(Path(ref))
        raise ImageLoadError(f"{ref}: unsupported image URL scheme {parsed.scheme!r} (use http(s), file or a path)")

    def _download(self, url: str) -> bytes:
        host = (urlparse(url).hostname or "").lower()
        if host not in self.allowed_hosts:
            raise ImageLoadError(
                f"{url}: host {host!r} is not Label Studio's nor allowed; add it to KPASSIST_ALLOWED_HOSTS to fetch from it"
            )
        headers = {}
        if self.client is not None and url.startswith(self.client.url):
            headers = self.client.auth_header()
        try:
            with requests.get(url, headers=headers, timeout=self.timeout_s, stream=True, allow_redirects=False) as resp:
                if resp.is_redirect:
                    raise ImageLoadError(
                        f"{url}: redirects are not followed (to {resp.headers.get('Location')!r}); use the final URL"
                    )
                if resp.status_code >= 400:
                    raise ImageLoadError(f"{url}: HTTP {resp.status_code} when downloading the image")
                return read_limited(resp, self.max_bytes, url)
        except requests.RequestException as exc:
            raise ImageLoadError(f"{url}: download failed ({exc})") from exc
        except ValueError as exc:
            raise ImageLoadError(str(exc)) from exc

    def _read_local(self, path: Path) -> bytes:
        if self.local_root is None:
            raise ImageLoadError(f"{path}: local files are not served; set KPASSIST_LOCAL_ROOT to the directory that holds them")
        resolved = path.resolve()
        if not resolved.is_relative_to(self.local_root):
            raise ImageLoadError(f"{path}: outside the allowed local root {self.local_root} (KPASSIST_LOCAL_ROOT)")
        if not resolved.is_file():
            raise ImageLoadError(f"{path}: no such image file")
        size = resolved.stat().st_size
        if size > self.max_bytes:
            raise ImageLoadError(f"{path}: {size} bytes is over the {self.max_bytes}-byte image limit")
        return resolved.read_bytes()
