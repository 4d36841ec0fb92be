"""Bounding a process's compute threads: torch's intra-op pool, OpenCV's and the BLAS numpy links (OpenBLAS reads
its thread count once, at load, so it is set through threadpoolctl)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def limit_threads(n: int) -> None:
    """At most ``n`` compute threads per library in this process (a training job, a pre-labelling job, a worker
    process of ``kp_model.parallel``), so that the machine's other cores stay free for other work. torch is bounded
    now if loaded, else through OMP_NUM_THREADS when it loads (a prediction worker never imports it)."""
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    import cv2
    from threadpoolctl import threadpool_limits

    os.environ["OMP_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    cv2.setNumThreads(n)
    threadpool_limits(limits=n)  # numpy's OpenBLAS and any other BLAS/OpenMP pool loaded so far


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block, restored after: for torch work that runs beside busy
    worker processes (an OpenMP pool bigger than the cores left to it spins and runs several times slower)."""
    import torch

    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class AdaptiveThreads:
    """torch's intra-op thread count for a loop of similar steps (training), chosen from their measured times: up to
    ``most`` threads while that is faster than one, one while other work holds a core. An OpenMP pool bigger than
    the free cores waits at every barrier for its descheduled thread: beside one busy core, 2 threads trained the
    tiny preset about 17x slower than 1 (1.9 s against 0.18 s a step; quiet, 2 threads take 0.11 s).

    Each step is timed at the count it ran at (``record``); the first is not counted (allocations). The other count
    is tried for one step at step ``first`` and then at intervals that double from ``interval`` while the current
    count stays faster, so a quiet machine loses a few hundredths of a second and a busy one a few slow steps; the
    other count is taken when its step was faster than ``margin`` x the current count's running mean.

    threads = AdaptiveThreads(torch.get_num_threads())
    for step in range(1, steps + 1):
        n = threads.before(step)          # sets torch's threads
        t = time.perf_counter(); ...; threads.record(n, time.perf_counter() - t, step)
    """

    def __init__(self, most: int, first: int = 3, interval: int = 20, margin: float = 0.9) -> None:
        if most < 1:
            raise ValueError(f"thread count must be >= 1, got {most}")
        if first < 3 or interval < 1:
            raise ValueError(f"first must be >= 3 (one counted step before the probe) and interval >= 1, got {first}, {interval}")
        self.most = most
        self.current = most
        self.margin = margin
        self.interval = interval
        self.gap = interval  # steps from a probe to the next
        self.next_probe = first
        self.mean: float | None = None  # running mean step seconds of the current count (None: none counted yet)
        self.switches = 0

    @property
    def adapts(self) -> bool:
        return self.most > 1

    def before(self, step: int) -> int:
        """The count step ``step`` (1-based) runs at, set in torch."""
        import torch

        n = self.current
        if self.adapts and step == self.next_probe:
            n = 1 if self.current == self.most else self.most
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        return n

    def record(self, n: int, seconds: float, step: int) -> None:
        """Step ``step`` (1-based) took ``seconds`` at ``n`` threads."""
        if not self.adapts or step == 1:
            return
        if n == self.current:
            self.mean = seconds if self.mean is None else 0.7 * self.mean + 0.3 * seconds
            return
        if self.mean is not None and seconds < self.margin * self.mean:  # a probe of the other count, faster
            self.current, self.mean = n, seconds
            self.switches += 1
            self.gap = self.interval
        self.next_probe = step + self.gap
        self.gap *= 2


def map_adapting(work: Callable[[T], R], items: Sequence[T], clock: Callable[[], float] = time.perf_counter) -> list[R]:
    """``work(item)`` for each item in turn, each call a step of ``AdaptiveThreads`` from torch's current count, so
    that torch work done here in turn (a learned version answering a run's evidence images) drops to one thread while
    other work holds a core, as training does; torch's count is restored after. ``clock``: seconds, for tests."""
    import torch

    before = torch.get_num_threads()
    threads = AdaptiveThreads(before)
    out: list[R] = []
    try:
        for step, item in enumerate(items, start=1):
            n = threads.before(step)
            t = clock()
            out.append(work(item))
            threads.record(n, clock() - t, step)
    finally:
        torch.set_num_threads(before)
    return out
