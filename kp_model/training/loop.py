"""Training of the KptLLM model on support/query pairs of the same category (COCO keypoint folders or any
annotations converted to ``TrainSample``): LM cross-entropy on the semantic text + L1 on the coordinates.

samples = samples_from_coco("../shared/data/dlc__openfield_mouse")        # kp_model.training.data
result = train(model, samples, TrainConfig(steps=300), progress=print)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from kp_model.config import JsonConfig
from kp_model.kptllm.modeling import KptLLM
from kp_model.kptllm.semantics import semantic_text
from kp_model.kptllm.sequences import KeypointQuery, collate
from kp_model.kptllm.vision import letterbox, to_tensor
from kp_model.threads import AdaptiveThreads
from kp_model.training.augment import AugmentConfig, augment
from kp_model.training.data import TrainingError, TrainSample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    steps: int = 300  # optimiser steps
    max_seconds: float = 0.0  # 0: no limit; else the steps stop after this many seconds and the learning rate decays
    # over the time spent too, so that a slow machine takes fewer steps, still annealed (kp_model.training.finetune's budget)
    pairs_per_step: int = 2  # support/query pairs per step
    lr: float = 2e-3  # peak learning rate (AdamW), cosine decay after warmup
    warmup: int = 20  # linear warmup steps
    weight_decay: float = 0.0  # AdamW weight decay
    textual_fraction: float = 0.3  # chance a keypoint also gets a textual-prompt sequence
    understanding_fraction: float = 0.3  # chance a keypoint also gets an understanding sequence
    max_keypoints: int = 24  # keypoints per pair (sampled) to bound memory on 133-keypoint sets
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # query/support augmentation
    seed: int = 0  # pair sampling and augmentation
    log_every: int = 25  # steps between progress reports
    adapt_threads: bool = True  # each step at torch's thread count or at 1, whichever its measured steps say is faster
    # (kp_model.threads.AdaptiveThreads: beside other busy work, 2 threads on 2 cores trained 17x slower than 1)

    def __post_init__(self) -> None:
        for name in ("steps", "pairs_per_step", "max_keypoints", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.max_seconds >= 0:  # NaN too
            raise ValueError(f"max_seconds must be >= 0 (0: no limit), got {self.max_seconds}")
        for name in ("textual_fraction", "understanding_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class TrainResult:
    steps: int
    seconds: float
    final: dict[str, float]
    history: list[dict[str, float]]
    threads: int  # torch threads of the last steps (AdaptiveThreads' choice; torch's count without adapt_threads)
    thread_switches: int  # times AdaptiveThreads changed the count


class PairSampler:
    """Draws augmented support/query pairs of the same category and keypoint set and builds their sequences."""

    def __init__(self, samples: list[TrainSample], size: int, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.size = size
        self.rng = np.random.default_rng(cfg.seed)
        self.boxed = []
        for s in samples:
            img, scale = letterbox(s.image, size)
            self.boxed.append((img, s.keypoints * scale))
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(samples):
            if s.visible.any():
                groups.setdefault((s.category, tuple(s.names)), []).append(i)
        self.groups = list(groups.values())
        if not self.groups:
            raise TrainingError("no training sample has a visible keypoint")
        self.samples = samples

    def _view(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        img, pts = self.boxed[i]
        s = self.samples[i]
        return augment(img, pts, s.visible, s.names, self.cfg.augment, self.rng)

    def draw(self) -> tuple[list[np.ndarray], list[KeypointQuery]]:
        """Images (2 per pair: support, query) and the queries of ``pairs_per_step`` pairs whose augmented
        support kept at least one visible keypoint."""
        images: list[np.ndarray] = []
        queries: list[KeypointQuery] = []
        pairs = 0
        for _ in range(self.cfg.pairs_per_step * 20):
            if pairs == self.cfg.pairs_per_step:
                break
            group = self.groups[self.rng.integers(len(self.groups))]
            si = group[self.rng.integers(len(group))]
            others = [g for g in group if g != si]
            qi = others[self.rng.integers(len(others))] if others else si
            (s_img, s_pts, s_vis), (q_img, q_pts, q_vis) = self._view(si), self._view(qi)
            if not s_vis.any():  # augmentation pushed every support keypoint out of the image: draw again
                continue
            pairs += 1
            s_idx, q_idx = len(images), len(images) + 1
            images += [s_img, q_img]
            sample = self.samples[si]
            ks = np.flatnonzero(s_vis)
            if len(ks) > self.cfg.max_keypoints:
                ks = self.rng.choice(ks, self.cfg.max_keypoints, replace=False)
            for k in ks:
                text = semantic_text(sample.names[k], sample.category)
                target = tuple((q_pts[k] / self.size).tolist())
                vis = bool(q_vis[k])
                queries.append(
                    KeypointQuery("visual", q_idx, s_idx, tuple((s_pts[k] / self.size).tolist()), "", text, target, vis)
                )
                if self.rng.random() < self.cfg.textual_fraction:
                    queries.append(KeypointQuery("textual", q_idx, -1, (0.0, 0.0), text, text, target, vis))
                if vis and self.rng.random() < self.cfg.understanding_fraction:
                    queries.append(KeypointQuery("understanding", q_idx, q_idx, target, "", text, target, vis))
        if not queries:
            raise TrainingError("augmentation left no visible support keypoint in 20 draws: lower AugmentConfig shift/scale")
        return images, queries


def train(
    model: KptLLM,
    samples: list[TrainSample],
    cfg: TrainConfig | None = None,
    progress: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train the model's trainable parameters in place. ``progress`` gets {"step", "steps", "loss", ..., "lr", "eta_s"}
    every ``log_every`` steps (and at the end); ``should_stop`` is polled each step to end early.

    With ``cfg.max_seconds`` the run ends at whichever comes first, ``cfg.steps`` steps or that many seconds; the
    cosine decay follows the larger of the two fractions done, so a run cut by time still ends at the low rate."""
    cfg = cfg or TrainConfig()
    if not samples:
        raise TrainingError("no training samples")
    torch.manual_seed(cfg.seed)
    sampler = PairSampler(samples, model.cfg.vision.image_size, cfg)
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int, elapsed: float) -> float:
        """The learning rate's factor before step ``step`` (0-based), ``elapsed`` seconds into the run."""
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        if cfg.max_seconds:
            t = max(t, elapsed / cfg.max_seconds)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    model.train()
    threads_before = torch.get_num_threads()
    threads = AdaptiveThreads(threads_before) if cfg.adapt_threads else None  # None: every step on threads_before
    t0 = time.perf_counter()
    history: list[dict[str, float]] = []
    running: dict[str, float] = {}
    step = 0
    try:
        for step in range(1, cfg.steps + 1):
            n_threads = threads.before(step) if threads else threads_before
            t_step = time.perf_counter()
            losses = _step(model, sampler, opt, params, cfg.lr * lr_at(step - 1, t_step - t0))
            if threads:
                threads.record(n_threads, time.perf_counter() - t_step, step)
            for k, v in losses.items():
                running[k] = running.get(k, 0.0) + v
            out_of_time = bool(cfg.max_seconds) and time.perf_counter() - t0 >= cfg.max_seconds
            if step % cfg.log_every == 0 or step == cfg.steps or out_of_time:
                kept = threads.current if threads else threads_before
                history.append(_report(step, cfg, running, time.perf_counter() - t0, opt, out_of_time, kept))
                running = {}
                if progress is not None:
                    progress(history[-1])
            if out_of_time:
                log.info("training: the %.0f s budget ended the run at step %d of %d", cfg.max_seconds, step, cfg.steps)
                break
            if should_stop is not None and should_stop():
                log.warning("training stopped early at step %d", step)
                break
    finally:
        torch.set_num_threads(threads_before)
    switches = threads.switches if threads else 0
    if switches:
        log.info("training: %d thread-count change(s), the last steps on %d thread(s)", switches, threads.current)
    model.eval()
    final = history[-1] if history else {}
    return TrainResult(step, time.perf_counter() - t0, final, history, threads.current if threads else threads_before, switches)


