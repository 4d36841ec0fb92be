"""Token sequences of the three tasks, batched: one sequence per keypoint, so all keypoints of a support are
answered in one forward pass (KptLLM asks one keypoint at a time)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from kp_model.kptllm.tokenization import IMAGE_TOKEN, POS_TOKEN, TASKS, answer_text, prompt_text


@dataclass
class KeypointQuery:
    """One keypoint question. Points are normalised (x, y) in [0, 1] of the letterboxed image.

    task: "visual" | "textual" | "understanding"; image: index of the image asked about; prompt_image: index of the
    image the prompt point is sampled on (-1: no prompt token, the textual task); text: keypoint description
    (textual task); answer: the target semantic text (training only); target_xy/visible: training targets.
    """

    task: str
    image: int
    prompt_image: int = -1
    prompt_xy: tuple[float, float] = (0.0, 0.0)
    text: str = ""
    answer: str | None = None
    target_xy: tuple[float, float] = (0.0, 0.0)
    visible: bool = True

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if (self.task == "textual") != (self.prompt_image < 0):
            raise ValueError(f"task {self.task!r}: a prompt point is used by the visual/understanding tasks only")
        if self.task == "textual" and not self.text:
            raise ValueError("the textual task needs the keypoint description in text")


@dataclass
class SequenceBatch:
    """Tensors of a batch of B sequences of length L.

    input_ids/attention_mask/labels: (B, L) (labels -100 where not predicted); image/prompt_image: (B,) indices;
    prompt_xy/target_xy: (B, 2) normalised; visible: (B,) float; has_pos: (B,) bool (localisation tasks);
    pos_index: (B,) index of the position token in the sequence (training, -1 when absent).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    image: torch.Tensor
    prompt_image: torch.Tensor
    prompt_xy: torch.Tensor
    target_xy: torch.Tensor
    visible: torch.Tensor
    has_pos: torch.Tensor
    pos_index: torch.Tensor
    tasks: list[str] = field(default_factory=list)


def collate(tokenizer, queries: list[KeypointQuery], image_tokens: int, with_answer: bool) -> SequenceBatch:
    """Tokenise queries; ``<kp_image>`` expands to ``image_tokens`` placeholders. Training batches (with_answer)
    are right-padded with the answer and eos appended; inference batches are left-padded prompts."""
    if not queries:
        raise ValueError("collate needs at least one query")
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    pos_id = tokenizer.convert_tokens_to_ids(POS_TOKEN)
    rows, label_rows, pos_index = [], [], []
    for q in queries:
        ids = tokenizer(prompt_text(q.task, q.text), add_special_tokens=False)["input_ids"]
        at = ids.index(image_id)
        ids = ids[:at] + [image_id] * image_tokens + ids[at + 1 :]
        labels = [-100] * len(ids)
        if with_answer:
            if q.answer is None:
                raise ValueError("a training query needs its answer text")
            ans = tokenizer(" " + answer_text(q.task, q.answer), add_special_tokens=False)["input_ids"]
            ans = ans + [tokenizer.eos_token_id]
            ids, labels = ids + ans, labels + ans
        rows.append(ids)
        label_rows.append(labels)
        pos_index.append(ids.index(pos_id) if pos_id in ids else -1)
    length = max(map(len, rows))
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (ids, lab) in enumerate(zip(rows, label_rows, strict=True)):
        sl = slice(0, len(ids)) if with_answer else slice(length - len(ids), length)
        input_ids[i, sl] = torch.tensor(ids)
        labels[i, sl] = torch.tensor(lab)
        mask[i, sl] = 1
        if not with_answer and pos_index[i] >= 0:
            pos_index[i] += length - len(ids)
    return SequenceBatch(
        input_ids=input_ids,
        attention_mask=mask,
        labels=labels,
        image=torch.tensor([q.image for q in queries]),
        prompt_image=torch.tensor([q.prompt_image for q in queries]),
        prompt_xy=torch.tensor(np.array([q.prompt_xy for q in queries], np.float32)),
        target_xy=torch.tensor(np.array([q.target_xy for q in queries], np.float32)),
        visible=torch.tensor([float(q.visible) for q in queries]),
        has_pos=torch.tensor([q.task != "understanding" for q in queries]),
        pos_index=torch.tensor(pos_index),
        tasks=[q.task for q in queries],
    )
