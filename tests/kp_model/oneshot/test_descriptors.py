import cv2
import numpy as np
import pytest

from kp_model.oneshot.descriptors import DescriptorConfig, PooledChannels, orientation_channels


def _reference_bins(gx: np.ndarray, gy: np.ndarray, magnitude: np.ndarray, n: int, signed: bool) -> np.ndarray:
    """The binning as first written: one np.where pair per bin over the angle taken modulo the period."""
    period = 2 * np.pi if signed else np.pi
    angle = (np.arctan2(gy, gx) % period) * (n / period)
    floor = np.floor(angle)
    lower = floor.astype(np.int32) % n
    upper = (lower + 1) % n
    high = magnitude * (angle - floor)
    low = magnitude - high
    return np.stack([np.where(lower == b, low, 0.0) + np.where(upper == b, high, 0.0) for b in range(n)], axis=-1)


def _gradients(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gx = rng.normal(size=(40, 50)).astype(np.float32)
    gy = rng.normal(size=(40, 50)).astype(np.float32)
    # the edge cases of the angle: +-0 gradients, exactly 0, 90, 180 and -180 degrees, and a zero magnitude
    gx[0, :6] = [1.0, -1.0, 0.0, -1.0, 1.0, 0.0]
    gy[0, :6] = [0.0, 0.0, 1.0, -0.0, -0.0, 0.0]
    return gx, gy, np.sqrt(gx * gx + gy * gy)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("n", [4, 8, 12])
def test_orientation_channels_equal_the_per_bin_binning(signed: bool, n: int) -> None:
    gx, gy, magnitude = _gradients(np.random.default_rng(n))
    got = orientation_channels(gx, gy, magnitude, n, signed)
    assert got.shape == (40, 50, n) and got.dtype == np.float32
    np.testing.assert_array_equal(got, _reference_bins(gx, gy, magnitude, n, signed))


def test_orientation_channels_split_the_magnitude_between_two_neighbour_bins() -> None:
    # 45 degrees with 8 signed bins of 45 degrees: all of it in bin 1; 22.5 degrees: half in bin 0, half in bin 1
    gx = np.array([[1.0, np.cos(np.pi / 8)]], np.float32)
    gy = np.array([[1.0, np.sin(np.pi / 8)]], np.float32)
    magnitude = np.sqrt(gx * gx + gy * gy)
    got = orientation_channels(gx, gy, magnitude, 8, True)
    np.testing.assert_allclose(got[0, 0], [0, np.sqrt(2), 0, 0, 0, 0, 0, 0], atol=1e-5)
    np.testing.assert_allclose(got[0, 1], [0.5, 0.5, 0, 0, 0, 0, 0, 0], atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=-1), magnitude, rtol=1e-6)


def test_orientation_channels_write_into_a_view() -> None:
    gx, gy, magnitude = _gradients(np.random.default_rng(0))
    channels = np.full((40, 50, 11), 7.0, np.float32)
    orientation_channels(gx, gy, magnitude, 8, True, out=channels[..., :8])
    np.testing.assert_array_equal(channels[..., :8], _reference_bins(gx, gy, magnitude, 8, True))
    assert (channels[..., 8:] == 7.0).all()


def _full_blur_samples(channels: np.ndarray, sigma: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The whole image blurred, then sampled bilinearly with edge clamping (as the descriptors were first computed)."""
    blurred = cv2.GaussianBlur(channels, (0, 0), sigma, borderType=cv2.BORDER_REFLECT).reshape(channels.shape)
    h, w = channels.shape[:2]
    x, y = np.clip(x, 0, w - 1), np.clip(y, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = blurred[y0, x0] * (1 - fx) + blurred[y0, x1] * fx
    bottom = blurred[y1, x0] * (1 - fx) + blurred[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


@pytest.mark.parametrize("where", ["inside", "near the borders", "outside"])
def test_pooling_a_few_points_blurs_a_box_with_the_whole_images_values(where: str) -> None:
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.integers(0, 256, (150, 210, 3), dtype=np.uint8), (0, 0), 1.5)
    channels = PooledChannels(image, DescriptorConfig())
    points = {
        "inside": np.array([[100.5, 70.25], [120.0, 80.75], [90.125, 60.0]], np.float32),
        "near the borders": np.array([[1.5, 3.25], [207.75, 148.5], [200.0, 2.0]], np.float32),
        "outside": np.array([[-5.0, 70.0], [230.0, 160.0], [105.0, -12.5]], np.float32),
    }[where]
    for level, sigma in enumerate(DescriptorConfig().sigmas):
        got = channels._pooled_at(level, points[:, 0], points[:, 1])
        want = _full_blur_samples(channels._channels, sigma * DescriptorConfig().object_size, points[:, 0], points[:, 1])
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("block_bytes", [1, 3 * 45 * 17 * 11 * 4])  # one row per block; three rows
def test_dense_samples_gathered_by_row_blocks_equal_whole_planes(monkeypatch, block_bytes: int) -> None:
    """Dense descriptors gathered by blocks of rows (kept in cache) equal those copied one whole sample plane at a
    time (a block larger than the grid): the same values in the same places."""
    from kp_model.oneshot import descriptors

    image = (np.random.default_rng(3).random((70, 90, 3)) * 255).astype(np.uint8)
    cfg = DescriptorConfig()
    monkeypatch.setattr(descriptors, "_COPY_BLOCK_BYTES", 1 << 40)
    whole, grid = PooledChannels(image, cfg).dense()
    monkeypatch.setattr(descriptors, "_COPY_BLOCK_BYTES", block_bytes)
    blocks, grid_blocks = PooledChannels(image, cfg).dense()
    assert whole.shape == (35 * 45, 17 * 11)
    np.testing.assert_array_equal(blocks, whole)
    np.testing.assert_array_equal(grid_blocks, grid)
