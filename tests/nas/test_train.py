"""Proxy training: learns, is deterministic on CPU, measures what the reward needs, and fails softly."""

import dataclasses
import errno
import math
import random
import re
from pathlib import Path

import pytest
import torch

import nas.train
from nas.data import ImageData, load_data
from nas.measure import DeviceUnavailableError, spec_complexity
from nas.recipe import resolve_recipe
from nas.records import STATUS_FAULT
from nas.storage import StudyError
from nas.timing import TimingLockError
from nas.train import (
    STATUS_FAILED,
    STATUS_OK,
    Checkpoint,
    CheckpointError,
    EvalResult,
    TrainConfig,
    TrainPreflight,
    check_checkpoint_data,
    check_data,
    failed_status,
    machinery_fault,
    read_checkpoint,
    train_and_evaluate,
)
from search_spaces import presets
from search_spaces.files import LockHeldError, write_file
from search_spaces.spec import SpecError

FAST = dict(device="cpu", batch_size=64, timing_warmup=1, timing_repeats=2)
RECIPE = dict(epochs=4, learning_rate=0.05, warmup_steps=2, **FAST)


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
    assert trained.step_time_s > 0 and trained.step_time_iqr_s >= 0
    assert trained.images_per_second == pytest.approx(64 / trained.step_time_s)
    assert trained.peak_memory_bytes > 0 and trained.wall_time_s > 0
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


def test_epoch_and_step_callbacks_and_resized_training(data):
    seen, steps = [], []
    result = train_and_evaluate(presets.get("tiny"), data, TrainConfig(epochs=1, image_size=48, **FAST),
                                on_epoch=seen.append, on_step=lambda *where: steps.append(where))
    assert result.ok and [stats.epoch for stats in seen] == [1]
    assert steps == [(1, step, 42) for step in range(1, 43)]  # 2,700 training images, batch 64: every step told
    assert result.macs == spec_complexity(presets.get("tiny"), num_classes=10, image_size=48).macs


def test_non_finite_loss_fails_and_keeps_the_step_time(data):
    result = train_and_evaluate(presets.get("tiny"), data, TrainConfig(epochs=2, learning_rate=1e6, **FAST))
    assert result.status == STATUS_FAILED
    assert result.failure_reason.startswith("non-finite loss")
    assert result.step_time_s > 0 and result.accuracy is None and result.epochs_completed == 0


def test_out_of_memory_fails_softly_and_releases_memory(data, monkeypatch):
    released = []
    monkeypatch.setattr(nas.train, "release_memory", lambda device: released.append(device))

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(nas.train, "build_model", out_of_memory)
    result = train_and_evaluate(presets.get("tiny"), data, TrainConfig(epochs=1, **FAST))
    assert result.status == STATUS_FAILED
    assert result.failure_reason == "out of memory: CUDA out of memory. Tried to allocate 20.00 GiB"
    assert result.device.startswith("cpu") and result.wall_time_s > 0
    assert released and released[-1] == torch.device("cpu")


def test_any_exception_becomes_a_failed_result(data):
    result = train_and_evaluate(presets.get("tiny"), data, TrainConfig(epochs=1, **{**FAST, "batch_size": 5000}))
    assert result.status == STATUS_FAILED
    assert result.failure_reason.startswith("ValueError: batch_size 5000 is larger than the training set")


