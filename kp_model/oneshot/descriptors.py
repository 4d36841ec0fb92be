"""Dense hand-crafted local descriptors (DAISY-like) for weight-free one-shot matching.

A descriptor at a point concatenates, over a centre sample and two rings of samples around it,
Gaussian-pooled gradient-orientation histograms and pooled colour. Everything is in *working pixels*
of the image it is computed on; the caller picks the working scale so that objects have a known size.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class DescriptorConfig:
    object_size: int = 64  # working size (px) the support object's keypoint extent is rescaled to
    orientations: int = 8  # gradient-orientation bins (over 360 degrees if signed, else 180)
    signed: bool = True  # signed gradients tell dark-on-light from light-on-dark (same individual); unsigned do not
    ring_points: int = 8  # samples on each of the two rings around the centre
    ring_radii: tuple[float, float] = (0.15, 0.35)  # ring radii as fractions of object_size
    sigmas: tuple[float, float, float] = (0.05, 0.09, 0.16)  # pooling sigma of centre/ring1/ring2 (fraction of object_size)
    colour_weight: float = 0.35  # weight of the pooled Lab colour relative to the gradient part
    stride: int = 2  # sampling step (working px) of dense query maps

    def __post_init__(self) -> None:
        if self.object_size < 16:
            raise ValueError(f"object_size must be >= 16 px, got {self.object_size}")
        if self.orientations < 4:
            raise ValueError(f"orientations must be >= 4, got {self.orientations}")
        if self.ring_points < 4:
            raise ValueError(f"ring_points must be >= 4, got {self.ring_points}")
        if len(self.ring_radii) != 2 or not 0 < self.ring_radii[0] < self.ring_radii[1]:
            raise ValueError(f"ring_radii must be two increasing positive fractions, got {self.ring_radii}")
        if len(self.sigmas) != 3 or min(self.sigmas) <= 0:
            raise ValueError(f"sigmas must be three positive fractions, got {self.sigmas}")
        if self.colour_weight < 0:
            raise ValueError(f"colour_weight must be >= 0, got {self.colour_weight}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")


_COPY_BLOCK_BYTES = 1 << 20  # dense samples are gathered by blocks of rows of about this size (3x faster than whole
# sample planes on a 384-cell-wide grid: the strided writes stay in the CPU's cache)


class PooledChannels:
    """Orientation + colour channels of one image, Gaussian-pooled at the three descriptor sigmas.

    Args:
        image: (H, W, 3) uint8 RGB image at working scale.
        valid: optional (H, W) float mask, 1 where the pixels are real image content (0 on padding);
            descriptor samples falling where it is < 0.5 are left out of the similarity.
    """

    def __init__(
        self, image: np.ndarray, cfg: DescriptorConfig, valid: np.ndarray | None = None, norm_floor: float | None = None
    ) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        self.cfg = cfg
        self.height, self.width = image.shape[:2]
        lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32) / 255.0
        grey = lab[..., 0]
        gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
        magnitude = np.sqrt(gx * gx + gy * gy)
        # soft-binned signed orientation histogram channels
        channels = np.empty((self.height, self.width, cfg.orientations + 3), np.float32)
        orientation_channels(gx, gy, magnitude, cfg.orientations, cfg.signed, out=channels[..., : cfg.orientations])
        channels[..., cfg.orientations :] = lab
        # keeps flat regions from being amplified; a crop of a bigger image passes the whole image's (norm_floor_of)
        self.norm_floor = norm_floor if norm_floor is not None else float(magnitude.mean()) * 2.0 + 1e-3
        self.valid = None if valid is None else valid.astype(np.float32)[..., None]
        self._channels = channels

    def _pooled_at(self, level: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(N, n + 3) bilinear samples at (x, y) ((N,) working px) of the channels Gaussian-pooled at pooling
        ``level``'s sigma. Only the box the samples read, grown by the kernel's reach, is blurred: inside it the
        values are the whole image's blur (a pixel's blur reads 4 sigma each side; the image's own borders are
        reflected alike), at a fraction of the cost for a few points."""
        sigma = self.cfg.sigmas[level] * self.cfg.object_size
        reach = int(np.ceil(4 * sigma)) + 2
        xs, ys = np.clip(x, 0, self.width - 1), np.clip(y, 0, self.height - 1)
        x0, y0 = max(0, int(np.floor(xs.min())) - reach), max(0, int(np.floor(ys.min())) - reach)
        x1 = min(self.width, int(np.floor(xs.max())) + 2 + reach)
        y1 = min(self.height, int(np.floor(ys.max())) + 2 + reach)
        box = _blur(self._channels[y0:y1, x0:x1], sigma)
        return _bilinear(box, xs - x0, ys - y0)

    def describe(self, points: np.ndarray) -> np.ndarray:
        """Descriptors at points.

        Args:
            points: (N, 2) float array of (x, y) in working pixels of this image.
        Returns:
            (N, D) float32 made of one unit-norm block per sample. With a ``valid`` mask (supports),
            blocks sampled outside the image are zeroed and the others weighted 1/n_valid, so the dot
            product of a support descriptor with a plain (query) one is the mean block similarity
            over the support's valid blocks, in [-1, 1].
        """
        points = np.asarray(points, np.float32).reshape(-1, 2)
        offsets = _sample_offsets(self.cfg)
        xs = [points[:, 0] + dx for _, (dx, _) in offsets]
        ys = [points[:, 1] + dy for _, (_, dy) in offsets]
        samples: list[np.ndarray] = [np.empty(0)] * len(offsets)
        for level in range(len(self.cfg.sigmas)):  # one blur per pooling level, of the box its samples read
            which = [i for i, (lv, _) in enumerate(offsets) if lv == level]
            found = self._pooled_at(level, np.concatenate([xs[i] for i in which]), np.concatenate([ys[i] for i in which]))
            for i, block in zip(which, np.split(found, len(which)), strict=True):
                samples[i] = block
        valid = []
        for x, y in zip(xs, ys, strict=True):
            inside = (x >= 0) & (y >= 0) & (x <= self.width - 1) & (y <= self.height - 1)
            if self.valid is not None:
                inside &= _bilinear(self.valid, x, y)[:, 0] >= 0.5
            valid.append(inside)
        blocks = self._normalise(np.stack(samples, axis=1))
        if self.valid is None:
            return blocks.reshape(len(points), -1)
        mask = np.stack(valid, axis=1).astype(np.float32)  # (N, n_blocks)
        weights = mask / np.maximum(mask.sum(axis=1, keepdims=True), 1.0)
        return (blocks * weights[..., None]).reshape(len(points), -1).astype(np.float32)

    def _normalise(self, samples: np.ndarray, copy: bool = True) -> np.ndarray:
        """(N, n_blocks, C) pooled samples -> unit-norm zero-mean blocks (histogram normalised, colour weighted);
        ``copy=False`` normalises a float32 ``samples`` in place."""
        n = self.cfg.orientations
        blocks = np.array(samples, dtype=np.float32) if copy else samples
        hist = blocks[..., :n]
        hist /= (np.sqrt(np.einsum("ijk,ijk->ij", hist, hist)) + self.norm_floor)[..., None]
        blocks[..., n:] *= self.cfg.colour_weight
        blocks -= blocks.mean(axis=2, keepdims=True)
        blocks /= (np.sqrt(np.einsum("ijk,ijk->ij", blocks, blocks)) + 1e-6)[..., None]
        return blocks

    def dense(self) -> tuple[np.ndarray, np.ndarray]:
        """Descriptors on a regular grid of step ``cfg.stride``.

        The channels are area-averaged over ``stride`` x ``stride`` cells first and pooled at that resolution
        (sigma / stride): the same Gaussian pooling to within the cell's box filter (variance stride^2 / 12 px^2
        against sigma^2 >= 10 px^2), at 1 / stride^2 of the cost. Grid positions are the cells' centres.

        Returns:
            (Hg*Wg, D) descriptors and (Hg, Wg, 2) grid of their (x, y) working-pixel positions.
        """
        s = self.cfg.stride
        hg, wg = -(-self.height // s), -(-self.width // s)
        channels = self._channels
        if s > 1:  # pad to whole cells (edge values), then average each cell
            channels = np.pad(channels, ((0, hg * s - self.height), (0, wg * s - self.width), (0, 0)), mode="edge")
            channels = cv2.resize(channels, (wg, hg), interpolation=cv2.INTER_AREA).reshape(hg, wg, -1)
        pooled = [_blur(channels, sigma * self.cfg.object_size / s) for sigma in self.cfg.sigmas]
        # a block's normalisation depends on its own sample only: normalise each pooled cell once, then gather
        pooled = [self._normalise(p.reshape(-1, 1, p.shape[2]), copy=False).reshape(p.shape) for p in pooled]
        centre = (s - 1) / 2
        gx, gy = np.meshgrid(np.arange(wg, dtype=np.float32) * s + centre, np.arange(hg, dtype=np.float32) * s + centre)
        grid = np.stack([gx, gy], axis=-1)
        # integer shifts (in cells) of edge-padded maps: pooling sigmas are >= 1.5 cells, so rounding offsets is harmless
        offsets = [(level, (dx / s, dy / s)) for level, (dx, dy) in _sample_offsets(self.cfg)]
        pad = int(np.ceil(max(max(abs(dx), abs(dy)) for _, (dx, dy) in offsets))) + 1
        padded = [np.pad(p, ((pad, pad), (pad, pad), (0, 0)), mode="edge") for p in pooled]
        c = pooled[0].shape[2]
        samples = np.empty((hg, wg, len(offsets) * c), np.float32)  # one copy per sample, c floats per cell
        views = []
        for level, (dx, dy) in offsets:
            oy, ox = pad + int(round(dy)), pad + int(round(dx))
            views.append(padded[level][oy : oy + hg, ox : ox + wg])
        rows = max(1, _COPY_BLOCK_BYTES // samples[0].nbytes)  # a block of rows stays in cache while its samples land
        for r in range(0, hg, rows):
            for i, view in enumerate(views):
                np.copyto(samples[r : r + rows, :, i * c : (i + 1) * c], view[r : r + rows])
        return samples.reshape(hg * wg, -1), grid


def orientation_channels(
    gx: np.ndarray, gy: np.ndarray, magnitude: np.ndarray, n: int, signed: bool, out: np.ndarray | None = None
) -> np.ndarray:
    """(H, W, n) soft-binned gradient-orientation histogram of (H, W) float32 gradients: each pixel's ``magnitude``
    split between the two bins nearest its angle (n bins over 360 degrees if ``signed``, else 180), the rest 0.
    Written into ``out`` ((H, W, n) float32, may be a view) when given."""
    period = 2 * np.pi if signed else np.pi
    angle = np.arctan2(gy, gx)
    if not signed:
        angle = np.fmod(angle, np.float32(period))  # in (-180, 180) degrees
    angle = np.where(angle < 0, angle + np.float32(period), angle) * np.float32(n / period)  # bin units in [0, n]
    floor = np.floor(angle)
    lower = floor.astype(np.int32)
    lower[lower >= n] = 0  # an angle of exactly 360 (180) degrees is bin 0
    upper = lower + 1
    upper[upper == n] = 0
    high = magnitude * (angle - floor)  # the share of the upper bin
    if out is None:
        out = np.empty(magnitude.shape + (n,), np.float32)
    out[...] = 0.0
    np.put_along_axis(out, lower[..., None], (magnitude - high)[..., None], axis=2)
    np.put_along_axis(out, upper[..., None], high[..., None], axis=2)
    return out


def norm_floor_of(image: np.ndarray) -> float:
    """The histogram-normalisation floor PooledChannels computes for a whole (H, W, 3) uint8 RGB image."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)[..., 0].astype(np.float32) / 255.0
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    return float(np.sqrt(gx * gx + gy * gy).mean()) * 2.0 + 1e-3


def describe_margin(cfg: DescriptorConfig) -> int:
    """Pixels around a point that its descriptor reads: the outer ring, the widest pooling kernel (OpenCV's float
    Gaussian reaches 4 sigma), the gradient and bilinear sampling. A crop this much bigger gives the same descriptor."""
    return int(np.ceil((cfg.ring_radii[1] + 4 * max(cfg.sigmas)) * cfg.object_size)) + 4


def _blur(channels: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an (H, W, C) float32 map, all C channels in one OpenCV call."""
    out = cv2.GaussianBlur(np.ascontiguousarray(channels, np.float32), (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return out.reshape(channels.shape)


def _sample_offsets(cfg: DescriptorConfig) -> list[tuple[int, tuple[float, float]]]:
    """(pooling level, (dx, dy)) of the centre and ring samples, in working pixels."""
    offsets: list[tuple[int, tuple[float, float]]] = [(0, (0.0, 0.0))]
    for level, radius in ((1, cfg.ring_radii[0]), (2, cfg.ring_radii[1])):
        r = radius * cfg.object_size
        for i in range(cfg.ring_points):
            a = 2 * np.pi * i / cfg.ring_points
            offsets.append((level, (float(r * np.cos(a)), float(r * np.sin(a)))))
    return offsets


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample an (H, W, C) map at float positions with edge clamping; returns (N, C)."""
    h, w = image.shape[:2]
    x = np.clip(x, 0, w - 1)
    y = np.clip(y, 0, h - 1)
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy
