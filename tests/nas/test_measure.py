"""Parameter and multiply-add counts."""

import dataclasses
import re
import time

import pytest
import torch

from nas.builder import build_model
from nas.measure import (
    DeviceUnavailableError,
    benchmark_spec,
    count_macs,
    count_parameters,
    describe_device,
    resolve_device,
    spec_complexity,
    time_step,
)
from nas.recipe import MAX_BATCH_SIZE
from search_spaces import presets
from search_spaces.spec import MAX_IMAGE_SIZE


def test_macs_match_the_papers():
    # EfficientNet-B0: 0.39B FLOPs at 224 (Tan & Le 2019, Table 2); EfficientNetV2-B0: 0.72B (Tan & Le 2021).
    assert round(spec_complexity(presets.get("efficientnet-b0")).macs / 1e9, 2) == 0.39
    assert round(spec_complexity(presets.get("efficientnetv2-b0")).macs / 1e9, 2) == 0.72


def test_macs_grow_with_the_square_of_the_image_size():
    spec = presets.get("tiny")
    small, large = spec_complexity(spec, image_size=32).macs, spec_complexity(spec, image_size=64).macs
    per_image = spec.head_channels * 1000  # the classifier's cost does not depend on the image size
    assert 3.95 < (large - per_image) / (small - per_image) <= 4.0


def test_stage_parameters_add_up():
    spec = presets.get("efficientnetv2-s")
    complexity = spec_complexity(spec)
    head_and_stem = 24 * 3 * 9 + 2 * 24 + 256 * 1280 + 2 * 1280 + 1280 * 1000 + 1000
    assert sum(complexity.stage_parameters) + head_and_stem == complexity.parameters
    assert complexity.image_size == spec.eval_image_size


def test_counting_on_a_real_model_agrees_and_keeps_the_mode():
    spec = presets.get("tiny")
    model = build_model(spec).train()
    assert count_macs(model, 32) == spec_complexity(spec, image_size=32).macs
    assert model.training
    model.classifier.weight.requires_grad_(False)
    assert count_parameters(model) == spec_complexity(spec).parameters - model.classifier.weight.numel()
    assert torch.is_grad_enabled()