def test_a_missing_device_is_the_machinery_s_fault_not_the_candidate_s(data, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = train_and_evaluate(presets.get("tiny"), data, TrainConfig(epochs=1, **{**FAST, "device": "cuda"}))
    assert result.status == STATUS_FAULT and "DeviceUnavailableError" in result.failure_reason


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
    uninterrupted = train_and_evaluate(spec, data, config, checkpoint=Checkpoint(tmp_path / "a.pt"),
                                       weights=tmp_path / "a-w.pt")

    def stop_after_two(stats):
        if stats.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(spec, data, config, checkpoint=Checkpoint(tmp_path / "b.pt"), on_epoch=stop_after_two)
    assert torch.load(tmp_path / "b.pt", weights_only=True)["batches"]["epoch"] == 2  # timing left no epoch behind
    resumed = train_and_evaluate(spec, data, config, checkpoint=Checkpoint(tmp_path / "b.pt", resume=True),
                                 weights=tmp_path / "b-w.pt")
    assert resumed.ok and resumed.accuracy == uninterrupted.accuracy
    assert [e.loss for e in resumed.history] == [e.loss for e in uninterrupted.history]
    final_a, final_b = (torch.load(tmp_path / f"{run}.pt", weights_only=True)["model"] for run in "ab")
    assert final_a.keys() == final_b.keys() and all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    weights_a, weights_b = (torch.load(tmp_path / f"{run}-w.pt", weights_only=True) for run in "ab")
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert not any(torch.equal(weights_a[k], final_a[k]) for k in final_a if k.endswith("classifier.weight"))


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory) -> Path:
    """A real one-epoch checkpoint of tiny with ONE_EPOCH; tests copy it before they change anything."""
    path = tmp_path_factory.mktemp("checkpoint") / "c.pt"
    result = train_and_evaluate(presets.get("tiny"), data, ONE_EPOCH, checkpoint=Checkpoint(path))
    assert result.ok, result.failure_reason
    return path


ONE_EPOCH = TrainConfig(**{**RECIPE, "epochs": 1})


def test_resume_refuses_a_checkpoint_of_another_recipe_naming_both_values_before_timing(data, checkpoint):
    other = train_and_evaluate(presets.get("tiny"), data, TrainConfig(**{**RECIPE, "epochs": 2, "batch_size": 32}),
                               checkpoint=Checkpoint(checkpoint, resume=True))
    assert not other.ok and other.failure_reason.startswith(f"CheckpointError: {checkpoint} was written for another")
    assert "config epochs 1 in the checkpoint, 2 now" in other.failure_reason
    assert "config batch_size 64 in the checkpoint, 32 now" in other.failure_reason
    assert other.step_time_s is None and other.macs is None  # refused before step timing and any device work


def test_resume_refuses_a_checkpoint_of_another_spec_naming_the_stage(data, checkpoint):
    spec = presets.get("tiny")
    changed = dataclasses.replace(spec, stages=(dataclasses.replace(spec.stages[0], kernel_size=5),
                                                *spec.stages[1:]), dropout=0.5)
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(checkpoint, changed, ONE_EPOCH)
    message = str(refused.value)
    assert f"spec stage 1 {spec.stages[0].block_string} in the checkpoint, " \
           f"{changed.stages[0].block_string} now" in message
    assert f"spec dropout {spec.dropout!r} in the checkpoint, 0.5 now" in message and len(message.splitlines()) == 1
    run_independent = dataclasses.replace(ONE_EPOCH, device="cuda", threads=3)
    assert read_checkpoint(checkpoint, spec, run_independent)["history"][0]["epoch"] == 1


def test_resume_without_a_checkpoint_file_is_an_error_not_a_fresh_start(data, tmp_path):
    result = train_and_evaluate(presets.get("tiny"), data, ONE_EPOCH,
                                checkpoint=Checkpoint(tmp_path / "none.pt", resume=True))
    assert not result.ok and result.epochs_completed == 0 and result.step_time_s is None
    assert result.failure_reason == f"CheckpointError: no checkpoint at {tmp_path / 'none.pt'}; " \
                                    "run without --resume to start"
    assert list(tmp_path.iterdir()) == []


