"""The KptLLM-style model: configs, shapes and units, LoRA-only LLM training, checkpoints, the from_pretrained
path (tiny models saved locally), the predictor API, and (slow) overfitting 4 real mouse frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kp_model.build import PredictorConfig, build_predictor
from kp_model.evaluation.metrics import pck
from kp_model.kptllm.checkpoint import CheckpointError, build_model, load_checkpoint, save_checkpoint
from kp_model.kptllm.configuration import KptLLMConfig
from kp_model.kptllm.llm import LLMConfig
from kp_model.kptllm.predictor import KptLLMPredictor
from kp_model.kptllm.semantics import humanize, semantic_text, side_of
from kp_model.kptllm.vision import VisionConfig
from kp_model.predictor import SupportNotSetError
from kp_model.training.augment import AugmentConfig, augment
from kp_model.training.loop import TrainConfig, train


def test_names_become_semantic_text() -> None:
    assert semantic_text("leftear", "mouse_topview") == "left ear of a mouse"
    assert humanize("L_F_Paw") == "left front paw" and humanize("eyeR") == "right eye" and humanize("kpt-3") == "keypoint 3"
    assert semantic_text("nose", "animal") == "nose of an animal"
    assert side_of("right ear of a mouse") == "right" and side_of("snout of a mouse") is None


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("image_size", {"vision": {"image_size": 8}}),
        ("patch_size", {"vision": {"patch_size": 5}}),
        ("lora_r", {"llm": {"lora_r": 0}}),
        ("image_grid", {"image_grid": 0}),
        ("coord_weight", {"coord_weight": -1}),
    ],
)
def test_bad_config_names_the_field(field: str, kwargs: dict) -> None:
    with pytest.raises(ValueError, match=field):
        KptLLMConfig.from_dict(kwargs)


def test_config_round_trips_through_json(small_config) -> None:
    cfg = small_config(category="mouse")
    assert KptLLMConfig.from_json(cfg.to_json()) == cfg
    json.loads(cfg.to_json())


def test_only_lora_and_new_token_rows_train_in_the_llm(small_model) -> None:
    model = small_model()
    llm_trainable = [n for n, p in model.llm.named_parameters() if p.requires_grad]
    assert llm_trainable and all("lora_" in n or "trainable_tokens" in n for n in llm_trainable)
    frozen_base = [n for n, p in model.llm.named_parameters() if not p.requires_grad]
    assert any("q_proj.base_layer" in n for n in frozen_base) and any("lm_head" in n for n in frozen_base)
    for module in (model.projector, model.prompt_encoder, model.decoder):
        assert all(p.requires_grad for p in module.parameters())


def test_predictor_shapes_units_and_errors(blob_image, blob_names, small_model) -> None:
    predictor = KptLLMPredictor(small_model())
    img, pts = blob_image()
    with pytest.raises(SupportNotSetError, match="set_support"):
        predictor.predict([img])
    predictor.set_support(img, pts, blob_names)
    big = np.zeros((300, 200, 3), np.uint8)
    [pred] = predictor.predict([big])
    assert pred.points.shape == (3, 2) and pred.scores.shape == (3,) and len(pred.texts) == 3
    assert (pred.points >= 0).all() and (pred.points[:, 0] <= 199).all() and (pred.points[:, 1] <= 299).all()
    assert ((pred.scores >= 0) & (pred.scores <= 1)).all() and pred.names == blob_names
    [textual] = predictor.predict([big], task="textual")
    assert textual.points.shape == (3, 2)
    texts = predictor.describe(img, pts[:2])
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    with pytest.raises(ValueError, match="finite"):
        predictor.describe(img, np.array([[np.nan, 1.0]]))


def test_training_step_lowers_the_loss_and_the_batch_holds_every_task(small_model, blob_sample) -> None:
    model = small_model()
    samples = [blob_sample((60, 50)), blob_sample((90, 60))]
    cfg = TrainConfig(
        steps=30,
        log_every=10,
        lr=3e-3,
        augment=AugmentConfig(rotation=0, scale=0, shift=0),
        textual_fraction=1,
        understanding_fraction=1,
    )
    result = train(model, samples, cfg)
    assert result.steps == 30 and result.history[-1]["loss"] < result.history[0]["loss"]
    assert {"lm", "coord", "heatmap", "visibility"} <= set(result.final)


def test_a_time_budget_ends_the_run_with_the_learning_rate_decayed(small_model, blob_sample, monkeypatch) -> None:
    """A clock that moves one second per reading: a 90 s budget ends a 1000-step run after tens of steps, and its
    last step ran at the cosine's floor (5 % of the peak rate), not at the rate of step 30 of 1000."""
    import kp_model.training.loop as loop

    class Clock:
        now = 0.0

        @classmethod
        def perf_counter(cls) -> float:
            cls.now += 1.0
            return cls.now

    monkeypatch.setattr(loop, "time", Clock)
    model = small_model()
    cfg = TrainConfig(steps=1000, warmup=2, lr=1e-3, log_every=5, max_seconds=90)
    result = loop.train(model, [blob_sample(), blob_sample((90, 60))], cfg)
    assert 5 < result.steps < 100
    last = result.history[-1]
    assert last["step"] == result.steps and last["eta_s"] == 0.0
    assert last["lr"] < 0.1 * 1e-3  # the floor is 5e-5; step 30 of 1000 by steps alone would be about 1e-3
    with pytest.raises(ValueError, match="max_seconds"):
        TrainConfig(max_seconds=-1)


