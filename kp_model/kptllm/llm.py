"""The causal LLM of the KptLLM model: ``AutoModelForCausalLM`` + its tokenizer with the keypoint special tokens
added, wrapped with LoRA adapters by peft (base weights frozen; only LoRA and the new tokens' rows train).

``name_or_path`` names a real checkpoint (e.g. a local Qwen2.5-0.5B-Instruct); empty builds a tiny Llama with a
word-level tokenizer (``kp_model.kptllm.tokenization.build_tiny_tokenizer``) for CPU training and tests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from torch import nn

from kp_model.config import JsonConfig
from kp_model.kptllm.tokenization import SPECIAL_TOKENS, build_tiny_tokenizer

log = logging.getLogger(__name__)


class LLMLoadError(RuntimeError):
    """The configured LLM or tokenizer cannot be loaded."""


@dataclass(frozen=True)
class LLMConfig(JsonConfig):
    name_or_path: str = ""  # transformers causal-LM dir or hub id; "" = tiny Llama built from this config
    hidden_size: int = 128  # tiny preset only: model width
    layers: int = 2  # tiny preset only: decoder layers
    heads: int = 4  # tiny preset only: attention heads
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.0  # dropout on the LoRA path
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    )  # modules given adapters
    max_new_tokens: int = 12  # most tokens generated before the position token is forced

    def __post_init__(self) -> None:
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by heads ({self.heads})")
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.lora_r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.lora_targets:
            raise ValueError("lora_targets must name at least one module")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def load_tokenizer(cfg: LLMConfig, path: str = "", vocab_texts: list[str] | None = None):
    """The tokenizer at ``path`` (a checkpoint's copy), else ``cfg.name_or_path``'s, else a new tiny one knowing
    ``vocab_texts``; the special tokens are added when missing."""
    from transformers import AutoTokenizer

    source = path or cfg.name_or_path
    if source:
        try:
            tok = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise LLMLoadError(f"cannot load tokenizer {source!r}: {exc}") from exc
    else:
        tok = build_tiny_tokenizer(vocab_texts or [])
    missing = [t for t in SPECIAL_TOKENS if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token is None:
        raise LLMLoadError(f"tokenizer {source!r} has no eos token")
    return tok


def build_llm(cfg: LLMConfig, tokenizer) -> nn.Module:
    """The causal LM (pretrained or tiny) with embeddings resized to the tokenizer and LoRA adapters added.

    Trainable: the LoRA matrices and the rows of the special tokens (peft ``trainable_token_indices``).
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    if cfg.name_or_path:
        try:
            base = AutoModelForCausalLM.from_pretrained(cfg.name_or_path)
        except (OSError, ValueError) as exc:
            raise LLMLoadError(f"cannot load LLM {cfg.name_or_path!r}: {exc}") from exc
    else:
        config = AutoConfig.for_model(
            "llama",
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.hidden_size * 2,
            num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads,
            num_key_value_heads=cfg.heads,
            max_position_embeddings=4096,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
            tie_word_embeddings=False,
        )
        base = AutoModelForCausalLM.from_config(config)
    if base.get_input_embeddings().weight.shape[0] < len(tokenizer):
        base.resize_token_embeddings(len(tokenizer))
    token_ids = [tokenizer.convert_tokens_to_ids(t) for t in (*SPECIAL_TOKENS, tokenizer.eos_token)]
    token_ids = sorted(set(token_ids))
    names = {id(m): n.rsplit(".", 1)[-1] for n, m in base.named_modules()}
    emb_in, emb_out = base.get_input_embeddings(), base.get_output_embeddings()
    tied = emb_out is None or emb_out.weight is emb_in.weight
    # the new tokens' input rows and (untied models) output rows train, so the LM learns to emit the position token
    trainable_tokens = token_ids if tied else {names[id(emb_in)]: token_ids, names[id(emb_out)]: token_ids}
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets),
        trainable_token_indices=trainable_tokens,
        ensure_weight_tying=tied,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, lora)
