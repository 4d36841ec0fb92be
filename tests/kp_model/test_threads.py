"""torch's threads held for a block and restored."""

import pytest
import torch

from kp_model.threads import torch_threads


def test_torch_threads_inside_the_block_then_restored() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inside"), torch_threads(1):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before  # restored after an error too
    with pytest.raises(ValueError, match="thread count"), torch_threads(0):
        pass