def test_a_resumed_run_reads_its_checkpoint_once_from_preflight_to_training(data, checkpoint, tmp_path, monkeypatch):
    """nas train's pre-flight reads the checkpoint before the data loads; training continues from that same read."""
    path = tmp_path / "c.pt"
    path.write_bytes(checkpoint.read_bytes())
    reads = []
    real = nas.train.read_checkpoint
    monkeypatch.setattr(nas.train, "read_checkpoint", lambda *args: reads.append(args[0]) or real(*args))
    spec = presets.get("tiny")
    preflight = TrainPreflight(spec, ONE_EPOCH, checkpoint=path, resume=True)
    with preflight.start(lambda: reads.append("data loaded") or data) as loaded:
        result = train_and_evaluate(spec, loaded, ONE_EPOCH, checkpoint=preflight.checkpoint)
    assert result.ok and result.epochs_completed == 1, result.failure_reason
    assert reads == [path, "data loaded"]  # once, before the data; not again by training
    path.write_bytes(path.read_bytes())  # the file written again: its state is read anew
    assert preflight.checkpoint.saved(spec, ONE_EPOCH)["history"][-1]["epoch"] == 1
    assert reads == [path, "data loaded", path]


@pytest.mark.parametrize("options, error, words", [
    (dict(resume=True), ValueError, "--resume needs --checkpoint PATH"),
    (dict(force=True), ValueError, "--force starts an existing --checkpoint over"),
    (dict(checkpoint="c.pt", force=True, resume=True), ValueError, "give one of them"),
    (dict(export_onnx="net.onnx"), ValueError, "--export-onnx exports the saved weights: give --save DIR"),
    (dict(save="file.txt"), NotADirectoryError, "--save file.txt must be a directory"),
])
def test_preflight_refuses_contradicting_options_before_any_file(tmp_path, monkeypatch, options, error, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("a file")
    with pytest.raises(error, match=re.escape(words)):
        TrainPreflight(presets.get("tiny"), ONE_EPOCH, **options)
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["file.txt"]


def test_preflight_refuses_an_existing_checkpoint_or_a_held_one_before_loading_data(data, checkpoint, tmp_path):
    path = tmp_path / "c.pt"
    path.write_bytes(checkpoint.read_bytes())
    spec = presets.get("tiny")

    def load() -> ImageData:
        raise AssertionError("the refused run loaded its data")

    with pytest.raises(FileExistsError, match="add --resume to continue its run, or --force to start over"):
        with TrainPreflight(spec, ONE_EPOCH, checkpoint=path).start(load):
            pass
    with TrainPreflight(spec, ONE_EPOCH, checkpoint=path, force=True).start(lambda: data):
        with pytest.raises(LockHeldError, match=f"checkpoint {path} is in use by"):
            with TrainPreflight(spec, ONE_EPOCH, checkpoint=path, resume=True).start(load):
                pass
    assert not path.with_name("c.pt.lock").exists()  # released when the first run's block ended


def _garbage(kind: str, checkpoint: Path, path: Path) -> None:
    if kind == "random bytes":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    elif kind == "weights only":
        torch.save(torch.load(checkpoint, weights_only=True)["model"], path)
    elif kind == "a tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "another dict":
        torch.save({"epoch": 3, "state": [1, 2]}, path)
    elif kind == "wrong types":
        state = torch.load(checkpoint, weights_only=True)
        torch.save({**state, "history": "three epochs"}, path)
    elif kind == "damaged state":
        state = torch.load(checkpoint, weights_only=True)
        torch.save({**state, "optimizer": {"state": {}, "param_groups": []}}, path)


GARBAGE = ("random bytes", "empty", "truncated", "weights only", "a tensor", "another dict", "wrong types")


@pytest.mark.parametrize("kind", GARBAGE)
def test_a_garbage_checkpoint_is_named_as_not_a_checkpoint(data, checkpoint, tmp_path, kind):
    path = tmp_path / "garbage.pt"
    _garbage(kind, checkpoint, path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))} is not a checkpoint written by nas train"):
        read_checkpoint(path, presets.get("tiny"), ONE_EPOCH)
    result = train_and_evaluate(presets.get("tiny"), data, ONE_EPOCH, checkpoint=Checkpoint(path, resume=True))
    assert result.failure_reason.startswith(f"CheckpointError: {path} is not a checkpoint written by nas train")
    assert result.step_time_s is None and path.read_bytes() == before