def test_without_adapting_every_step_runs_on_torchs_thread_count(small_model, blob_sample) -> None:
    import torch

    from kp_model.threads import torch_threads

    seen = []  # torch's count as each step ends (the progress report follows every step here)
    with torch_threads(2):
        cfg = TrainConfig(steps=6, log_every=1, adapt_threads=False)
        result = train(
            small_model(), [blob_sample(), blob_sample((90, 60))], cfg, progress=lambda r: seen.append(torch.get_num_threads())
        )
        assert torch.get_num_threads() == 2
    assert seen == [2] * 6 and result.threads == 2 and result.thread_switches == 0
    assert result.history[-1]["threads"] == 2


def test_flip_swaps_left_and_right_labels(blob_names) -> None:
    img = np.zeros((64, 64, 3), np.uint8)
    pts = np.array([[32.0, 10.0], [20.0, 30.0], [44.0, 30.0]])  # nose, left_ear (image left), right_ear
    cfg = AugmentConfig(scale=0, rotation=0, shift=0, flip=1, colour=0)
    _, out, vis = augment(img, pts, np.ones(3, bool), blob_names, cfg, np.random.default_rng(0))
    assert vis.all()
    np.testing.assert_allclose(out[0], [32.0, 10.0])  # the nose stays on the axis
    np.testing.assert_allclose(out[1], [20.0, 30.0])  # "left_ear" is now the mirrored right ear's point
    np.testing.assert_allclose(out[2], [44.0, 30.0])


def test_checkpoint_round_trip_is_exact_and_atomic(tmp_path: Path, blob_image, blob_names, small_model, blob_sample) -> None:
    model = small_model()
    train(model, [blob_sample(), blob_sample((90, 60))], TrainConfig(steps=3))
    path = save_checkpoint(model, tmp_path / "v0001", {"note": "test"})
    assert {p.name for p in path.iterdir()} == {"config.json", "model.safetensors", "tokenizer", "meta.json"}
    loaded = load_checkpoint(path)
    img, pts = blob_image()
    a, b = KptLLMPredictor(model), KptLLMPredictor(loaded)
    for p in (a, b):
        p.set_support(img, pts, blob_names)
    pa, pb = a.predict([img])[0], b.predict([img])[0]
    np.testing.assert_allclose(pa.points, pb.points, atol=1e-4)
    assert pa.texts == pb.texts
    with pytest.raises(CheckpointError, match="immutable"):
        save_checkpoint(model, path)

    def crash(tmp: Path) -> None:
        raise KeyboardInterrupt("killed while writing")

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, tmp_path / "v0002", before_rename=crash)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v0001"]  # no half-written version, no temp leftovers
    with pytest.raises(CheckpointError, match="not a kpassist checkpoint"):
        load_checkpoint(tmp_path / "missing")


