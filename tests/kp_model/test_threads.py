"""torch's threads held for a block and restored."""

import pytest
import torch

from kp_model.threads import AdaptiveThreads, map_adapting, torch_threads


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


def run_steps(threads: AdaptiveThreads, steps: int, seconds) -> list[int]:
    """The count of each step when a step at n threads takes ``seconds(step, n)``."""
    counts = []
    for step in range(1, steps + 1):
        n = threads.before(step)
        counts.append(n)
        threads.record(n, seconds(step, n), step)
    return counts


def test_adaptive_threads_keep_the_faster_count_and_probe_less_and_less() -> None:
    with torch_threads(2):
        # quiet: 2 threads 0.10 s a step, 1 thread 0.18 s; 1 is tried at steps 3, 23, 63, 143 only
        quiet = run_steps(AdaptiveThreads(2), 200, lambda step, n: 0.10 if n == 2 else 0.18)
        assert [i + 1 for i, n in enumerate(quiet) if n == 1] == [3, 23, 63, 143]
        # another process holds a core: 2 threads 2.0 s, 1 thread 0.2 s; 1 from the first probe on, 2 retried rarely
        adapt = AdaptiveThreads(2)
        busy = run_steps(adapt, 200, lambda step, n: 2.0 if n == 2 else 0.2)
        assert [i + 1 for i, n in enumerate(busy) if n == 2] == [1, 2, 23, 63, 143]
        assert adapt.current == 1 and adapt.switches == 1
        # the other work ends at step 50: back to 2 threads at the next probe (63)
        back = AdaptiveThreads(2)

        def changing(step: int, n: int) -> float:
            return (2.0 if n == 2 else 0.2) if step <= 50 else (0.1 if n == 2 else 0.18)

        counts = run_steps(back, 100, changing)
        assert counts[3:22] == [1] * 19 and counts[22] == 2  # steps 4-22 on 1 thread, step 23 a probe of 2
        assert counts[62:] == [2] * 20 + [1] + [2] * 17 and back.current == 2  # back to 2 at 63, 1 tried at 83
        assert torch.get_num_threads() == 2  # the last step's count, set in torch
        one = AdaptiveThreads(1)
        assert not one.adapts and run_steps(one, 10, lambda step, n: 1.0) == [1] * 10
    with pytest.raises(ValueError, match="first"):
        AdaptiveThreads(2, first=2)


def test_work_done_in_turn_drops_to_one_thread_beside_busy_work_and_restores_the_count() -> None:
    now = [0.0]
    seen = []

    def work(item: int) -> int:  # beside a busy core: 2.0 s on 2 threads, 0.2 s on 1 (the clock is fake)
        seen.append(torch.get_num_threads())
        now[0] += 2.0 if torch.get_num_threads() == 2 else 0.2
        return item * 10

    with torch_threads(2):
        assert map_adapting(work, list(range(8)), clock=lambda: now[0]) == [0, 10, 20, 30, 40, 50, 60, 70]
        assert seen == [2, 2, 1, 1, 1, 1, 1, 1]  # 1 tried at the 3rd item, faster: kept
        assert torch.get_num_threads() == 2  # restored
        assert map_adapting(work, []) == []
    with torch_threads(1):
        seen.clear()
        map_adapting(work, [1, 2, 3], clock=lambda: now[0])
        assert seen == [1, 1, 1]  # one thread to begin with: nothing to adapt
