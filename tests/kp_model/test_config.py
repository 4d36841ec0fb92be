"""Configs from JSON: unknown keys are an error naming the key, at any depth; known ones round-trip."""

from __future__ import annotations

import json

import pytest

from kp_model.build import PredictorConfig
from kp_model.config import ConfigError, config_from_dict
from kp_model.kptllm.configuration import KptLLMConfig
from kp_model.oneshot.matcher import OneShotConfig
from kp_model.training.loop import TrainConfig


@pytest.mark.parametrize(
    "text, key",
    [
        ('{"engin": "oneshot"}', "engin"),
        ('{"oneshot": {"rotation": 8}}', "oneshot.rotation"),
        ('{"oneshot": {"descriptor": {"strid": 4}}}', "oneshot.descriptor.strid"),
        ('{"oneshot": {"encoder": {"name_or_pth": "x"}}}', "oneshot.encoder.name_or_pth"),
    ],
)
def test_a_typo_in_the_engine_config_names_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        PredictorConfig.from_json(text)


@pytest.mark.parametrize(
    "cls, data, key",
    [
        (KptLLMConfig, {"llm": {"lora_rr": 4}}, "llm.lora_rr"),
        (KptLLMConfig, {"image_grd": 4}, "image_grd"),
        (TrainConfig, {"augment": {"flipp": 0.5}}, "augment.flipp"),
    ],
)
def test_a_typo_in_the_train_config_names_the_key(cls: type, data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict(cls, data)


def test_configs_round_trip_through_json_with_tuples() -> None:
    cfg = PredictorConfig(oneshot=OneShotConfig(rotations=8, scales=(1.0, 2.0)), mirror=True)
    again = PredictorConfig.from_json(cfg.to_json())
    assert again == cfg and again.oneshot.scales == (1.0, 2.0)
    assert KptLLMConfig.from_json(KptLLMConfig(image_grid=4).to_json()) == KptLLMConfig(image_grid=4)
    assert TrainConfig.from_dict(json.loads(json.dumps(TrainConfig(steps=7).to_dict()))) == TrainConfig(steps=7)


def test_values_are_still_checked_by_the_dataclass() -> None:
    with pytest.raises(ValueError, match="rotations"):
        PredictorConfig.from_json('{"oneshot": {"rotations": 0}}')
    with pytest.raises(ConfigError, match="JSON object"):
        PredictorConfig.from_json('{"oneshot": [1, 2]}')
