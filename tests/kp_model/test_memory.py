from dataclasses import dataclass

import numpy as np
import torch

from kp_model.memory import array_bytes, model_bytes


@dataclass
class Holder:
    features: np.ndarray
    more: list


class Owner:
    def __init__(self, shared: np.ndarray) -> None:
        self.template = Holder(shared, [np.zeros(10, np.uint8), {"t": torch.zeros(4, dtype=torch.float64)}])
        self.again = shared  # the same array is counted once
        self.loader = lambda: np.zeros(1000)  # functions are not followed


def test_array_bytes_counts_reachable_arrays_and_tensors_once() -> None:
    assert array_bytes(Owner(np.zeros(100, np.float32))) == 400 + 10 + 32


def test_model_bytes() -> None:
    assert model_bytes(torch.nn.Linear(3, 2)) == (3 * 2 + 2) * 4
