"""The KptLLM-style keypoint model ("identify, then detect"): vision encoder -> image tokens; support features at
the support keypoints -> keypoint prompt tokens; a LoRA-tuned causal LLM decodes the keypoint's semantic text
ending in a position token; the keypoint decoder regresses (x, y) from that token's hidden state.

model = build_model(tiny_config(), vocab_texts=["left ear of a mouse", ...])   # kp_model.kptllm.checkpoint
losses = model(pixels, batch)                                                   # training (kp_model.training.loop)
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from torch.nn import functional as F

from kp_model.kptllm.configuration import KptLLMConfig
from kp_model.kptllm.keypoint_decoder import KeypointDecoder
from kp_model.kptllm.llm import build_llm
from kp_model.kptllm.prompt_encoder import PromptEncoder, sample_features
from kp_model.kptllm.sequences import SequenceBatch
from kp_model.kptllm.tokenization import IMAGE_TOKEN, POS_TOKEN, PROMPT_TOKEN
from kp_model.kptllm.vision import VisionEncoder


class KptLLM(nn.Module):
    def __init__(self, cfg: KptLLMConfig, tokenizer) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.vision = VisionEncoder(cfg.vision)
        self.llm = build_llm(cfg.llm, tokenizer)
        dim = self.llm.get_input_embeddings().weight.shape[1]
        c = self.vision.channels
        self.projector = nn.Sequential(nn.Linear(c, dim), nn.GELU(), nn.Linear(dim, dim))
        self.prompt_encoder = PromptEncoder(cfg.prompt, c, dim)
        self.decoder = KeypointDecoder(cfg.decoder, dim, c)
        self.image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.prompt_id = tokenizer.convert_tokens_to_ids(PROMPT_TOKEN)
        self.pos_id = tokenizer.convert_tokens_to_ids(POS_TOKEN)
        # the KV-cache argument/output is "cache" in transformers >= 5.2x, "past_key_values" before
        params = inspect.signature(self.llm.get_base_model().forward).parameters
        self._cache_name = "cache" if "cache" in params else "past_key_values"

    @property
    def device(self) -> torch.device:
        return self.projector[0].weight.device

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(I, 3, S, S) normalised -> (I, C, g, g) patch features."""
        return self.vision(pixels.to(self.device))

    def prompt_features(self, feats: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
        """(B, C) features at each sequence's prompt point (zeros for the textual task)."""
        has = batch.prompt_image >= 0
        out = feats.new_zeros(len(batch.prompt_image), feats.shape[1])
        if has.any():
            idx = batch.prompt_image[has].to(feats.device)
            out[has.to(feats.device)] = sample_features(feats[idx], batch.prompt_xy[has].to(feats.device))
        return out

    def embed(self, feats: torch.Tensor, batch: SequenceBatch, prompt_feat: torch.Tensor) -> torch.Tensor:
        """(B, L, D) input embeddings: token embeddings with the image and prompt placeholders filled in."""
        ids = batch.input_ids.to(self.device)
        emb = self.llm.get_input_embeddings()(ids)
        g = self.cfg.image_grid
        pooled = F.adaptive_avg_pool2d(feats, g).flatten(2).transpose(1, 2)  # (I, g*g, C)
        image_tokens = self.projector(pooled)[batch.image.to(self.device)]  # (B, g*g, D)
        is_image = ids == self.image_id
        emb = emb.masked_scatter(is_image[..., None], image_tokens.to(emb.dtype))
        is_prompt = ids == self.prompt_id
        if is_prompt.any():
            rows = is_prompt.any(dim=1)
            tokens = self.prompt_encoder(prompt_feat[rows], batch.prompt_xy[rows.cpu()].to(self.device))
            emb = emb.masked_scatter(is_prompt[..., None], tokens.to(emb.dtype))
        return emb

    def forward(self, pixels: torch.Tensor, batch: SequenceBatch) -> dict[str, torch.Tensor]:
        """Training losses of a teacher-forced batch (right-padded, with answers): {"loss", "lm", "coord", ...}."""
        feats = self.encode_images(pixels)
        prompt_feat = self.prompt_features(feats, batch)
        emb = self.embed(feats, batch, prompt_feat)
        out = self.llm(inputs_embeds=emb, attention_mask=batch.attention_mask.to(self.device), output_hidden_states=True)
        labels = batch.labels.to(self.device)
        lm = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        losses = {"lm": lm}
        has = batch.has_pos.to(self.device)
        zero = lm.new_zeros(())
        if has.any():
            rows = torch.nonzero(has).squeeze(1)
            hidden = out.hidden_states[-1][rows, batch.pos_index.to(self.device)[rows]]
            q_feats = feats[batch.image.to(self.device)[rows]]
            xy, vis, logits = self.decoder(hidden, prompt_feat[rows], q_feats)
            target = batch.target_xy.to(self.device)[rows]
            visible = batch.visible.to(self.device)[rows]
            n_vis = visible.sum().clamp(min=1)
            losses["coord"] = ((xy - target).abs().sum(-1) * visible).sum() / n_vis
            g = q_feats.shape[-1]
            cell = (target.clamp(0, 1 - 1e-6) * g).long()
            ce = F.cross_entropy(logits.float(), cell[:, 1] * g + cell[:, 0], reduction="none")
            losses["heatmap"] = (ce * visible).sum() / n_vis
            losses["visibility"] = F.binary_cross_entropy_with_logits(vis.float(), visible)
        else:
            losses.update(coord=zero, heatmap=zero, visibility=zero)
        c = self.cfg
        losses["loss"] = (
            c.lm_weight * losses["lm"]
            + c.coord_weight * losses["coord"]
            + c.heatmap_weight * losses["heatmap"]
            + c.visibility_weight * losses["visibility"]
        )
        return losses

    @torch.no_grad()
    def generate(self, feats: torch.Tensor, batch: SequenceBatch) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """Greedy decoding of a left-padded prompt batch; the position token is forced after max_new_tokens.

        Returns the semantic texts (B), xy (B, 2) normalised (NaN for understanding rows) and scores (B,) in [0, 1].
        """
        prompt_feat = self.prompt_features(feats, batch)
        emb = self.embed(feats, batch, prompt_feat)
        mask = batch.attention_mask.to(self.device)
        out = self.llm(inputs_embeds=emb, attention_mask=mask, use_cache=True)
        b = emb.shape[0]
        eos = self.tokenizer.eos_token_id
        wants_pos = batch.has_pos.to(self.device)
        done = torch.zeros(b, dtype=torch.bool, device=self.device)
        hidden_pos = emb.new_zeros(b, emb.shape[-1])
        texts: list[list[int]] = [[] for _ in range(b)]
        max_new = self.cfg.llm.max_new_tokens
        for step in range(max_new + 1):
            nxt = out.logits[:, -1].argmax(-1)
            if step == max_new:  # force the end: the position token where one is wanted
                nxt = torch.where(wants_pos, torch.full_like(nxt, self.pos_id), torch.full_like(nxt, eos))
            nxt = torch.where(wants_pos, nxt, torch.where(nxt == self.pos_id, torch.full_like(nxt, eos), nxt))
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            for i in torch.nonzero(~done).squeeze(1).tolist():
                if nxt[i].item() not in (eos, self.pos_id):
                    texts[i].append(nxt[i].item())
            if done.all():
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            cache = {self._cache_name: getattr(out, self._cache_name)}
            out = self.llm(input_ids=nxt[:, None], attention_mask=mask, use_cache=True, output_hidden_states=True, **cache)
            fed_pos = (nxt == self.pos_id) & ~done
            hidden_pos[fed_pos] = out.hidden_states[-1][fed_pos, -1]
            done |= fed_pos | (nxt == eos)
        words = [self.tokenizer.decode(t, skip_special_tokens=True).strip() for t in texts]
        xy = torch.full((b, 2), float("nan"), device=self.device)
        scores = torch.zeros(b, device=self.device)
        if wants_pos.any():
            rows = torch.nonzero(wants_pos).squeeze(1)
            p_xy, vis, _ = self.decoder(hidden_pos[rows], prompt_feat[rows], feats[batch.image.to(self.device)[rows]])
            xy[rows] = p_xy.float()
            scores[rows] = torch.sigmoid(vis.float())
        return words, xy, scores

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
