"""The matcher's grid operations against plain numpy references."""

import numpy as np
import pytest

from kp_model.oneshot.grid import dilate_stack


def _max_filter(image: np.ndarray, radius: int) -> np.ndarray:
    """Each cell's maximum over the (2 radius + 1)^2 cells around it that lie inside the image."""
    h, w = image.shape
    padded = np.full((h + 2 * radius, w + 2 * radius), -np.inf, np.float32)
    padded[radius : radius + h, radius : radius + w] = image
    windows = [padded[dy : dy + h, dx : dx + w] for dy in range(2 * radius + 1) for dx in range(2 * radius + 1)]
    return np.max(windows, axis=0)


@pytest.mark.parametrize("radius", [1, 4])
def test_dilate_stack_is_each_maps_maximum_over_the_kernel(radius: int) -> None:
    maps = np.random.default_rng(radius).normal(size=(5, 23, 31)).astype(np.float32)
    got = dilate_stack(maps, np.ones((2 * radius + 1, 2 * radius + 1), np.uint8))
    assert got.shape == maps.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got, np.stack([_max_filter(m, radius) for m in maps]))
    assert not np.shares_memory(got, maps)
