"""Sizes of what caches hold, so they can be bounded in bytes as well as in count."""

from __future__ import annotations

import dataclasses

import numpy as np


def array_bytes(obj: object, depth: int = 8) -> int:
    """Bytes of the numpy arrays and torch tensors reachable from ``obj`` through attributes, dataclass fields,
    lists, tuples and dicts, at most ``depth`` levels down (functions and modules are not followed: a predictor
    that asks a shared model cache for its model does not count the model)."""
    seen: set[int] = set()

    def walk(x: object, level: int) -> int:
        if id(x) in seen or level > depth:
            return 0
        seen.add(id(x))
        if isinstance(x, np.ndarray):
            return int(x.nbytes)
        if hasattr(x, "element_size") and hasattr(x, "nelement"):  # a torch tensor (torch is not imported here)
            return int(x.element_size() * x.nelement())
        if isinstance(x, dict):
            return sum(walk(v, level + 1) for v in x.values())
        if isinstance(x, list | tuple):
            return sum(walk(v, level + 1) for v in x)
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return sum(walk(getattr(x, f.name), level + 1) for f in dataclasses.fields(x))
        if hasattr(x, "__dict__") and not callable(x):
            return sum(walk(v, level + 1) for v in vars(x).values())
        return 0

    return walk(obj, 0)


def model_bytes(model: object) -> int:
    """Bytes of a torch module's parameters and buffers."""
    tensors = [*model.parameters(), *model.buffers()]  # type: ignore[attr-defined]
    return int(sum(t.element_size() * t.nelement() for t in tensors))
