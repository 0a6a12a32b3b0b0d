"""Compound scaling reproduces the reference B1..B7 (V1) and V2-B1..B3 networks; the V2 rules hold."""

import dataclasses
import math
import re

import pytest

from nas.measure import spec_complexity
from nas.scaling import (
    IMAGE_SIZE_DIVISOR,
    V2_MAX_IMAGE_SIZE,
    check_flops_constraint,
    coefficient_grid,
    compound_coefficients,
    compound_family,
    compound_scale,
    image_size_rounding,
    round_channels,
    round_image_size,
    scale,
)
from search_spaces import presets

# (width, depth) coefficients of the official releases and the reference parameter counts (1000 classes).
EFFICIENTNET_V1 = {
    "b1": (1.0, 1.1, 7_794_184),
    "b2": (1.1, 1.2, 9_109_994),
    "b3": (1.2, 1.4, 12_233_232),
    "b4": (1.4, 1.8, 19_341_616),
    "b5": (1.6, 2.2, 30_389_784),
    "b6": (1.8, 2.6, 43_040_704),
    "b7": (2.0, 3.1, 66_347_960),
}
EFFICIENTNET_V2 = {
    "b1": (1.0, 1.1, 8_141_052),
    "b2": (1.1, 1.2, 10_096_086),
    "b3": (1.2, 1.4, 14_358_406),
}


@pytest.mark.parametrize("variant, coefficients", EFFICIENTNET_V1.items())
def test_efficientnet_b1_to_b7_parameter_counts(variant, coefficients):
    width, depth, parameters = coefficients
    scaled = scale(presets.get("efficientnet-b0"), width, depth)
    assert spec_complexity(scaled).parameters == parameters


def test_efficientnet_b7_architecture():
    b7 = scale(presets.get("efficientnet-b0"), 2.0, 3.1, image_size=600)
    assert [s.out_channels for s in b7.stages] == [32, 48, 80, 160, 224, 384, 640]
    assert [s.num_layers for s in b7.stages] == [4, 7, 7, 10, 10, 13, 4]
    assert (b7.stem_channels, b7.head_channels, b7.eval_image_size) == (64, 2560, 600)


def test_efficientnet_b3_needs_the_ten_percent_guard():
    b0 = presets.get("efficientnet-b0")
    # stage 1: 16 * 1.2 = 19.2 rounds to 16, more than 10% down, so the V1 rule takes 24
    with_guard, without_guard = scale(b0, 1.2, 1.4), scale(b0, 1.2, 1.4, round_limit=0.0)
    assert (with_guard.stages[0].out_channels, without_guard.stages[0].out_channels) == (24, 16)
    assert spec_complexity(without_guard).parameters != EFFICIENTNET_V1["b3"][2]
    assert without_guard.round_limit == 0.0  # the rule used travels with the scaled spec


@pytest.mark.parametrize("variant, coefficients", EFFICIENTNET_V2.items())
def test_efficientnetv2_b1_to_b3_parameter_counts(variant, coefficients):
    width, depth, parameters = coefficients
    scaled = scale(presets.get("efficientnetv2-b0"), width, depth)
    assert spec_complexity(scaled).parameters == parameters


@pytest.mark.parametrize(
    "channels, round_limit, expected",
    [(32.0, 0.0, 32), (35.2, 0.0, 32), (36.0, 0.0, 40), (17.6, 0.9, 16), (3.0, 0.0, 8), (100.0, 0.0, 104),
     (8.8, 0.9, 8), (10.0, 0.9, 16), (10.0, 0.0, 8), (1433.6, 0.0, 1432)],
)
def test_round_channels(channels, round_limit, expected):
    assert round_channels(channels, round_limit=round_limit) == expected


def test_round_limit_is_taken_from_the_spec_unless_given():
    spec = dataclasses.replace(presets.get("tiny"), stem_channels=20)
    # 20 * 0.5 = 10 rounds to 8, which is below 0.9 * 10
    assert scale(dataclasses.replace(spec, round_limit=0.9), 0.5, 1.0).stem_channels == 16
    assert scale(dataclasses.replace(spec, round_limit=0.0), 0.5, 1.0).stem_channels == 8
    assert scale(dataclasses.replace(spec, round_limit=0.9), 0.5, 1.0, round_limit=0.0).stem_channels == 8


def test_depth_is_rounded_up():
    spec = presets.get("efficientnetv2-s")
    scaled = scale(spec, 1.0, 1.1)
    assert [s.num_layers for s in scaled.stages] == [math.ceil(1.1 * s.num_layers) for s in spec.stages]


def test_identity_scaling_changes_only_the_name():
    spec = presets.get("efficientnetv2-s")
    assert dataclasses.replace(scale(spec, 1.0, 1.0), name=spec.name) == spec
    assert dataclasses.replace(compound_scale(spec, 0), name=spec.name) == spec