def _step(model: KptLLM, sampler: PairSampler, opt: torch.optim.Optimizer, params: list, lr: float) -> dict[str, float]:
    """One optimiser step at learning rate ``lr`` on a freshly drawn batch; its losses."""
    for group in opt.param_groups:
        group["lr"] = lr
    images, queries = sampler.draw()
    batch = collate(model.tokenizer, queries, model.cfg.image_grid**2, with_answer=True)
    losses = model(to_tensor(images), batch)
    opt.zero_grad(set_to_none=True)
    losses["loss"].backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return {k: float(v.detach()) for k, v in losses.items()}


def _report(
    step: int,
    cfg: TrainConfig,
    running: dict[str, float],
    elapsed: float,
    opt: torch.optim.Optimizer,
    out_of_time: bool,
    threads: int,
) -> dict[str, float]:
    """The progress report of the steps since the last one (``running``: their summed losses)."""
    n = step % cfg.log_every or cfg.log_every
    report = {"step": step, "steps": cfg.steps, **{k: v / n for k, v in running.items()}}
    report["elapsed_s"] = elapsed
    report["lr"] = opt.param_groups[0]["lr"]  # of this step
    report["threads"] = threads
    report["eta_s"] = 0.0 if out_of_time else elapsed / step * (cfg.steps - step)
    if cfg.max_seconds:
        report["eta_s"] = min(report["eta_s"], max(0.0, cfg.max_seconds - elapsed))
    log.info(
        "train step %d/%d loss %.4f (lm %.3f coord %.4f) eta %.0fs",
        step,
        cfg.steps,
        report["loss"],
        report["lm"],
        report["coord"],
        report["eta_s"],
    )
    return report