def test_resolve_device_refuses_what_is_not_there():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device("cpu:1")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="'cuda' is not available"):
            resolve_device("cuda")
    else:
        with pytest.raises(DeviceUnavailableError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_describe_device_names_the_hardware_and_torch():
    text = describe_device(torch.device("cpu"))
    assert text.startswith("cpu ") and f"torch {torch.__version__}" in text and "threads" in text


class FakeStep:
    """A step whose duration is scripted: slow warm-up steps, then steady ones."""

    def __init__(self, slow_calls: int, slow_s: float, steady_s: float):
        self.calls = 0
        self.slow_calls, self.slow_s, self.steady_s = slow_calls, slow_s, steady_s

    def __call__(self):
        self.calls += 1
        time.sleep(self.slow_s if self.calls <= self.slow_calls else self.steady_s)


def test_time_step_excludes_warmup_and_reports_per_step_median():
    step = FakeStep(slow_calls=4, slow_s=0.05, steady_s=0.002)
    timing = time_step(step, torch.device("cpu"), warmup=5, repeats=5, min_window_s=0.02)
    assert timing.warmup_steps == 5 and len(timing.window_s) == 5
    assert timing.steps_per_window == pytest.approx(10, abs=3)  # about 0.02 s / 0.002 s
    assert step.calls == 5 + 5 * timing.steps_per_window
    assert 0.002 <= timing.median_s < 0.004  # the 50 ms warm-up steps left no trace
    assert timing.iqr_s >= 0 and timing.relative_spread == timing.iqr_s / timing.median_s


def test_time_step_runs_the_agreed_steps_per_window():
    step = FakeStep(slow_calls=0, slow_s=0.0, steady_s=0.002)
    proposed = []

    def agree(steps):  # as the ranks of a data-parallel run agree on rank 0's count
        proposed.append(steps)
        return 4

    timing = time_step(step, torch.device("cpu"), warmup=2, repeats=3, min_window_s=0.02, agree=agree)
    assert proposed == [pytest.approx(10, abs=3)]  # its own estimate, asked once
    assert timing.steps_per_window == 4 and step.calls == 2 + 3 * 4


@pytest.mark.parametrize("arguments, message", [
    ({"warmup": 0}, "warmup must be an integer >= 1, got 0"),
    ({"repeats": 0}, "repeats must be an integer >= 1, got 0"),
    ({"repeats": 2.0}, "repeats must be an integer >= 1, got 2.0"),
])
def test_time_step_validates_its_arguments(arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        time_step(lambda: None, torch.device("cpu"), **arguments)


@pytest.mark.parametrize("arguments, message", [
    ({"batch_size": 0}, f"batch_size must be an integer in [1, {MAX_BATCH_SIZE}], got 0"),
    ({"batch_size": True}, f"batch_size must be an integer in [1, {MAX_BATCH_SIZE}], got True"),
    ({"image_size": MAX_IMAGE_SIZE + 1},
     f"image_size must be an integer in [1, {MAX_IMAGE_SIZE}] or None, got {MAX_IMAGE_SIZE + 1}"),
])
def test_benchmark_spec_refuses_bad_sizes_before_building(arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        benchmark_spec(presets.get("tiny"), device="cpu", **arguments)


def test_benchmark_spec_reports_a_consistent_result():
    spec = presets.get("tiny")
    result = benchmark_spec(spec, device="cpu", batch_size=8, image_size=32, num_classes=10, warmup=2, repeats=3,
                            inference=True)
    assert result.parameters == spec_complexity(spec, num_classes=10).parameters
    assert result.macs == spec_complexity(spec, num_classes=10, image_size=32).macs
    assert result.images_per_second == pytest.approx(8 / result.step.median_s)
    assert result.inference is not None and result.inference.median_s < result.step.median_s
    assert result.amp == "none" and result.channels_last and result.peak_memory_bytes > 0
    data = result.to_dict()
    assert data["step"]["median_s"] == result.step.median_s and "inference_images_per_second" in data
    with pytest.raises(ValueError, match="amp"):
        benchmark_spec(spec, device="cpu", amp="fp8")


# --- input channels and out-of-memory (issue 11) ------------------------------------------------------------------


def test_one_channel_costs_follow_the_stem():
    spec = presets.get("tiny")
    rgb, gray = spec_complexity(spec, image_size=32), spec_complexity(spec, image_size=32, in_channels=1)
    stem_weights_per_channel = spec.stem_channels * 3 * 3
    assert rgb.parameters - gray.parameters == 2 * stem_weights_per_channel
    assert rgb.macs - gray.macs == 2 * stem_weights_per_channel * 16 * 16  # stem stride 2: a 16x16 output
    assert spec_complexity(dataclasses.replace(spec, in_channels=1), image_size=32) == gray


def test_benchmark_spec_times_one_channel_images():
    result = benchmark_spec(presets.get("tiny"), device="cpu", batch_size=4, image_size=32, num_classes=10,
                            in_channels=1, warmup=1, repeats=2)
    assert result.in_channels == 1 and result.to_dict()["in_channels"] == 1
    assert result.parameters == spec_complexity(presets.get("tiny"), num_classes=10, in_channels=1).parameters


@pytest.mark.parametrize("error, expected", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), True),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 12884901888 bytes."), True),
    (MemoryError(), True),
    (RuntimeError("Given groups=1, weight of size [16, 3, 3, 3], expected input to have 3 channels"), False),
    (ValueError("can't allocate memory"), False),
])
def test_is_out_of_memory_recognizes_every_allocator(error, expected):
    from nas.measure import is_out_of_memory

    assert is_out_of_memory(error) is expected