def test_a_checkpoint_whose_state_does_not_load_is_named_too(data, checkpoint, tmp_path):
    """Structure and settings pass, the optimizer's state does not fit: still a CheckpointError, not a traceback."""
    path = tmp_path / "damaged.pt"
    _garbage("damaged state", checkpoint, path)
    result = train_and_evaluate(presets.get("tiny"), data, ONE_EPOCH, checkpoint=Checkpoint(path, resume=True))
    assert result.failure_reason.startswith(f"CheckpointError: {path} is not a checkpoint written by nas train")


def test_batch_larger_than_the_training_split_is_refused_naming_both_numbers(data):
    config = TrainConfig(**{**FAST, "batch_size": 5000})
    with pytest.raises(ValueError, match="batch_size 5000 is larger than the training set: 2700 images"):
        check_data(presets.get("tiny"), config, data)
    check_data(presets.get("tiny"), TrainConfig(**{**FAST, "batch_size": 2700}), data)  # exactly one batch: fine


def grayscale(data: ImageData) -> ImageData:
    """``data`` with its first channel only: an (N, 1, S, S) dataset, as an NHW npz loads."""
    return dataclasses.replace(data, train_images=data.train_images[:, :1].contiguous(),
                               val_images=data.val_images[:, :1].contiguous(), mean=data.mean[:1], std=data.std[:1])


def test_grayscale_data_trains_a_one_channel_network(data, tmp_path):
    gray = grayscale(data)
    result = train_and_evaluate(presets.get("tiny"), gray, ONE_EPOCH, weights=tmp_path / "w.pt")
    assert result.ok, result.failure_reason
    expected = spec_complexity(presets.get("tiny"), num_classes=10, image_size=32, in_channels=1)
    assert (result.parameters, result.macs) == (expected.parameters, expected.macs)
    assert result.parameters < spec_complexity(presets.get("tiny"), num_classes=10).parameters
    stem = torch.load(tmp_path / "w.pt", weights_only=True)["stem.0.weight"]
    assert stem.shape[1] == 1


def test_a_spec_pinning_other_channels_than_the_data_is_refused_before_training(data):
    pinned = dataclasses.replace(presets.get("tiny"), in_channels=1)
    with pytest.raises(SpecError, match="pins in_channels 1, but the data synthetic.* has 3 channel"):
        check_data(pinned, ONE_EPOCH, data)
    result = train_and_evaluate(pinned, data, ONE_EPOCH)
    assert not result.ok and "pins in_channels 1" in result.failure_reason and result.step_time_s is None
    assert train_and_evaluate(pinned, grayscale(data), ONE_EPOCH).ok


def test_a_checkpoint_of_other_data_is_refused_naming_the_shapes(data, checkpoint, tmp_path):
    state = read_checkpoint(checkpoint, presets.get("tiny"), ONE_EPOCH)
    with pytest.raises(CheckpointError) as refused:
        check_checkpoint_data(state, checkpoint, presets.get("tiny"), grayscale(data))
    message = str(refused.value)
    assert "was written for other data" in message and "1 channel(s) and 10 classes" in message
    assert "stem.0.weight (16, 3, 3, 3) in the checkpoint, (16, 1, 3, 3) now" in message
    check_checkpoint_data(state, checkpoint, presets.get("tiny"), data)


def test_checkpoints_and_weights_are_written_through_the_safe_write_helper(data, tmp_path, monkeypatch):
    written = []

    def spy(path, content, **options):
        written.append(Path(path))
        return write_file(path, content, **options)

    monkeypatch.setattr(nas.train, "write_file", spy)
    run = tmp_path / "new" / "dir"  # missing parents are created
    result = train_and_evaluate(presets.get("tiny"), data, TrainConfig(**{**RECIPE, "epochs": 2}),
                                checkpoint=Checkpoint(run / "c.pt"), weights=run / "w.pt")
    assert result.ok, result.failure_reason
    assert written == [run / "c.pt", run / "c.pt", run / "w.pt"]
    assert sorted(path.name for path in run.iterdir()) == ["c.pt", "w.pt"]  # no temporary file left behind
    assert not hasattr(nas.train, "_save_atomically")


