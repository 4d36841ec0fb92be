"""Fine-tuning runs and the versioned store: fixed split, promotion rule, atomic versions, crash leftovers."""

from __future__ import annotations

from pathlib import Path

import pytest

from kp_model.build import PredictorConfig
from kp_model.training.finetune import FinetuneSettings, _budgeted, assign_split, run_finetune
from kp_model.training.loop import TrainConfig
from kp_model.training.promotion import Paired, PromotionRule, decide
from kp_model.training.store import ModelStore, StoreError


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


def test_run_trains_saves_evaluates_and_records(tmp_path: Path, blob_samples, small_config) -> None:
    store = ModelStore(tmp_path)
    stages = []
    settings = FinetuneSettings(small_config(), TrainConfig(steps=4), salt="p1")
    record = run_finetune(blob_samples(4), store, settings, stage=stages.append)
    assert stages == ["evidence", "train", "checkpoint", "record", "promote"]
    assert record["train_steps"] == 4 and record["config"]["train"]["max_seconds"] == 0  # no budget: every step
    assert record["version"] == "v0001" and store.versions() == ["v0001"]
    held, trained = record["heldout_annotation_ids"], record["annotation_ids"]
    assert held == ["2/102"] and trained == ["0/100", "1/101", "3/103"]  # image 2 is the first held out (assign_split)
    m = record["metrics"]
    for key in ("pck@0.2", "served_pck@0.2"):
        assert 0.0 <= m[key] <= 1.0
    assert m["served_version"] is None and m["heldout_images"] == 1
    [row] = record["evidence"]  # the held-out image, scored by the candidate and by the default engine
    assert row["image"] == "2/102" and row["source"] == "heldout" and row["candidate"] == m["pck@0.2"]
    assert record["decision"] == "reject" and "not enough evidence" in record["reason"]  # one image is not evidence
    assert store.served() is None


def test_the_newest_corrections_are_prequential_evidence_for_the_line_of_models(
    tmp_path: Path, blob_samples, small_config
) -> None:
    """A second run scores the first (rejected) version and the served default engine on the images corrected since,
    before training on them: that evidence joins the held-out images'. The served default engine answers it in
    worker processes (evidence_processes)."""
    store = ModelStore(tmp_path)
    settings = FinetuneSettings(small_config(), TrainConfig(steps=2), rule=PromotionRule(min_images=1), evidence_processes=2)
    with pytest.raises(ValueError, match="evidence_processes"):
        FinetuneSettings(small_config(), TrainConfig(steps=2), evidence_processes=-1)
    run_finetune(blob_samples(4), store, FinetuneSettings(small_config(), TrainConfig(steps=2)))
    record = run_finetune(blob_samples(7), store, settings)
    sources = [(r["image"], r["source"]) for r in record["evidence"]]
    fresh = [k for k in record["annotation_ids"] if k not in store.record("v0001")["annotation_ids"]]
    assert fresh and [(k, "prequential") for k in fresh] == [x for x in sources if x[1] == "prequential"]
    rows = [Paired(**r) for r in record["evidence"]]
    assert (record["decision"] == "promote") == decide(rows, PromotionRule(min_images=1))[0]


def test_a_budget_leaves_the_steps_what_the_evidence_did_not_take(small_config, caplog) -> None:
    """55 s budget, 10 s spent (8 of them the served side's evidence on 4 images): the steps get 55 - 10 - (2 + 0.3 x 8)
    = 40.6 s; with the previous run's candidate side measured at 0.5 s per image, 55 - 10 - (2 + 4 x 0.5) = 41 s;
    never under a quarter of the budget; no budget: the settings' own."""
    settings = FinetuneSettings(small_config(), TrainConfig(steps=300), budget_s=55)
    assert _budgeted(settings, 10.0, 8.0, 4, {}).max_seconds == pytest.approx(40.6)
    assert _budgeted(settings, 10.0, 8.0, 4, {"evidence_seconds": {"candidate_per_image": 0.5}}).max_seconds == 41.0
    assert _budgeted(settings, 50.0, 48.0, 4, {}).max_seconds == 13.75 and "raise KPASSIST_TRAIN_BUDGET_S" in caplog.text
    assert _budgeted(FinetuneSettings(small_config(), TrainConfig(steps=300)), 10.0, 8.0, 4, {}) == TrainConfig(steps=300)
    tighter = FinetuneSettings(small_config(), TrainConfig(steps=300, max_seconds=20), budget_s=55)
    assert _budgeted(tighter, 10.0, 8.0, 4, {}).max_seconds == 20  # the train config's own limit when tighter
    for bad in ({"budget_s": -1.0}, {"budget_s": float("nan")}, {"evidence_images": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FinetuneSettings(small_config(), TrainConfig(steps=2), **bad)


def test_a_run_out_of_budget_still_saves_a_scored_version(tmp_path: Path, blob_samples, small_config) -> None:
    """A budget far too small for the evidence: training gets its floor (a quarter of the budget: one step here),
    the version is saved, scored and recorded with the steps it took and the evidence's seconds."""
    store = ModelStore(tmp_path)
    record = run_finetune(blob_samples(4), store, FinetuneSettings(small_config(), TrainConfig(steps=50), budget_s=1e-6))
    assert record["train_steps"] == 1 and record["config"]["train"]["max_seconds"] == pytest.approx(2.5e-7)
    assert record["budget_s"] == 1e-6 and store.versions() == ["v0001"] and len(record["evidence"]) == 1
    seconds = record["evidence_seconds"]
    assert seconds["served"] > 0 and seconds["candidate"] > 0 and seconds["candidate_per_image"] == seconds["candidate"]


def test_always_policy_promotes_and_a_crash_while_writing_leaves_no_version(tmp_path: Path, blob_samples, small_config):
    store = ModelStore(tmp_path)
    settings = FinetuneSettings(small_config(), TrainConfig(steps=2), promote="always")
    run_finetune(blob_samples(3), store, settings)
    assert store.served() == "v0001"

    def crash(name: str) -> None:
        if name == "checkpoint":
            raise SystemExit("killed")

    with pytest.raises(SystemExit):
        run_finetune(blob_samples(3), store, settings, stage=crash)
    assert store.versions() == ["v0001"] and store.served() == "v0001"
    assert not (store.versions_dir / "v0002").exists()


def test_store_serves_a_version_through_the_one_builder(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    default = PredictorConfig(device="cpu")
    assert store.predictor_config(default) is default  # nothing served: the default engine
    cfg = store.predictor_config(default, "v0007")
    assert cfg.engine == "kptllm" and cfg.checkpoint == str(tmp_path / "versions" / "v0007")


def test_the_training_device_is_checked_before_anything_is_written(tmp_path: Path, blob_samples, small_config) -> None:
    import torch

    from kp_model.training.data import TrainingError

    with pytest.raises(ValueError, match="device"):
        FinetuneSettings(small_config(), TrainConfig(steps=1), device="gpu")
    if torch.cuda.device_count() < 8:
        store = ModelStore(tmp_path / "p")
        with pytest.raises(TrainingError, match="cuda:7.*CUDA device"):
            run_finetune(blob_samples(4), store, FinetuneSettings(small_config(), TrainConfig(steps=1), device="cuda:7"))
        assert store.latest() is None
