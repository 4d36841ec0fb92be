"""KptLLM checkpoints: a directory with ``config.json``, ``model.safetensors``, ``tokenizer/`` and ``meta.json``,
written atomically (built in a temporary sibling directory, fsynced, then renamed into place), so a crash at
any point leaves either the complete checkpoint or none.

Saved weights: everything built from scratch, plus every trainable parameter (LoRA, new token rows, projector,
prompt encoder, decoder). Frozen pretrained weights are not copied: they are reloaded from ``name_or_path``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from kp_model.kptllm.configuration import KptLLMConfig, tiny_config
from kp_model.kptllm.llm import load_tokenizer
from kp_model.kptllm.modeling import KptLLM

WEIGHTS = "model.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, incomplete or does not match the model it is loaded into."""


def _saved_keys(model: KptLLM) -> set[str]:
    pretrained = []
    if model.cfg.vision.name_or_path:
        pretrained.append("vision.")
    if model.cfg.llm.name_or_path:
        pretrained.append("llm.")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k for k in model.state_dict() if k in trainable or not any(k.startswith(p) for p in pretrained)}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    model: KptLLM, path: str | Path, meta: dict | None = None, before_rename: Callable[[Path], None] | None = None
) -> Path:
    """Write ``model`` to the directory ``path`` atomically; ``path`` must not exist yet (versions are immutable).

    ``before_rename(tmp_dir)`` runs once every file is written and synced, before the directory is renamed into
    place (validation, fault-injection tests)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists():
        raise CheckpointError(f"{path} already exists: checkpoints are immutable, save under a new version")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        keys = _saved_keys(model)
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items() if k in keys}
        save_file(state, str(tmp / WEIGHTS))
        (tmp / "config.json").write_text(model.cfg.to_json())
        model.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "meta.json").write_text(json.dumps(meta or {}, indent=2, default=str))
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if before_rename is not None:
            before_rename(tmp)
        os.rename(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_meta(path: str | Path) -> dict:
    return json.loads((Path(path) / "meta.json").read_text())


def load_checkpoint(path: str | Path, device: str = "cpu") -> KptLLM:
    """The model saved in ``path`` (pretrained bases reloaded from their ``name_or_path``)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / WEIGHTS).is_file() or not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not a kpassist checkpoint (needs config.json and {WEIGHTS})")
    cfg = KptLLMConfig.from_json((path / "config.json").read_text())
    tokenizer = load_tokenizer(cfg.llm, path=str(path / "tokenizer"))
    model = KptLLM(cfg, tokenizer)
    state = load_file(str(path / WEIGHTS))
    expected = _saved_keys(model)
    missing = expected - set(state)
    unexpected = set(state) - set(model.state_dict())
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match its config: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.load_state_dict(state, strict=False)
    model.to(torch.device(device))
    model.eval()
    return model


def build_model(
    cfg: KptLLMConfig | None = None, checkpoint: str | Path | None = None, vocab_texts: list[str] | None = None
) -> KptLLM:
    """A new model from ``cfg`` (the tiny tokenizer learns ``vocab_texts``), or the one saved in ``checkpoint``
    (its config and tokenizer win over ``cfg``)."""
    if checkpoint is not None:
        return load_checkpoint(checkpoint)
    cfg = cfg or tiny_config()
    tokenizer = load_tokenizer(cfg.llm, vocab_texts=vocab_texts)
    return KptLLM(cfg, tokenizer)