# --- one build, timing on the training network, run artifacts (issue: one assembly of model and step) ------------


@pytest.fixture(scope="module")
def small_data():
    return load_data("synthetic:num_images=700,image_size=32", seed=0)


def test_training_builds_and_compiles_the_network_once(small_data, monkeypatch):
    import nas.step
    from nas.builder import build_model

    builds, compiled = [], []

    def counted_build(*args, **kwargs):
        builds.append(torch.empty(0).device.type)  # "meta" inside a meta-device block
        return build_model(*args, **kwargs)

    def counted_compile(model, *args, **kwargs):
        compiled.append(model)
        return model  # compiling for real takes minutes on CPU; what counts is that it happens once

    monkeypatch.setattr(nas.train, "build_model", counted_build)
    monkeypatch.setattr(nas.step.torch, "compile", counted_compile)
    result = train_and_evaluate(presets.get("tiny"), small_data, TrainConfig(**{**RECIPE, "epochs": 1}, compile=True))
    assert result.ok, result.failure_reason
    assert builds == ["cpu"] and len(compiled) == 1


def _no_timing(step, device, **options):
    """A stand-in for the timing protocol that runs no step: the run as it would be without timing."""
    return nas.train.StepTiming(median_s=0.01, iqr_s=0.0, window_s=(0.01,), steps_per_window=1, warmup_steps=1)


def test_a_run_is_the_same_with_and_without_timing(small_data, tmp_path, monkeypatch):
    config = TrainConfig(**{**RECIPE, "epochs": 2}, mixup_alpha=0.2, randaugment_magnitude=5)
    timed_steps = []
    real_time_step = nas.train.time_step

    def counting(step, device, **options):
        return real_time_step(lambda: (timed_steps.append(1), step()), device, **options)

    monkeypatch.setattr(nas.train, "time_step", counting)
    timed = train_and_evaluate(presets.get("tiny"), small_data, config, weights=tmp_path / "timed.pt")
    monkeypatch.setattr(nas.train, "time_step", _no_timing)
    untimed = train_and_evaluate(presets.get("tiny"), small_data, config, weights=tmp_path / "untimed.pt")
    assert timed.ok and untimed.ok and len(timed_steps) >= 3  # the timed steps did train the network
    assert [e.loss for e in timed.history] == [e.loss for e in untimed.history]
    assert timed.accuracy == untimed.accuracy
    weights = [torch.load(tmp_path / f"{run}.pt", weights_only=True) for run in ("timed", "untimed")]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_timing_returns_the_network_step_batches_and_generators_to_their_start(small_data):
    from nas.builder import build_model
    from nas.step import build_training_step
    from nas.train import time_training_step

    data = small_data
    config = resolve_recipe(TrainConfig(**{**RECIPE, "epochs": 2}, optimizer="adamw"),
                            train_images=len(data.train_labels), flips=data.flips)
    batches = nas.train._batches(data, config, train=True)
    torch.manual_seed(0)
    model = build_model(presets.get("tiny"), data.num_classes, data.in_channels)
    step = build_training_step(model, config, device=torch.device("cpu"), steps_per_epoch=len(batches))
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    learning_rate, generator = step.optimizer.param_groups[0]["lr"], torch.get_rng_state()
    timing = time_training_step(model, step, batches, torch.device("cpu"), warmup=2, repeats=2)
    assert timing.median_s > 0
    assert all(torch.equal(weights[name], tensor) for name, tensor in model.state_dict().items())
    assert all(parameter.grad is None for parameter in model.parameters())
    assert step.optimizer.state_dict()["state"] == {} and step.scheduler.last_epoch == 0
    assert step.optimizer.param_groups[0]["lr"] == learning_rate
    assert batches.state_dict() == {"epoch": 0} and torch.equal(torch.get_rng_state(), generator)


