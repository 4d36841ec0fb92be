"""Dense features from a pretrained vision backbone (any transformers ``AutoModel`` with patch tokens:
DINOv2, ViT, CLIP/SigLIP vision towers), as a drop-in for the hand-crafted descriptors of the matcher.

Loaded with ``from_pretrained`` from a local directory or a hub id; nothing is downloaded unless the user
configures a hub id on a machine that can reach it. torch and transformers are imported only here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from kp_model.oneshot.descriptors import _bilinear

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EncoderLoadError(RuntimeError):
    """The configured encoder checkpoint cannot be loaded (missing, not a vision model, no torch)."""


@dataclass(frozen=True)
class EncoderConfig:
    name_or_path: str = ""  # transformers checkpoint dir or hub id (e.g. facebook/dinov2-small); "" = hand-crafted descriptors
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    object_size: int = 224  # working size (px) of the support's keypoint extent: 16 patches of 14 px
    max_side: int = 896  # cap on the longer side of an image fed to the encoder (memory/time bound)
    layer: int = -1  # hidden-state index the patch features are read from

    def __post_init__(self) -> None:
        if self.object_size < 32:
            raise ValueError(f"object_size must be >= 32 px, got {self.object_size}")
        if self.max_side < self.object_size:
            raise ValueError(f"max_side must be >= object_size ({self.object_size}), got {self.max_side}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda") or self.device.startswith("mps")):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda[:N]' or 'mps', got {self.device!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.name_or_path)


class PatchEncoder:
    """A loaded backbone. ``encode(image)`` -> (h, w, C) unit-norm patch features, one per ``stride`` px."""

    def __init__(self, cfg: EncoderConfig) -> None:
        try:
            import torch
            from transformers import AutoConfig, AutoModel
        except ImportError as exc:  # pragma: no cover - torch/transformers are dependencies
            raise EncoderLoadError(f"a pretrained encoder needs torch and transformers installed: {exc}") from exc
        self.cfg = cfg
        self._torch = torch
        device = cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        try:
            config = AutoConfig.from_pretrained(cfg.name_or_path)
            vision = getattr(config, "vision_config", None)
            model = AutoModel.from_pretrained(cfg.name_or_path)
        except (OSError, ValueError) as exc:
            raise EncoderLoadError(f"cannot load encoder {cfg.name_or_path!r}: {exc}") from exc
        if vision is not None and hasattr(model, "vision_model"):  # CLIP / SigLIP: keep the vision tower
            model, config = model.vision_model, vision
        self.patch = int(getattr(config, "patch_size", 14))
        self.model = model.to(self.device).eval()
        self.skip = 1 + int(getattr(config, "num_register_tokens", 0) or 0)  # CLS (+ registers) before patches
        log.info("encoder %s on %s (patch %d px)", cfg.name_or_path, self.device, self.patch)

    @property
    def stride(self) -> int:
        return self.patch

    def encode(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (H // patch, W // patch, C) float32 unit-norm features (image cropped to whole patches)."""
        torch = self._torch
        h, w = (image.shape[0] // self.patch) * self.patch, (image.shape[1] // self.patch) * self.patch
        if h == 0 or w == 0:
            raise ValueError(f"image {image.shape[:2]} is smaller than one {self.patch}-px patch")
        x = image[:h, :w].astype(np.float32) / 255.0
        x = (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
        pixels = torch.from_numpy(x.transpose(2, 0, 1)[None].copy()).to(self.device)
        with torch.inference_mode():
            out = self.model(pixel_values=pixels, output_hidden_states=True)
        tokens = out.hidden_states[self.cfg.layer][0]
        n = (h // self.patch) * (w // self.patch)
        feats = tokens[-n:] if tokens.shape[0] >= n + self.skip else tokens[:n]
        feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.reshape(h // self.patch, w // self.patch, -1).cpu().numpy()


class EncoderChannels:
    """Same interface as :class:`kp_model.oneshot.descriptors.PooledChannels`, backed by encoder patch features."""

    def __init__(self, encoder: PatchEncoder, image: np.ndarray, valid: np.ndarray | None = None) -> None:
        self.encoder = encoder
        self.height, self.width = image.shape[:2]
        self.features = encoder.encode(image)
        self.valid = valid

    def describe(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) working px -> (N, C) unit-norm features sampled bilinearly between patch centres."""
        p = self.encoder.patch
        points = np.asarray(points, np.float32).reshape(-1, 2)
        feats = _bilinear(self.features, points[:, 0] / p - 0.5, points[:, 1] / p - 0.5)
        return (feats / (np.linalg.norm(feats, axis=1, keepdims=True) + 1e-6)).astype(np.float32)

    def dense(self) -> tuple[np.ndarray, np.ndarray]:
        """(h*w, C) features and (h, w, 2) grid of patch-centre positions (working px)."""
        h, w, c = self.features.shape
        p = self.encoder.patch
        gx, gy = np.meshgrid((np.arange(w) + 0.5) * p, (np.arange(h) + 0.5) * p)
        return self.features.reshape(h * w, c), np.stack([gx, gy], axis=-1).astype(np.float32)
