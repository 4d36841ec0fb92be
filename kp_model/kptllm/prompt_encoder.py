"""Prompt feature extractor + prompt encoder: support features bilinearly sampled at the support keypoints,
fused with a Fourier encoding of the keypoint position, mapped to the LLM's embedding size."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from kp_model.config import JsonConfig


@dataclass(frozen=True)
class PromptEncoderConfig(JsonConfig):
    fourier_bands: int = 8  # sin/cos frequencies of the (x, y) position encoding
    hidden: int = 256  # width of the fusion MLP

    def __post_init__(self) -> None:
        if self.fourier_bands < 1:
            raise ValueError(f"fourier_bands must be >= 1, got {self.fourier_bands}")
        if self.hidden < 8:
            raise ValueError(f"hidden must be >= 8, got {self.hidden}")


def sample_features(feats: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of feature maps at points.

    Args:
        feats: (B, C, h, w) feature maps covering the letterboxed image.
        points: (B, 2) normalised (x, y) in [0, 1] of that image.
    Returns:
        (B, C) features.
    """
    grid = (points * 2 - 1).view(-1, 1, 1, 2).to(feats.dtype)
    return F.grid_sample(feats, grid, mode="bilinear", align_corners=False).view(feats.shape[0], feats.shape[1])


def fourier_encoding(points: torch.Tensor, bands: int) -> torch.Tensor:
    """(B, 2) normalised points -> (B, 4 * bands) sin/cos features."""
    freqs = (2.0 ** torch.arange(bands, device=points.device, dtype=points.dtype)) * math.pi
    angles = points[:, :, None] * freqs  # (B, 2, bands)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)


class PromptEncoder(nn.Module):
    """(B, C) sampled support features + (B, 2) positions -> (B, D) keypoint prompt tokens."""

    def __init__(self, cfg: PromptEncoderConfig, vision_channels: int, llm_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.mlp = nn.Sequential(
            nn.Linear(vision_channels + 4 * cfg.fourier_bands, cfg.hidden),
            nn.GELU(),
            nn.Linear(cfg.hidden, llm_dim),
        )

    def forward(self, features: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([features, fourier_encoding(points, self.cfg.fourier_bands)], dim=-1))