# --- nas bench times the step training runs ------------------------------------------------------------------------


def _spy_on_step_assembly(monkeypatch, module):
    """Records every (config, step) that ``module``'s :func:`nas.step.build_training_step` assembles."""
    from nas.step import build_training_step

    assembled = []

    def spy(model, config, **options):
        step = build_training_step(model, config, **options)
        assembled.append((config, step))
        return step

    monkeypatch.setattr(module, "build_training_step", spy)
    return assembled


def _step_settings(step):
    """What makes two training steps the same step: optimizer and its settings, loss, precision, schedule."""
    groups = [{key: value for key, value in group.items() if key not in ("params", "lr", "initial_lr")}
              for group in step.optimizer.param_groups]
    return (type(step.optimizer), groups, [group["initial_lr"] for group in step.optimizer.param_groups],
            step.label_smoothing, step.amp_dtype, type(step.scheduler), step.scaler is None)


def test_bench_times_the_step_a_default_training_runs(monkeypatch):
    import nas.measure
    import nas.train
    from nas.data import load_data
    from nas.recipe import TrainConfig
    from nas.train import train_and_evaluate

    benched = _spy_on_step_assembly(monkeypatch, nas.measure)
    trained = _spy_on_step_assembly(monkeypatch, nas.train)
    result = benchmark_spec(presets.get("tiny"), device="cpu", batch_size=8, image_size=32, num_classes=10,
                            warmup=1, repeats=1)
    data = load_data("synthetic:num_images=300,image_size=32", seed=0)
    default = TrainConfig()
    training = train_and_evaluate(presets.get("tiny"), data, dataclasses.replace(
        default, epochs=1, batch_size=8, device="cpu", timing_warmup=1, timing_repeats=1, bn_recalibration_batches=0))
    assert training.ok, training.failure_reason
    (bench_config, bench_step), (_, train_step) = benched[0], trained[0]
    # the default recipe at the timed batch (amp "auto", channels_last and no compile are the defaults too)
    assert bench_config == nas.measure.timed_recipe(default, 8)
    assert _step_settings(bench_step) == _step_settings(train_step)
    assert isinstance(bench_step.optimizer, torch.optim.SGD) and bench_step.label_smoothing == default.label_smoothing
    # the learning rate a default run at batch 8 resolves to
    assert bench_step.optimizer.param_groups[0]["initial_lr"] == train_step.optimizer.param_groups[0]["initial_lr"]
    assert bench_step.scheduler.last_epoch > 1  # every timed step advanced the schedule, as in training
    assert result.optimizer == "sgd" and result.to_dict()["optimizer"] == "sgd"


def test_bench_takes_the_recipe_and_its_own_precision_settings(monkeypatch):
    import nas.measure
    from nas.recipe import TrainConfig

    benched = _spy_on_step_assembly(monkeypatch, nas.measure)
    recipe = TrainConfig(optimizer="adamw", learning_rate=0.003, weight_decay=0.05, label_smoothing=0.3,
                         channels_last=True, amp="bf16")
    result = benchmark_spec(presets.get("tiny"), device="cpu", batch_size=4, image_size=32, num_classes=10,
                            warmup=1, repeats=1, channels_last=False, amp="none", recipe=recipe)
    config, step = benched[0]
    assert config == nas.measure.timed_recipe(dataclasses.replace(recipe, channels_last=False, amp="none"), 4)
    assert config.learning_rate == 0.003  # given, so kept
    assert isinstance(step.optimizer, torch.optim.AdamW) and step.label_smoothing == 0.3
    assert step.optimizer.param_groups[0]["weight_decay"] == 0.05 and step.amp_dtype is None
    assert result.optimizer == "adamw" and result.amp == "none" and not result.channels_last
    assert step.model.stem[0].weight.is_contiguous()  # NCHW, as asked
