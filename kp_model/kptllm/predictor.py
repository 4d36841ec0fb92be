"""SAM-style predictor of the KptLLM model: set the support once (its features and prompt tokens cached),
then locate its keypoints in many query images; ``describe`` answers "what is at this point?"; ``check_labels``
flags left/right labels that look swapped.

predictor = KptLLMPredictor(load_checkpoint(dir))
predictor.set_support(image, keypoints, names)                # (H, W, 3) uint8, (K, 2) px, K names
[pred] = predictor.predict([query])                            # pred.points (K, 2) px, scores (K,), texts (K)
texts = predictor.describe(image, np.array([[x, y]]))          # ["left ear of a mouse"]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from kp_model.kptllm.modeling import KptLLM
from kp_model.kptllm.semantics import humanize, semantic_text, side_of
from kp_model.kptllm.sequences import KeypointQuery, collate
from kp_model.kptllm.vision import letterbox, to_tensor
from kp_model.mirror import mirror_permutation
from kp_model.predictor import KeypointPrediction, SupportNotSetError, validate_support


@dataclass
class LabelWarning:
    """Two labels whose points the model reads as the other side: names, and what it read at each point."""

    names: tuple[str, str]
    read_as: tuple[str, str]
    message: str = field(default="")


class KptLLMPredictor:
    """``model``: the model, or a function returning it (kp_model.build.ModelCache): then the predictor does not
    keep the model alive between calls, so cached supports of many projects do not pin their models in memory
    (a checkpoint never changes, so the cached support features stay valid when the model is loaded again)."""

    def __init__(self, model: KptLLM | Callable[[], KptLLM], category: str | None = None) -> None:
        if isinstance(model, KptLLM):
            model.eval()
            self._model: Callable[[], KptLLM] = lambda: model
        else:
            self._model = model
        cfg = self.model.cfg
        self.category = category or cfg.category
        self.size = cfg.vision.image_size
        self._support: tuple[torch.Tensor, np.ndarray] | None = None  # (1, C, g, g) features, (K, 2) normalised points
        self._names: list[str] = []

    @property
    def model(self) -> KptLLM:
        return self._model()

    @property
    def is_support_set(self) -> bool:
        return self._support is not None

    @property
    def support_names(self) -> list[str]:
        return list(self._names)

    def _encode(self, image: np.ndarray) -> tuple[torch.Tensor, float]:
        boxed, scale = letterbox(np.asarray(image), self.size)
        with torch.no_grad():
            return self.model.encode_images(to_tensor([boxed])), scale

    def set_support(self, image: np.ndarray, keypoints: np.ndarray, names: list[str]) -> None:
        """Cache the support: image (H, W, 3) uint8 RGB, keypoints (K, 2) px inside it, K distinct names.

        Raises SupportError on bad input (see ``kp_model.predictor.validate_support``)."""
        kps = validate_support(image, keypoints, names)
        feats, scale = self._encode(image)
        self._support = (feats, kps * scale / self.size)
        self._names = list(names)

    def _run(self, feats: torch.Tensor, queries: list[KeypointQuery]) -> tuple[list[str], np.ndarray, np.ndarray]:
        model = self.model
        batch = collate(model.tokenizer, queries, model.cfg.image_grid**2, with_answer=False)
        texts, xy, scores = model.generate(feats, batch)
        return texts, xy.cpu().numpy().astype(np.float64), scores.cpu().numpy().astype(np.float64)

    def predict(self, images: list[np.ndarray], task: str = "visual") -> list[KeypointPrediction]:
        """The support's keypoints in each query image ((H, W, 3) uint8 RGB): points (K, 2) px, scores (K,)
        in [0, 1], texts (K) semantic texts. ``task`` "textual" asks by keypoint name instead of by support point."""
        if self._support is None:
            raise SupportNotSetError("no support set: call set_support(image, keypoints, names) before predict()")
        if task not in ("visual", "textual"):
            raise ValueError(f"task must be 'visual' or 'textual', got {task!r}")
        s_feats, s_pts = self._support
        out = []
        for image in images:
            t0 = time.perf_counter()
            q_feats, scale = self._encode(image)
            feats = torch.cat([q_feats, s_feats])  # image 0: query, image 1: support
            if task == "visual":
                queries = [KeypointQuery("visual", 0, 1, tuple(p)) for p in s_pts.tolist()]
            else:
                queries = [KeypointQuery("textual", 0, -1, text=semantic_text(n, self.category)) for n in self._names]
            texts, xy, scores = self._run(feats, queries)
            points = xy * self.size / scale
            h, w = np.asarray(image).shape[:2]
            points = np.clip(points, 0, [w - 1, h - 1])
            out.append(KeypointPrediction(self.support_names, points, scores, time.perf_counter() - t0, texts))
        return out

    def describe(self, image: np.ndarray, points: np.ndarray) -> list[str]:
        """Semantic text of each point: image (H, W, 3) uint8, points (P, 2) px -> P texts."""
        points = np.asarray(points, np.float64).reshape(-1, 2)
        if not np.isfinite(points).all():
            raise ValueError("describe: points must be finite pixel coordinates")
        feats, scale = self._encode(image)
        norm = np.clip(points * scale / self.size, 0, 1)
        texts, _, _ = self._run(feats, [KeypointQuery("understanding", 0, 0, tuple(p)) for p in norm.tolist()])
        return texts

    def check_labels(self, image: np.ndarray, keypoints: np.ndarray, names: list[str]) -> list[LabelWarning]:
        """Left/right pairs whose two points both read as the other side (a swapped annotation).

        keypoints (K, 2) px, NaN for unlabelled; names K names. Pairs come from ``mirror_permutation``."""
        perm = mirror_permutation(list(names))
        if perm is None:
            return []
        kps = np.asarray(keypoints, np.float64).reshape(-1, 2)
        labelled = np.isfinite(kps).all(axis=1)
        pairs = [(i, int(j)) for i, j in enumerate(perm) if i < j and labelled[i] and labelled[j]]
        if not pairs:
            return []
        idx = sorted({k for p in pairs for k in p})
        read = dict(zip(idx, self.describe(image, kps[idx]), strict=True))
        warnings = []
        for i, j in pairs:
            side_i, side_j = side_of(humanize(names[i])), side_of(humanize(names[j]))
            got_i, got_j = side_of(read[i]), side_of(read[j])
            if side_i and side_j and got_i == side_j and got_j == side_i:
                msg = f"labels {names[i]!r} and {names[j]!r} look swapped: the model reads {read[i]!r} and {read[j]!r}"
                warnings.append(LabelWarning((names[i], names[j]), (read[i], read[j]), msg))
        return warnings
