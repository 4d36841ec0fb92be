"""Operations on the matcher's stride grids (vote maps, similarity maps): dilation, shifted sums, sub-cell peaks."""

from __future__ import annotations

import cv2
import numpy as np


def dilate_stack(maps: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """cv2.dilate of each (H, W) map of an (N, H, W) float32 stack. One call per map, written in place: 3-6x faster
    than dilating channel-interleaved blocks, whose two transposing copies cost more than the dilation."""
    out = np.empty_like(maps)
    for i in range(len(maps)):
        cv2.dilate(maps[i], kernel, dst=out[i])
    return out


def add_shifted(acc: np.ndarray, src: np.ndarray, dx: int, dy: int) -> None:
    """acc[y, x] += src[y + dy, x + dx] where defined (centre c gets the vote of keypoint at c + d)."""
    h, w = acc.shape
    y0, y1 = max(0, -dy), min(h, h - dy)
    x0, x1 = max(0, -dx), min(w, w - dx)
    if y0 < y1 and x0 < x1:
        acc[y0:y1, x0:x1] += src[y0 + dy : y1 + dy, x0 + dx : x1 + dx]


def subpixel(score: np.ndarray, x: int, y: int) -> tuple[float, float]:
    """Quadratic sub-cell offset of a peak, each axis in [-0.5, 0.5]."""
    h, w = score.shape
    ox = oy = 0.0
    if 0 < x < w - 1:
        left, c, right = score[y, x - 1], score[y, x], score[y, x + 1]
        den = left - 2 * c + right
        ox = float(np.clip(0.5 * (left - right) / den, -0.5, 0.5)) if den < 0 else 0.0
    if 0 < y < h - 1:
        t, c, b = score[y - 1, x], score[y, x], score[y + 1, x]
        den = t - 2 * c + b
        oy = float(np.clip(0.5 * (t - b) / den, -0.5, 0.5)) if den < 0 else 0.0
    return ox, oy


def local_peaks(score: np.ndarray, radius: int, n: int) -> list[tuple[float, int, int]]:
    """The ``n`` highest local maxima of an (H, W) float32 map, each the largest value within ``radius`` cells:
    [(value, x, y)], highest first."""
    size = 2 * max(1, radius) + 1
    peak = score >= cv2.dilate(score, np.ones((size, size), np.uint8))
    ys, xs = np.nonzero(peak)
    vals = score[ys, xs]
    order = np.argsort(-vals, kind="stable")[:n]
    return [(float(vals[i]), int(xs[i]), int(ys[i])) for i in order]
