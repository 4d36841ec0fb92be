"""Configuration of the KptLLM model: one dataclass per component (each in its component's module), gathered here,
with the loss weights. Round-trips through JSON; unknown keys are an error (kp_model.config)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kp_model.config import JsonConfig
from kp_model.kptllm.keypoint_decoder import DecoderConfig
from kp_model.kptllm.llm import LLMConfig
from kp_model.kptllm.prompt_encoder import PromptEncoderConfig
from kp_model.kptllm.vision import VisionConfig


@dataclass(frozen=True)
class KptLLMConfig(JsonConfig):
    vision: VisionConfig = field(default_factory=VisionConfig)  # query/support image encoder
    prompt: PromptEncoderConfig = field(default_factory=PromptEncoderConfig)  # support keypoint -> prompt token
    llm: LLMConfig = field(default_factory=LLMConfig)  # causal LM + LoRA
    decoder: DecoderConfig = field(default_factory=DecoderConfig)  # position-token hidden state -> (x, y)
    image_grid: int = 6  # the LLM sees the query as image_grid^2 pooled patch tokens (the decoder sees all patches)
    lm_weight: float = 1.0  # weight of the LM cross-entropy on the semantic text
    coord_weight: float = 5.0  # weight of the L1 loss on normalised coordinates
    heatmap_weight: float = 0.5  # weight of the cross-entropy of the decoder's attention vs the true patch
    visibility_weight: float = 0.2  # weight of the visibility BCE
    category: str = "object"  # category named in semantic texts when the caller gives none

    def __post_init__(self) -> None:
        if self.image_grid < 1:
            raise ValueError(f"image_grid must be >= 1, got {self.image_grid}")
        for name in ("lm_weight", "coord_weight", "heatmap_weight", "visibility_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def tiny_config(**overrides) -> KptLLMConfig:
    """The CPU preset: a 2-stage ResNet (224 px, features every 8 px) and a 2-layer 128-wide Llama, both from scratch."""
    return KptLLMConfig(**overrides)