def test_image_size_sets_eval_and_keeps_the_train_ratio():
    spec = presets.get("efficientnetv2-b0")  # 192 / 224
    scaled = scale(spec, 1.0, 1.0, image_size=448)
    assert (scaled.train_image_size, scaled.eval_image_size) == (384, 448)
    assert scale(spec, 1.0, 1.0, image_size=448, train_image_size=256).train_image_size == 256


def test_compound_coefficients():
    coefficients = compound_coefficients(2)
    assert coefficients.depth == pytest.approx(1.44)
    assert coefficients.width == pytest.approx(1.21)
    assert coefficients.resolution == pytest.approx(1.3225)
    assert check_flops_constraint(1.2, 1.1, 1.15) == pytest.approx(1.92, abs=0.001)
    with pytest.raises(ValueError, match="about 2"):
        compound_coefficients(1, alpha=2.0, beta=1.5, gamma=1.5)
    with pytest.raises(ValueError, match=re.escape("phi must be a number in [0, 100], got -1")):
        compound_coefficients(-1)
    with pytest.raises(ValueError, match="alpha must be a finite number >= 1, got nan"):
        compound_coefficients(1, alpha=float("nan"))


def test_compound_scaling_roughly_doubles_flops_per_phi():
    b0 = presets.get("efficientnet-b0")
    macs = [spec_complexity(compound_scale(b0, phi)).macs for phi in range(3)]
    for smaller, larger in zip(macs, macs[1:]):
        assert 1.6 < larger / smaller < 2.6


def test_v2_rules_cap_image_size_and_deepen_later_stages():
    spec = presets.get("efficientnetv2-s")
    family = [compound_scale(spec, phi, v2_rules=True) for phi in range(5)]
    for member in family:
        assert member.eval_image_size <= V2_MAX_IMAGE_SIZE and member.train_image_size <= V2_MAX_IMAGE_SIZE
    assert family[-1].eval_image_size == V2_MAX_IMAGE_SIZE
    uniform = compound_scale(spec, 3)
    later = family[3]
    assert later.num_blocks == uniform.num_blocks  # the same number of added layers...
    added_later = [b.num_layers - a.num_layers for a, b in zip(spec.stages, later.stages)]
    added_uniform = [b.num_layers - a.num_layers for a, b in zip(spec.stages, uniform.stages)]
    assert added_later[-1] > added_uniform[-1] and added_later[0] < added_uniform[0]  # ...moved to later stages
    complexities = [spec_complexity(member) for member in family]
    for smaller, larger in zip(complexities, complexities[1:]):
        assert larger.parameters > smaller.parameters
        assert larger.macs >= smaller.macs


@pytest.mark.parametrize("kwargs, message", [
    ({"width_mult": 0}, "width_mult must be a finite number > 0, got 0"),
    ({"depth_mult": -1}, "depth_mult must be a finite number > 0, got -1"),
    ({"depth_mult": True}, "depth_mult must be a finite number > 0, got True"),
    ({"depth_rule": "random"}, "depth_rule must be one of ('uniform', 'later_stages'), got 'random'"),
])
def test_invalid_scaling_arguments(kwargs, message):
    arguments = {"width_mult": 1.0, "depth_mult": 1.0, **kwargs}
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        scale(presets.get("tiny"), **arguments)


def test_the_rounding_explained_is_the_rounding_applied():
    """Messages that explain a scaled image size (nas scale's note) say what round_image_size does."""
    assert image_size_rounding() == f"rounded to a multiple of {IMAGE_SIZE_DIVISOR}"
    sizes = [round_image_size(size) for size in (3.9, 97.0, 223.5, 380 * 224 / 224, 508.3)]
    assert all(size % IMAGE_SIZE_DIVISOR == 0 for size in sizes) and sizes == [8, 96, 224, 384, 512]


def test_coefficient_grid_keeps_the_flops_constraint():
    grid = coefficient_grid(step=0.05)
    assert grid and all(min(c) >= 1.0 for c in grid)
    assert all(abs(c.depth * c.width**2 * c.resolution**2 - 2) <= 0.1 for c in grid)
    assert len(set(grid)) == len(grid)
    assert any(c == pytest.approx((1.2, 1.1, 1.15)) for c in grid)  # EfficientNet's choice is on the grid
    with pytest.raises(ValueError, match=re.escape("step must be a number in (0, 0.5], got 0")):
        coefficient_grid(step=0)


def test_family_grows_and_v2_rules_cap_the_image_size():
    family = compound_family(presets.get("efficientnetv2-s"), range(1, 5), v2_rules=True)
    assert [member.name for member in family] == [f"efficientnetv2-s-phi{k}" for k in range(1, 5)]
    complexities = [spec_complexity(member) for member in family]
    for smaller, larger, a, b in zip(complexities, complexities[1:], family, family[1:]):
        assert larger.parameters > smaller.parameters and larger.macs > smaller.macs
        assert b.eval_image_size >= a.eval_image_size and b.train_image_size >= a.train_image_size
    assert max(member.eval_image_size for member in family) == V2_MAX_IMAGE_SIZE
