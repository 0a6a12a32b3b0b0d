"""The proxy recipe's adaptation to the data (nas.recipe.resolve_recipe) and the flips each data set allows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from nas.data import DeviceBatches, load_data
from nas.recipe import TrainConfig, auto_batch_size, resolve_recipe
from nas.sources import source_flips
from nas.step import build_training_step


@pytest.mark.parametrize(
    ("train_images", "batch_size"),
    [
        (45_000, 128),  # CIFAR-10 after a 10% hold-out: 351 steps per epoch at the largest automatic batch
        (25_600, 128),  # exactly 200 steps at 128
        (25_599, 64),   # one image fewer: 199 steps at 128, so 64
        (9_000, 32),    # synthetic's default 10,000 images: 281 steps
        (4_500, 16),    # mnist5k: 281 steps per epoch at 16 instead of 35 at 128
        (1_000, 16),    # too small for 200 steps at any batch: the smallest automatic batch
        (10, 10),       # never more than the training set
    ],
)
def test_automatic_batch_keeps_at_least_200_steps_per_epoch(train_images, batch_size):
    assert auto_batch_size(train_images) == batch_size


def test_resolved_recipe_scales_the_learning_rate_with_the_batch_and_warms_up_in_steps():
    recipe = resolve_recipe(TrainConfig(epochs=10), train_images=4_500, flips=False)
    assert (recipe.batch_size, recipe.learning_rate, recipe.augment) == (16, pytest.approx(0.0125), "crop")
    assert recipe.warmup_steps == 140  # 5% of 10 epochs x 281 steps
    assert recipe.resolved
    large = resolve_recipe(TrainConfig(epochs=10), train_images=45_000, flips=True)
    assert (large.batch_size, large.learning_rate, large.warmup_steps, large.augment) == (128, 0.1, 176, "crop_flip")
    adamw = resolve_recipe(TrainConfig(optimizer="adamw", batch_size=64), train_images=45_000)
    assert adamw.learning_rate == pytest.approx(0.0005)


def test_settings_given_explicitly_are_kept():
    given = TrainConfig(batch_size=100, learning_rate=0.3, warmup_steps=0, augment="crop_flip")
    assert resolve_recipe(given, train_images=4_500, flips=False) == given


def test_an_unresolved_recipe_cannot_build_a_training_step():
    with pytest.raises(ValueError, match="resolve it for the data first"):
        build_training_step(torch.nn.Linear(2, 2), TrainConfig(), device=torch.device("cpu"), steps_per_epoch=10)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, "batch_size must be"),
        ("learning_rate", 0.0, "learning_rate must be"),
        ("warmup_steps", -1, "warmup_steps must be"),
        ("augment", "flip", "augment must be one of .'auto', 'crop_flip', 'crop'"),
    ],
)
def test_automatic_fields_still_refuse_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_which_sources_keep_their_labels_under_a_flip(tmp_path):
    np.savez(tmp_path / "digits.npz", images=np.zeros((4, 2, 2), np.uint8), labels=np.arange(4) % 2)
    assert source_flips("cifar10:/data") and source_flips("imagefolder:/photos")
    assert not source_flips("synthetic:num_images=64")  # the gratings' orientations are their classes
    assert not source_flips(f"npz:{tmp_path / 'digits.npz'}")  # an npz file flips only when it says so
    assert source_flips(f"npz:{tmp_path / 'digits.npz'}?flip=yes")
    assert not load_data("synthetic:num_images=40,image_size=8").flips


def test_crop_never_flips():
    # Each image is a left-to-right ramp; with no padding a crop is the image itself, so only a flip can change it.
    ramp = torch.arange(8, dtype=torch.uint8).mul(30).view(1, 1, 1, 8).expand(64, 3, 8, 8).contiguous()
    common = dict(batch_size=64, mean=(0.0,) * 3, std=(1.0,) * 3, crop_padding=0)
    for augment, flipped in (("crop", False), ("crop_flip", True), ("resized_crop", False),
                             ("resized_crop_flip", True)):
        batch, _ = next(iter(DeviceBatches(ramp, torch.zeros(64, dtype=torch.int64), augment=augment, **common)))
        slopes = batch[:, 0, 0, -1] - batch[:, 0, 0, 0]
        assert bool((slopes < 0).any()) is flipped, augment
        assert bool((slopes > 0).any()), augment


def test_a_run_records_its_resolved_recipe():
    from nas.train import train_and_evaluate
    from search_spaces import presets

    data = load_data("synthetic:num_images=80,image_size=8")
    result = train_and_evaluate(presets.get_space("tiny").baseline, data,
                                TrainConfig(epochs=1, device="cpu", threads=1, measure_step_time=False))
    assert result.ok, result.failure_reason
    expected = resolve_recipe(TrainConfig(epochs=1, device="cpu", threads=1, measure_step_time=False),
                              train_images=len(data.train_labels), flips=False)
    assert result.recipe == dataclasses.replace(expected).to_dict()
    assert result.recipe["batch_size"] == 16 and result.recipe["augment"] == "crop"
