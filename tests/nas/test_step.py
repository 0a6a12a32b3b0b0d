"""The training step shared by proxy training and timing: optimizer groups, schedule, precision."""

import math

import pytest
import torch

from nas.builder import build_model
from nas.recipe import TrainConfig, resolve_recipe
from nas.step import (
    TrainingStep,
    build_training_step,
    make_optimizer,
    resolve_amp,
    warmup_cosine,
)
from search_spaces import presets


def tiny_model():
    torch.manual_seed(0)
    return build_model(presets.get("tiny"), num_classes=4)


@pytest.mark.parametrize("name", ["sgd", "adamw", "rmsprop"])
def test_no_weight_decay_on_norms_and_biases(name):
    model = tiny_model()
    optimizer = make_optimizer(model, name=name, learning_rate=0.1, weight_decay=1e-4)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_unknown_optimizer_and_amp_are_refused():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_optimizer(tiny_model(), name="lion", learning_rate=0.1, weight_decay=0.0)
    with pytest.raises(ValueError, match="amp must be one of"):
        resolve_amp("fp8", torch.device("cpu"))


def test_auto_precision_is_bf16_on_cuda_only():
    assert resolve_amp("auto", torch.device("cpu")) is None
    assert resolve_amp("auto", torch.device("cuda")) is torch.bfloat16
    assert resolve_amp("fp16", torch.device("cpu")) is torch.float16


def test_warmup_then_cosine():
    factor = warmup_cosine(total_steps=100, warmup_steps=10)
    assert [factor(step) for step in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5)
    assert factor(100) == pytest.approx(0.0, abs=1e-12) and factor(150) == pytest.approx(0.0, abs=1e-12)
    assert all(factor(s) >= factor(s + 1) for s in range(10, 100))


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_steps_learn_a_fixed_batch(amp):
    model = tiny_model()
    optimizer = make_optimizer(model, name="adamw", learning_rate=3e-3, weight_decay=0.0)
    dtype = resolve_amp(amp, torch.device("cpu"))
    step = TrainingStep(model, optimizer, amp_dtype=dtype, label_smoothing=0.1)
    assert (step.scaler is not None) == (amp == "fp16")
    images, labels = torch.randn(16, 3, 32, 32), torch.arange(16) % 4
    first, _ = step(images, labels)
    for _ in range(30):
        loss, correct = step(images, labels)
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    assert loss.item() < 0.5 * first.item()
    assert correct.item() >= 14 and not loss.requires_grad


def test_scheduler_advances_once_per_step():
    model = tiny_model()
    optimizer = make_optimizer(model, name="sgd", learning_rate=1.0, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps=10, warmup_steps=5))
    step = TrainingStep(model, optimizer, amp_dtype=None, scheduler=scheduler)
    images, labels = torch.randn(4, 3, 32, 32), torch.arange(4)
    for _ in range(3):
        step(images, labels)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.8)


# --- the one assembly of a network's training step --------------------------------------------------------------


def resolved(**fields):
    """A recipe with its automatic settings filled in, as a run resolves it for 1,280 training images."""
    return resolve_recipe(TrainConfig(**fields), train_images=1280)


def test_build_training_step_follows_the_recipe():
    model = tiny_model()
    config = TrainConfig(epochs=5, optimizer="rmsprop", learning_rate=0.02, momentum=0.8, weight_decay=0.03,
                         warmup_steps=20, label_smoothing=0.2, amp="bf16", channels_last=True)
    step = build_training_step(model, config, device=torch.device("cpu"), steps_per_epoch=10)
    assert step.model is model and step.amp_dtype is torch.bfloat16 and step.label_smoothing == 0.2
    assert isinstance(step.optimizer, torch.optim.RMSprop)
    decay, no_decay = step.optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"], decay["momentum"]) == (0.03, 0.0, 0.8)
    assert decay["lr"] == pytest.approx(0.02 / 20)  # warm-up: 20 steps
    expected = warmup_cosine(total_steps=50, warmup_steps=20)
    assert [step.scheduler.lr_lambdas[0](s) for s in (0, 19, 35, 50)] == [expected(s) for s in (0, 19, 35, 50)]
    assert model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    nchw = build_training_step(tiny_model(), resolved(channels_last=False, amp="none"),
                               device=torch.device("cpu"), steps_per_epoch=1)
    assert nchw.model.stem[0].weight.is_contiguous() and nchw.amp_dtype is None and nchw.label_smoothing == 0.1
    with pytest.raises(ValueError, match="steps_per_epoch must be an integer >= 1, got 0"):
        build_training_step(tiny_model(), config, device=torch.device("cpu"), steps_per_epoch=0)


def test_build_training_step_compiles_the_model_it_moved():
    model = tiny_model()
    step = build_training_step(model, resolved(compile=True), device=torch.device("cpu"), steps_per_epoch=1)
    assert step.model is not model and step.model._orig_mod is model  # lazily compiled on the first call


def test_step_state_round_trips_optimizer_schedule_and_scaler():
    model = tiny_model()
    config = resolved(amp="fp16", optimizer="adamw")
    step = build_training_step(model, config, device=torch.device("cpu"), steps_per_epoch=4)
    initial = step.state_dict()
    assert initial["optimizer"]["state"] == {} and initial["scaler"]["scale"] == 65536.0
    images, labels = torch.randn(4, 3, 32, 32), torch.arange(4)
    for _ in range(3):
        step(images, labels)
    assert step.scheduler.last_epoch == 3 and step.optimizer.state_dict()["state"]
    step.load_state_dict(initial)
    assert step.scheduler.last_epoch == 0 and step.optimizer.state_dict()["state"] == {}
    assert step.optimizer.param_groups[0]["lr"] == pytest.approx(config.learning_rate / config.warmup_steps)
