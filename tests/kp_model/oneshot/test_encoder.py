"""The pretrained-encoder feature path, through from_pretrained on a tiny DINOv2 saved locally."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kp_model.build import PredictorConfig, build_predictor
from kp_model.oneshot.encoder import EncoderConfig, EncoderLoadError, PatchEncoder
from kp_model.oneshot.matcher import OneShotConfig


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=14, image_size=56
    )
    path = tmp_path_factory.mktemp("tiny-dinov2")
    Dinov2Model(cfg).save_pretrained(path)
    return path


def test_patch_features_shape_and_norm(tiny_dinov2: Path) -> None:
    enc = PatchEncoder(EncoderConfig(str(tiny_dinov2), device="cpu"))
    feats = enc.encode(np.zeros((70, 100, 3), np.uint8))
    assert feats.shape == (5, 7, 32) and enc.stride == 14
    np.testing.assert_allclose(np.linalg.norm(feats, axis=-1), 1.0, atol=1e-5)


def test_predictor_runs_on_encoder_features_by_config(tiny_dinov2: Path, blob_image) -> None:
    encoder = EncoderConfig(str(tiny_dinov2), device="cpu", object_size=56, max_side=224)
    cfg = PredictorConfig(oneshot=OneShotConfig(encoder=encoder, rotations=4, scales=(1.0,)))
    assert PredictorConfig.from_json(cfg.to_json()) == cfg
    support, pts = blob_image(width=200, height=150)
    query, _ = blob_image(width=200, height=150, centre=(90, 70))
    predictor = build_predictor(cfg)
    assert predictor.matcher.encoder is not None
    predictor.set_support(support, pts, ["a", "b", "c"])
    [pred] = predictor.predict([query])
    assert pred.points.shape == (3, 2) and np.isfinite(pred.points).all()
    assert (pred.points >= -1).all() and (pred.points[:, 0] <= 201).all() and (pred.points[:, 1] <= 151).all()


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EncoderLoadError, match="cannot load encoder"):
        PatchEncoder(EncoderConfig(str(tmp_path / "nope"), device="cpu"))


def test_encoder_config_checks() -> None:
    with pytest.raises(ValueError, match="device"):
        EncoderConfig("x", device="tpu")
    with pytest.raises(ValueError, match="max_side"):
        EncoderConfig("x", object_size=224, max_side=100)
