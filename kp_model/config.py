"""Config dataclasses from JSON dicts, strictly: a key the dataclass does not have is an error naming the key
(a typo in KPASSIST_ENGINE_CONFIG or KPASSIST_TRAIN_CONFIG must not be silently ignored)."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from typing import Any, TypeVar

T = TypeVar("T")

DEVICE_NAMES = "'cpu', 'cuda', 'cuda:N' or 'mps'"  # the torch devices a training config may name


def is_device_name(name: str) -> bool:
    """True for one of ``DEVICE_NAMES`` (checked without importing torch: settings are read at start-up)."""
    return re.fullmatch(r"cpu|mps|cuda(:\d+)?", name) is not None


class ConfigError(ValueError):
    """A config dict has a key its dataclass does not know, or a value of the wrong kind."""


class JsonConfig:
    """Base of the config dataclasses: a JSON round trip, strict on unknown keys (``config_from_dict``)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict) -> typing.Self:
        return config_from_dict(cls, data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> typing.Self:
        return cls.from_dict(json.loads(text))


def config_from_dict(cls: type[T], data: object, where: str = "") -> T:
    """An instance of the dataclass ``cls`` from ``data`` (a dict as read from JSON).

    Nested dataclass fields are built the same way; JSON lists become tuples where the field is a tuple.
    ``where`` prefixes key names in messages ("oneshot.descriptor.").

    Raises:
        ConfigError: ``data`` is not a dict, or holds a key ``cls`` has no field for.
        ValueError: a field's own check (``__post_init__``) refused the value.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where.rstrip('.') or cls.__name__} must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(where + k for k in unknown)} in the {cls.__name__} config; known keys: {sorted(names)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            kwargs[key] = value if isinstance(value, hint) else config_from_dict(hint, value, f"{where}{key}.")
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)
