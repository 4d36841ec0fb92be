"""Keypoint decoder: (x, y) from the hidden state of the position token, by attention over the query's patch
features (soft-argmax of the attention, then a sub-patch offset), plus a visibility/confidence logit."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kp_model.config import JsonConfig
from kp_model.kptllm.prompt_encoder import fourier_encoding


@dataclass(frozen=True)
class DecoderConfig(JsonConfig):
    dim: int = 128  # width of the attention query/keys
    fourier_bands: int = 6  # position encoding added to the patch keys
    max_offset: float = 1.0  # largest refinement step, in patches

    def __post_init__(self) -> None:
        if self.dim < 8:
            raise ValueError(f"dim must be >= 8, got {self.dim}")
        if self.fourier_bands < 1:
            raise ValueError(f"fourier_bands must be >= 1, got {self.fourier_bands}")
        if self.max_offset < 0:
            raise ValueError(f"max_offset must be >= 0, got {self.max_offset}")


class KeypointDecoder(nn.Module):
    """forward(hidden (B, D), prompt_feat (B, C), feats (B, C, g, g)) -> xy (B, 2) normalised [0, 1],
    visibility logits (B,), attention logits (B, g*g)."""

    def __init__(self, cfg: DecoderConfig, llm_dim: int, vision_channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.query = nn.Sequential(nn.Linear(llm_dim + vision_channels, d), nn.GELU(), nn.Linear(d, d))
        self.key = nn.Linear(vision_channels + 4 * cfg.fourier_bands, d)
        self.value = nn.Linear(vision_channels, d)
        self.match = nn.Linear(vision_channels, d)  # support feature vs patch feature: the appearance-matching prior
        self.match_scale = nn.Parameter(torch.tensor(5.0))
        self.offset = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, 2))
        self.visibility = nn.Sequential(nn.Linear(2 * d + 1, d), nn.GELU(), nn.Linear(d, 1))
        self.log_temperature = nn.Parameter(torch.zeros(()))

    @staticmethod
    def centres(grid: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(g*g, 2) normalised (x, y) centres of the patches, row-major."""
        c = (torch.arange(grid, device=device, dtype=dtype) + 0.5) / grid
        yy, xx = torch.meshgrid(c, c, indexing="ij")
        return torch.stack([xx.flatten(), yy.flatten()], dim=-1)

    def forward(
        self, hidden: torch.Tensor, prompt_feat: torch.Tensor, feats: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, c, g, _ = feats.shape
        centres = self.centres(g, feats.device, feats.dtype)  # (N, 2)
        patches = feats.flatten(2).transpose(1, 2)  # (B, N, C)
        pos = fourier_encoding(centres, self.cfg.fourier_bands).expand(b, -1, -1)
        keys = self.key(torch.cat([patches, pos], dim=-1))  # (B, N, d)
        q = self.query(torch.cat([hidden.to(feats.dtype), prompt_feat], dim=-1))  # (B, d)
        logits = torch.einsum("bd,bnd->bn", q, keys) / (self.cfg.dim**0.5) * self.log_temperature.exp()
        has_prompt = prompt_feat.abs().sum(-1, keepdim=True) > 0  # visual/understanding rows; textual rows are zeros
        if has_prompt.any():  # add the cosine similarity of each patch to the support's feature at the keypoint
            m_q = nn.functional.normalize(self.match(prompt_feat), dim=-1)
            m_k = nn.functional.normalize(self.match(patches), dim=-1)
            logits = logits + self.match_scale * torch.einsum("bd,bnd->bn", m_q, m_k) * has_prompt
        attn = logits.softmax(dim=-1)
        coarse = attn @ centres  # (B, 2) soft-argmax
        v = torch.einsum("bn,bnd->bd", attn, self.value(patches))
        qv = torch.cat([q, v], dim=-1)
        xy = coarse + torch.tanh(self.offset(qv)) * (self.cfg.max_offset / g)
        peak = attn.max(dim=-1).values[:, None]
        vis = self.visibility(torch.cat([qv, peak], dim=-1)).squeeze(-1)
        return xy, vis, logits