@pytest.mark.parametrize("options, expected", [
    ({}, 32), ({"image_size": 48}, 48), ({"image_size": 48, "eval_image_size": 40}, 40),
    ({"epochs": 2, "progressive": {"num_stages": 2, "image_size": [24, 56]}}, 56),
    ({"epochs": 2, "progressive": {"num_stages": 2, "image_size": [24, 56]}, "eval_image_size": 64}, 64),
])
def test_evaluation_image_size_is_the_last_training_size_unless_given(options, expected):
    from nas.train import evaluation_image_size, training_schedule

    config = TrainConfig(**options)
    assert evaluation_image_size(config, 32) == expected
    if config.eval_image_size is None:
        assert expected == training_schedule(presets.get("tiny"), config, 32)[-1].image_size


@pytest.mark.parametrize("channels", [3, 1])
def test_save_run_writes_the_spec_the_weights_fit_and_the_result(small_data, tmp_path, channels, monkeypatch):
    import json

    from nas.train import save_run
    from search_spaces.io import load_spec

    data = small_data if channels == 3 else grayscale(small_data)
    result = EvalResult(status=STATUS_OK, accuracy=0.5, step_time_s=0.01, parameters=123, device="cpu",
                        history=(nas.train.EpochStats(1, 1, 2.0, 0.25, 100.0, 32),))
    written = []
    real_write = nas.train.write_file
    monkeypatch.setattr(nas.train, "write_file", lambda path, content, **o: written.append(path) or real_write(
        path, content, **o))
    saved = save_run(tmp_path / "run", presets.get("tiny"), data, TrainConfig(image_size=24), result)
    pinned = {} if channels == 3 else {"in_channels": 1}
    expected = dataclasses.replace(presets.get("tiny"), num_classes=data.num_classes, **pinned)
    assert saved.spec == expected == load_spec(tmp_path / "run" / "spec.yaml")
    assert saved.weights == tmp_path / "run" / "weights.pt"
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record.pop("input") == saved.input.to_dict()
    assert record.pop("evaluated_on") == {"data": f"the hold-out of {data.name}", "images": 70}
    assert record == json.loads(json.dumps(result.to_dict())) and record["history"][0]["loss"] == 2.0
    assert sorted(entry.name for entry in (tmp_path / "run").iterdir()) == ["result.json", "spec.yaml"]
    assert tmp_path / "run" / "result.json" in written


@pytest.mark.parametrize("options, image_size", [({}, 32), ({"image_size": 24}, 24),
                                                  ({"image_size": 24, "eval_image_size": 40}, 40)])
def test_a_saved_run_records_what_the_network_takes_from_the_data_it_trained_on(small_data, options, image_size):
    """result.json's input: the training split's own mean and std, the data's channels and classes, and the size
    the run evaluated at (issue 28: they were in none of the saved files)."""
    from nas.train import model_input

    gray = grayscale(small_data)
    for data in (small_data, gray):
        recorded = model_input(data, TrainConfig(**options)).to_dict()
        assert recorded == {"image_size": image_size, "in_channels": data.in_channels,
                            "num_classes": data.num_classes, "mean": list(data.mean), "std": list(data.std)}
    assert len(model_input(gray, TrainConfig()).mean) == 1 and small_data.num_classes == 10


