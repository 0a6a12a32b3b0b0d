"""Proxy training: learns, is deterministic on CPU, measures what the reward needs, and fails softly."""

import dataclasses
import math

import pytest
import torch

import nas.train
from nas.data import load_data
from nas.measure import spec_complexity
from nas.train import STATUS_FAILED, STATUS_OK, EvalResult, TrainConfig, train_and_evaluate
from search_spaces import presets

FAST = dict(device="cpu", batch_size=64, timing_warmup=1, timing_repeats=2)
RECIPE = dict(epochs=4, learning_rate=0.05, warmup_epochs=0.5, **FAST)


@pytest.fixture(scope="module")
def data():
    return load_data("synthetic:num_images=3000,image_size=32", seed=0)


@pytest.fixture(scope="module")
def trained(data) -> EvalResult:
    return train_and_evaluate(presets.get("tiny"), data, TrainConfig(**RECIPE))


def test_a_tiny_network_learns_well_above_chance(trained, data):
    assert trained.status == STATUS_OK and trained.failure_reason is None
    assert trained.accuracy > 3 / data.num_classes
    losses = [epoch.loss for epoch in trained.history]
    assert losses[-1] < losses[0]


def test_result_holds_every_measurement(trained, data):
    spec = presets.get("tiny")
    complexity = spec_complexity(spec, num_classes=data.num_classes, image_size=32)
    assert trained.parameters == complexity.parameters and trained.macs == complexity.macs
    assert trained.step_time > 0 and trained.step_time_iqr >= 0
    assert trained.images_per_second == pytest.approx(64 / trained.step_time)
    assert trained.peak_memory_bytes > 0 and trained.wall_time > 0
    assert trained.device.startswith("cpu") and trained.epochs_completed == 4 == len(trained.history)
    assert trained.final_loss == trained.history[-1].loss
    assert [epoch.epoch for epoch in trained.history] == [1, 2, 3, 4]
    assert trained.to_dict()["history"][0]["epoch"] == 1


def test_same_seed_same_result_on_cpu(trained, data):
    again = train_and_evaluate(presets.get("tiny"), data, TrainConfig(**RECIPE))
    assert again.accuracy == trained.accuracy
    assert [e.loss for e in again.history] == [e.loss for e in trained.history]


def test_another_seed_trains_differently(trained, data):
    other = train_and_evaluate(presets.get("tiny"), data, TrainConfig(**RECIPE, seed=1))
    assert [e.loss for e in other.history] != [e.loss for e in trained.history]


def test_epoch_callback_and_resized_training(data):
    seen = []
    result = train_and_evaluate(presets.get("tiny"), data, TrainConfig(epochs=1, image_size=48, **FAST),
                                on_epoch=seen.append)
    assert result.ok and [stats.epoch for stats in seen] == [1]
    assert result.macs == spec_complexity(presets.get("tiny"), num_classes=10, image_size=48).macs


def test_non_finite_loss_fails_and_keeps_the_step_time(data):
    result = train_and_evaluate(presets.get("tiny"), data, TrainConfig(epochs=2, learning_rate=1e6, **FAST))
    assert result.status == STATUS_FAILED
    assert result.failure_reason.startswith("non-finite loss")
    assert result.step_time > 0 and result.accuracy is None and result.epochs_completed == 0


def test_out_of_memory_fails_softly_and_releases_memory(data, monkeypatch):
    released = []
    monkeypatch.setattr(nas.train, "release_memory", lambda device: released.append(device))

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(nas.train, "build_model", out_of_memory)
    result = train_and_evaluate(presets.get("tiny"), data, TrainConfig(epochs=1, **FAST))
    assert result.status == STATUS_FAILED
    assert result.failure_reason == "out of memory: CUDA out of memory. Tried to allocate 20.00 GiB"
    assert result.device.startswith("cpu") and result.wall_time > 0
    assert released and released[-1] == torch.device("cpu")


def test_any_exception_becomes_a_failed_result(data):
    result = train_and_evaluate(presets.get("tiny"), data, TrainConfig(epochs=1, **{**FAST, "batch_size": 5000}))
    assert result.status == STATUS_FAILED
    assert result.failure_reason.startswith("ValueError: batch_size 5000 is larger than")