def test_from_pretrained_paths_with_local_tiny_models(tmp_path: Path, blob_image, blob_names, blob_sample) -> None:
    """The real loading path: AutoModel / AutoModelForCausalLM / AutoTokenizer.from_pretrained on directories."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from kp_model.kptllm.tokenization import build_tiny_tokenizer

    vision_dir, llm_dir = tmp_path / "dinov2", tmp_path / "llm"
    vcfg = AutoConfig.for_model(
        "dinov2", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, patch_size=8, image_size=64
    )
    AutoModel.from_config(vcfg).save_pretrained(vision_dir)
    tok = build_tiny_tokenizer([semantic_text(n, "blob") for n in blob_names], save_dir=llm_dir)
    lcfg = AutoConfig.for_model(
        "llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    AutoModelForCausalLM.from_config(lcfg).save_pretrained(llm_dir)
    cfg = KptLLMConfig(vision=VisionConfig(name_or_path=str(vision_dir), image_size=64), llm=LLMConfig(name_or_path=str(llm_dir)))
    model = build_model(cfg)
    assert not any(p.requires_grad for p in model.vision.parameters())  # pretrained encoder: frozen by default
    train(model, [blob_sample(), blob_sample((90, 60))], TrainConfig(steps=2))
    path = save_checkpoint(model, tmp_path / "ck")
    from safetensors.torch import load_file

    saved = load_file(str(path / "model.safetensors"))
    assert not any(k.startswith("vision.") for k in saved)  # frozen pretrained weights are reloaded, not copied
    assert not any("base_layer" in k for k in saved)
    loaded = load_checkpoint(path)
    img, pts = blob_image()
    a, b = KptLLMPredictor(model), KptLLMPredictor(loaded)
    for p in (a, b):
        p.set_support(img, pts, blob_names)
    np.testing.assert_allclose(a.predict([img])[0].points, b.predict([img])[0].points, atol=1e-4)


def test_engine_selected_by_config(tmp_path: Path, small_model) -> None:
    path = save_checkpoint(small_model(), tmp_path / "ck")
    cfg = PredictorConfig.from_json(json.dumps({"engine": "kptllm", "checkpoint": str(path)}))
    assert cfg.version.startswith("kptllm-")
    predictor = build_predictor(cfg)
    assert isinstance(predictor, KptLLMPredictor)
    with pytest.raises(ValueError, match="checkpoint"):
        PredictorConfig(engine="kptllm")


@pytest.mark.slow
def test_tiny_model_overfits_four_mouse_frames(mouse_overfit) -> None:
    """Visual, textual and understanding prompts end to end on 4 real frames (train = test), and the left/right
    label check on a swapped annotation."""
    model, samples, boxes = mouse_overfit
    predictor = KptLLMPredictor(model)
    scores = {"visual": [], "textual": []}
    for i, s in enumerate(samples):
        predictor.set_support(s.image, s.keypoints, s.names)
        for j, q in enumerate(samples):
            if i != j:
                for task in scores:
                    [pred] = predictor.predict([q.image], task=task)
                    scores[task].append(pck(pred.points, q.keypoints, q.visible, boxes[j]))
    assert np.mean(scores["visual"]) >= 0.95, scores
    assert np.mean(scores["textual"]) >= 0.95, scores
    [pred] = predictor.predict([samples[1].image])
    assert pred.texts == ["snout of a mouse", "left ear of a mouse", "right ear of a mouse", "tailbase of a mouse"]
    s = samples[2]
    assert predictor.describe(s.image, s.keypoints) == pred.texts
    assert predictor.check_labels(s.image, s.keypoints, s.names) == []
    swapped = s.keypoints[[0, 2, 1, 3]]
    [warning] = predictor.check_labels(s.image, swapped, s.names)
    assert warning.names == ("leftear", "rightear") and "swapped" in warning.message