def test_the_input_record_refuses_values_that_cannot_describe_a_network():
    from nas.train import ModelInput

    good = dict(image_size=32, in_channels=3, num_classes=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert ModelInput(**good, class_names=("cat", "dog", "owl")).to_dict()["class_names"] == ["cat", "dog", "owl"]
    for change, words in (({"mean": (0.5,)}, "mean must have one value per channel (3)"),
                          ({"std": (0.25, 0.0, 0.25)}, "std must be positive"),
                          ({"class_names": ("cat", "dog")}, "class_names must name each of the 3 classes"),
                          ({"num_classes": 1}, "num_classes must be an integer >= 2")):
        with pytest.raises(ValueError, match=re.escape(words)):
            ModelInput(**{**good, **change})


# --- successive halving's rungs: evaluated mid-run without changing the run ---------------------------------------

RUNG_RECIPE = {**RECIPE, "epochs": 3, "measure_step_time": False, "bn_recalibration_batches": 2}


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_rungs_that_always_go_on_leave_the_run_bit_identical(small_data, tmp_path, ema_decay):
    """The rung evaluation recalibrates batch norm on training batches (moving the batch stream, the random
    generators and, with an EMA, the averaged buffers) and evaluates; all of it must go back."""
    from nas.halving import Rungs

    config = TrainConfig(**RUNG_RECIPE, ema_decay=ema_decay, mixup_alpha=0.2, randaugment_magnitude=5)
    spec = presets.get("tiny")
    judged: list[EvalResult] = []
    with_rungs = train_and_evaluate(spec, small_data, config, weights=tmp_path / "rungs.pt",
                                    checkpoint=Checkpoint(tmp_path / "rungs-state.pt"),
                                    rungs=Rungs((1, 2, 3), lambda result: judged.append(result) or True))
    plain = train_and_evaluate(spec, small_data, config, weights=tmp_path / "plain.pt",
                               checkpoint=Checkpoint(tmp_path / "plain-state.pt"))
    assert with_rungs.ok and plain.ok
    assert [e.loss for e in with_rungs.history] == [e.loss for e in plain.history]
    assert with_rungs.accuracy == plain.accuracy
    weights = [torch.load(tmp_path / f"{run}.pt", weights_only=True) for run in ("rungs", "plain")]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    # the whole training state too (the final weights' batch-norm statistics are recalibrated anyway; the last
    # checkpoint's come from training, through the rungs)
    states = [torch.load(tmp_path / f"{run}-state.pt", weights_only=True) for run in ("rungs", "plain")]
    for part in ("model", "ema"):
        if states[1][part] is not None:
            assert all(torch.equal(states[0][part][name], states[1][part][name]) for name in states[1][part]), part
    # judged at the rungs below the run's end only, each with what the reward needs
    assert [(r.status, r.epochs_completed, len(r.history)) for r in judged] == [("ok", 1, 1), ("ok", 2, 2)]
    assert all(0 <= r.accuracy <= 1 and r.parameters == plain.parameters and r.macs == plain.macs
               and r.device == plain.device and r.wall_time_s > 0 for r in judged)


def test_a_judge_that_says_stop_ends_the_run_at_its_rung(small_data, tmp_path):
    from nas.halving import Rungs
    from nas.records import STATUS_STOPPED

    judged: list[EvalResult] = []
    result = train_and_evaluate(presets.get("tiny"), small_data, TrainConfig(**RUNG_RECIPE),
                                weights=tmp_path / "w.pt", rungs=Rungs((1,), lambda r: judged.append(r) and False))
    assert result.status == STATUS_STOPPED and result.epochs_completed == 1 and len(result.history) == 1
    assert result.failure_reason == "stopped at epoch 1 of 3 by its rung's judge"
    assert result.accuracy == judged[0].accuracy and not (tmp_path / "w.pt").exists()


@pytest.mark.parametrize("error, machinery", [
    (TimingLockError("timing lock /t/nas-timing-cpu.lock is a symbolic link"), True),
    (StudyError("cannot write to storage sqlite:///x.db"), True),
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EIO, "Input/output error"), True),
    (DeviceUnavailableError("device 'cuda:1' is not available"), True),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
    (ValueError("a candidate's own bad value"), False),
    (OSError(errno.ENOENT, "No such file or directory"), False),
], ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value))
def test_the_one_rule_of_whose_fault_a_failure_is(error, machinery):
    """Issue 25: the machinery's faults (lock, storage, disk, device) are never recorded as the candidate's."""
    assert machinery_fault(error) is machinery
    assert failed_status(error) == (STATUS_FAULT if machinery else STATUS_FAILED)