def test_a_missing_device_is_a_failed_result(data, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = train_and_evaluate(presets.get("tiny"), data, TrainConfig(epochs=1, **{**FAST, "device": "cuda"}))
    assert result.status == STATUS_FAILED and "DeviceUnavailableError" in result.failure_reason


def test_interrupts_are_not_swallowed(data, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(nas.train, "build_model", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(presets.get("tiny"), data, TrainConfig(epochs=1, **FAST))


@pytest.mark.parametrize(
    "field, value",
    [("epochs", 0), ("batch_size", -1), ("image_size", 0), ("optimizer", "lion"), ("augment", "mixup"),
     ("amp", "fp8"), ("learning_rate", -0.1), ("learning_rate", float("inf")), ("label_smoothing", 1.5),
     ("threads", 0), ("epochs", True)],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_config_round_trips_through_a_dict():
    config = TrainConfig(epochs=3, optimizer="adamw", image_size=64)
    assert TrainConfig(**config.to_dict()) == config
    assert dataclasses.replace(config, seed=5).seed == 5


def test_batch_norm_recalibration_averages_training_batches(data):
    from nas.builder import build_model
    from nas.data import DeviceBatches
    from nas.train import recalibrate_batch_norm

    torch.manual_seed(0)
    model = build_model(presets.get("tiny"), num_classes=10)
    batches = DeviceBatches(data.train_images, data.train_labels, batch_size=32, mean=data.mean, std=data.std,
                            augment="none", shuffle=False, channels_last=False)
    stem_conv, stem_norm = model.stem[0], model.stem[1]
    expected = torch.stack([stem_conv(images).mean((0, 2, 3)) for images, _ in list(batches)[:3]]).mean(0)
    recalibrate_batch_norm(model, batches, 3, None)
    assert torch.allclose(stem_norm.running_mean, expected.detach(), atol=1e-5)
    assert stem_norm.momentum == presets.get("tiny").bn_momentum
    assert stem_norm.num_batches_tracked.item() == 3


def test_progressive_training_grows_size_and_regularization(data):
    from nas.progressive import ProgressiveConfig

    progressive = ProgressiveConfig(num_stages=2, image_size=(24, 32), dropout=(0.1, 0.25),
                                    randaugment_magnitude=(0.0, 5.0), mixup_alpha=(0.0, 0.2))
    config = TrainConfig(**{**RECIPE, "epochs": 2}, progressive=progressive)
    result = train_and_evaluate(presets.get("tiny"), data, config)
    assert result.ok, result.failure_reason
    assert [epoch.image_size for epoch in result.history] == [24, 32]
    again = train_and_evaluate(presets.get("tiny"), data, config)
    assert again.accuracy == result.accuracy and again.final_loss == result.final_loss
    assert TrainConfig(**config.to_dict()) == config  # the progressive settings round-trip as plain data


def test_stage_settings_reach_the_model_and_the_batches(data):
    from nas.builder import build_model
    from nas.data import DeviceBatches
    from nas.progressive import ProgressiveConfig
    from nas.train import apply_stage, training_schedule

    spec = presets.get("tiny")
    config = TrainConfig(epochs=4, progressive=ProgressiveConfig.from_preset("efficientnetv2-s"))
    schedule = training_schedule(spec, config, data.image_size)
    model = build_model(spec, num_classes=10)
    batches = DeviceBatches(data.train_images, data.train_labels, batch_size=8, mean=data.mean, std=data.std)
    apply_stage(model, batches, schedule[-1])
    assert (batches.image_size, batches.randaugment_magnitude, model.dropout.p) == (300, 15.0, 0.3)
    fixed = training_schedule(spec, TrainConfig(epochs=3, randaugment_magnitude=7, mixup_alpha=0.1), 32)
    assert len(fixed) == 1 and fixed[0].image_size == 32 and fixed[0].regularization.dropout == spec.dropout
    assert (fixed[0].regularization.randaugment_magnitude, fixed[0].regularization.mixup_alpha) == (7, 0.1)


def test_fixed_run_with_randaugment_and_mixup(data):
    config = TrainConfig(**{**RECIPE, "epochs": 1}, randaugment_magnitude=9, mixup_alpha=0.2, eval_image_size=40)
    result = train_and_evaluate(presets.get("tiny"), data, config)
    assert result.ok and 0 <= result.accuracy <= 1 and math.isfinite(result.final_loss)


def test_an_interrupted_run_resumes_to_the_same_final_weights(data, tmp_path):
    from nas.progressive import ProgressiveConfig

    progressive = ProgressiveConfig(num_stages=2, image_size=(24, 32), dropout=(0.1, 0.2),
                                    randaugment_magnitude=(0.0, 5.0), mixup_alpha=(0.0, 0.2))
    config = TrainConfig(**{**RECIPE, "epochs": 3}, progressive=progressive, ema_decay=0.99)
    spec = presets.get("tiny")
    uninterrupted = train_and_evaluate(spec, data, config, checkpoint=tmp_path / "a.pt", weights=tmp_path / "a-w.pt")

    def stop_after_two(stats):
        if stats.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(spec, data, config, checkpoint=tmp_path / "b.pt", on_epoch=stop_after_two)
    assert torch.load(tmp_path / "b.pt", weights_only=True)["batches"]["epoch"] == 3  # timing + two epochs
    resumed = train_and_evaluate(spec, data, config, checkpoint=tmp_path / "b.pt", resume=True,
                                 weights=tmp_path / "b-w.pt")
    assert resumed.ok and resumed.accuracy == uninterrupted.accuracy
    assert [e.loss for e in resumed.history] == [e.loss for e in uninterrupted.history]
    final_a, final_b = (torch.load(tmp_path / f"{run}.pt", weights_only=True)["model"] for run in "ab")
    assert final_a.keys() == final_b.keys() and all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    weights_a, weights_b = (torch.load(tmp_path / f"{run}-w.pt", weights_only=True) for run in "ab")
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert not any(torch.equal(weights_a[k], final_a[k]) for k in final_a if k.endswith("classifier.weight"))


def test_resume_refuses_a_checkpoint_of_another_recipe(data, tmp_path):
    spec = presets.get("tiny")
    train_and_evaluate(spec, data, TrainConfig(**{**RECIPE, "epochs": 1}), checkpoint=tmp_path / "c.pt")
    other = train_and_evaluate(spec, data, TrainConfig(**{**RECIPE, "epochs": 2}), checkpoint=tmp_path / "c.pt",
                               resume=True)
    assert not other.ok and "written for another config" in other.failure_reason
