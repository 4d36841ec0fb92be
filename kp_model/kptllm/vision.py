"""Vision encoder of the KptLLM model: any transformers vision backbone with patch tokens (DINOv2, ViT,
CLIP/SigLIP vision towers) loaded with ``AutoModel.from_pretrained``, or a tiny DINOv2 built from a config
for CPU training and tests. Images are letterboxed to ``image_size`` x ``image_size`` (see ``letterbox``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

from kp_model.config import JsonConfig
from kp_model.oneshot.encoder import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)


class VisionLoadError(RuntimeError):
    """The configured vision checkpoint cannot be loaded or has no patch tokens."""


@dataclass(frozen=True)
class VisionConfig(JsonConfig):
    name_or_path: str = ""  # transformers checkpoint dir or hub id (e.g. facebook/dinov2-small); "" = tiny model from scratch
    arch: str = "resnet"  # tiny preset only: "resnet" (conv, learns from few images) or "dinov2" (ViT)
    image_size: int = 224  # side (px) of the square every image is letterboxed to
    patch_size: int = 8  # tiny preset only: feature stride (px); a pretrained model brings its own (resnet: always 8)
    hidden_size: int = 96  # tiny preset only: feature channels
    layers: int = 2  # tiny preset only: transformer layers
    heads: int = 4  # tiny preset only: attention heads
    train: bool | None = None  # None: train when built from scratch, frozen when pretrained

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32 px, got {self.image_size}")
        if self.patch_size < 2 or self.image_size % self.patch_size:
            raise ValueError(f"patch_size must be >= 2 and divide image_size ({self.image_size}), got {self.patch_size}")
        if self.arch not in ("resnet", "dinov2"):
            raise ValueError(f"arch must be 'resnet' or 'dinov2', got {self.arch!r}")
        if self.arch == "resnet" and self.patch_size != 8:
            raise ValueError(f"patch_size must be 8 for the tiny resnet (its stride), got {self.patch_size}")
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by heads ({self.heads})")
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")

    @property
    def trainable(self) -> bool:
        return (not self.name_or_path) if self.train is None else bool(self.train)


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Resize (H, W, 3) uint8 so its longer side is ``size`` and pad bottom/right to size x size.

    Returns the padded image and the scale (model px per image px): model = image * scale.
    """
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    out = np.empty((size, size, 3), np.uint8)
    out[:] = (np.array(IMAGENET_MEAN) * 255).astype(np.uint8)
    out[:nh, :nw] = resized
    return out, scale


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """(N, 3, S, S) float, ImageNet-normalised, from N letterboxed (S, S, 3) uint8 images."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class VisionEncoder(nn.Module):
    """(N, 3, S, S) normalised images -> (N, C, S/p, S/p) patch features."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        self.cfg = cfg
        if cfg.name_or_path:
            try:
                model = AutoModel.from_pretrained(cfg.name_or_path)
            except (OSError, ValueError) as exc:
                raise VisionLoadError(f"cannot load vision encoder {cfg.name_or_path!r}: {exc}") from exc
            model = getattr(model, "vision_model", model)  # CLIP/SigLIP: the vision tower
        elif cfg.arch == "resnet":  # stride 4 stem + a stride-1 and a stride-2 stage: features every 8 px
            config = AutoConfig.for_model(
                "resnet",
                embedding_size=32,
                hidden_sizes=[cfg.hidden_size // 2, cfg.hidden_size],
                depths=[cfg.layers, cfg.layers],
                layer_type="basic",
                downsample_in_first_stage=False,
            )
            config.patch_size = 8
            model = AutoModel.from_config(config)
        else:
            config = AutoConfig.for_model(
                "dinov2",
                hidden_size=cfg.hidden_size,
                num_hidden_layers=cfg.layers,
                num_attention_heads=cfg.heads,
                intermediate_size=cfg.hidden_size * 2,
                patch_size=cfg.patch_size,
                image_size=cfg.image_size,
            )
            model = AutoModel.from_config(config)
        self.backbone = model
        self.patch_size = int(getattr(model.config, "patch_size", cfg.patch_size))
        sizes = getattr(model.config, "hidden_sizes", None)
        self.channels = int(sizes[-1] if sizes else model.config.hidden_size)
        if cfg.image_size % self.patch_size:
            raise VisionLoadError(f"image_size {cfg.image_size} is not a multiple of the model's patch size {self.patch_size}")
        self.grid = cfg.image_size // self.patch_size
        self.backbone.requires_grad_(cfg.trainable)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        kwargs = {"interpolate_pos_encoding": True} if "clip" in type(self.backbone).__name__.lower() else {}
        tokens = self.backbone(pixel_values=pixels, **kwargs).last_hidden_state  # (N, prefix + g*g, C) or (N, C, g, g)
        if tokens.ndim == 4:  # convolutional backbone: already a feature map
            return tokens
        n_patch = self.grid * self.grid
        if tokens.shape[1] < n_patch:
            raise VisionLoadError(f"backbone returned {tokens.shape[1]} tokens, expected >= {n_patch} patch tokens")
        patches = tokens[:, tokens.shape[1] - n_patch :]  # drop CLS / register tokens at the front
        return patches.transpose(1, 2).reshape(len(pixels), self.channels, self.grid, self.grid)
