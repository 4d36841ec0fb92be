"""Fine-tuning runs and the versioned store: fixed split, promotion rule, atomic versions, crash leftovers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kp_model.finetune import FinetuneSettings, assign_split, not_worse, run_finetune
from kp_model.predictor import PredictorConfig, build_predictor
from kp_model.store import ModelStore, StoreError
from kp_model.train import TrainConfig, TrainSample
from tests.conftest import blob_image
from tests.kp_model.test_kptllm import NAMES, small_config


def test_split_is_fixed_and_the_first_images_train() -> None:
    split = assign_split(["a", "b"], {})
    assert split == {"a": "train", "b": "train"}
    split = assign_split(["a", "b", "c"], split)
    assert split["c"] == "heldout"  # no held-out group yet: the third image is held out
    grown = assign_split([*"abc", *(f"g{i}" for i in range(40))], split)
    assert {g: grown[g] for g in "abc"} == split  # sides never change
    assert 0.05 < sum(v == "heldout" for v in grown.values()) / len(grown) < 0.45
    assert assign_split(["a", "c"], grown) == grown  # deleting images moves nothing


def test_store_versions_are_atomic_and_promotion_needs_a_checkpoint(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    assert store.next_version() == "v0001" and store.served() is None
    (store.versions_dir / ".v0001.abc.tmp").mkdir(parents=True)  # a crashed run's leftovers
    (store.versions_dir / "v0001").mkdir()  # a checkpoint without record (killed before the record)
    assert store.next_version() == "v0002" and store.versions() == []
    with pytest.raises(StoreError, match="incomplete"):
        store.promote("v0001")
    assert store.clean_partial() == [".v0001.abc.tmp"]
    store.write_record("v0002", {"decision": "reject"})
    assert store.versions() == ["v0002"] and store.record("v0002")["version"] == "v0002"
    (tmp_path / "served.json").write_text("{not json")
    with pytest.raises(StoreError, match="served.json"):
        store.served()


def samples(n: int) -> list[TrainSample]:
    out = []
    for i in range(n):
        img, pts = blob_image(centre=(50 + 8 * i, 45 + 4 * i))
        out.append(TrainSample(img, pts, np.ones(3, bool), NAMES, "blob", f"{i}/{100 + i}"))
    return out


def test_run_trains_saves_evaluates_and_applies_the_rule(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    stages = []
    settings = FinetuneSettings(small_config(), TrainConfig(steps=4), salt="p1")
    record = run_finetune(samples(4), store, settings, lambda: build_predictor(PredictorConfig()), stage=stages.append)
    assert stages == ["train", "checkpoint", "record", "promote"]
    assert record["version"] == "v0001" and store.versions() == ["v0001"]
    assert record["heldout_annotation_ids"] and not set(record["heldout_annotation_ids"]) & set(record["annotation_ids"])
    m = record["metrics"]
    expected = not_worse(
        {"pck": m["pck@0.2"], "error": m["mean_error"]}, {"pck": m["served_pck@0.2"], "error": m["served_mean_error"]}
    )
    assert (record["decision"] == "promote") == expected
    assert store.served() == ("v0001" if record["decision"] == "promote" else None)


def test_crash_while_writing_the_checkpoint_leaves_no_version(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    settings = FinetuneSettings(small_config(), TrainConfig(steps=2), promote="always")
    run_finetune(samples(3), store, settings, lambda: build_predictor(PredictorConfig()))
    assert store.served() == "v0001"

    def crash(name: str) -> None:
        if name == "checkpoint":
            raise SystemExit("killed")

    with pytest.raises(SystemExit):
        run_finetune(samples(3), store, settings, lambda: build_predictor(PredictorConfig()), stage=crash)
    assert store.versions() == ["v0001"] and store.served() == "v0001"
    assert not (store.versions_dir / "v0002").exists()
