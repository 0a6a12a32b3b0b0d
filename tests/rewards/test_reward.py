"""Tests of the search rewards (EfficientNetV2 Section 3.3; MnasNet Eq. 2)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

import rewards
from rewards import (
    IQR_PER_STANDARD_DEVIATION,
    LATENCY_CONSTRAINTS,
    NOISE_Z,
    PARAMS_EXPONENT,
    STEP_TIME_EXPONENT,
    accuracy_standard_error,
    latency_target_reward,
    noise_margin,
    reward_factors,
    reward_noise,
    training_aware_reward,
    within_noise,
)
from rewards import reward as reward_module

# A baseline in the units nas.measure reports: seconds per step and a parameter count
# (EfficientNetV2-S has ~21.5M parameters).
S_REF = 0.25
P_REF = 21_458_488.0


def ta(accuracy=0.8, step_time=S_REF, params=P_REF, **kwargs):
    kwargs.setdefault("step_time_ref", S_REF)
    kwargs.setdefault("params_ref", P_REF)
    return training_aware_reward(accuracy, step_time, params, **kwargs)


# --- training_aware_reward -----------------------------------------------------------------


def test_public_api_is_reexported():
    assert rewards.training_aware_reward is training_aware_reward
    assert rewards.latency_target_reward is latency_target_reward
    assert set(rewards.__all__) == {
        "INTERVAL_Z",
        "IQR_PER_STANDARD_DEVIATION",
        "LATENCY_CONSTRAINTS",
        "NOISE_Z",
        "PARAMS_EXPONENT",
        "STEP_TIME_EXPONENT",
        "RewardFactors",
        "accuracy_standard_error",
        "latency_target_reward",
        "noise_margin",
        "reward_factors",
        "reward_noise",
        "training_aware_reward",
        "within_noise",
    }
    assert all(getattr(rewards, name) is getattr(reward_module, name) for name in rewards.__all__)


@pytest.mark.parametrize("accuracy", [0.0, 0.1, 0.731, 0.8, 1.0])
def test_reward_equals_accuracy_exactly_at_baseline(accuracy):
    assert ta(accuracy) == accuracy


@pytest.mark.parametrize("w, v", [(-0.07, -0.05), (-1.0, -2.0), (0.5, 3.0)])
def test_reward_equals_accuracy_at_baseline_for_any_exponents(w, v):
    assert ta(0.6, w=w, v=v) == 0.6


def test_paper_default_exponents():
    # EfficientNetV2 Section 3.3: w = -0.07, v = -0.05.
    assert ta(0.8, step_time=2 * S_REF, params=3 * P_REF) == pytest.approx(
        0.8 * 2**-0.07 * 3**-0.05, rel=1e-15
    )


def test_halving_step_time_raises_reward_by_2_to_the_0_07():
    base = ta(0.8)
    faster = ta(0.8, step_time=S_REF / 2)
    assert faster / base == pytest.approx(2**0.07, rel=1e-15)
    assert faster == pytest.approx(0.8 * 2**0.07, rel=1e-15)


def test_halving_params_raises_reward_by_2_to_the_0_05():
    assert ta(0.8, params=P_REF / 2) == pytest.approx(0.8 * 2**0.05, rel=1e-15)


def test_only_the_ratio_to_the_reference_matters():
    # Milliseconds or seconds, params or millions of params: same reward.
    a = training_aware_reward(0.7, 0.3, 5e6, step_time_ref=0.2, params_ref=4e6)
    b = training_aware_reward(0.7, 300.0, 5.0, step_time_ref=200.0, params_ref=4.0)
    assert a == pytest.approx(b, rel=1e-14)


def test_explicit_exponents_are_used():
    r = ta(0.5, step_time=4 * S_REF, params=8 * P_REF, w=-0.5, v=-1 / 3)
    assert r == pytest.approx(0.5 * 4**-0.5 * 8 ** (-1 / 3), rel=1e-14)
    assert r == pytest.approx(0.5 * 0.5 * 0.5, rel=1e-14)


def test_zero_exponents_give_accuracy():
    assert ta(0.42, step_time=7 * S_REF, params=0.1 * P_REF, w=0.0, v=0.0) == 0.42


def test_monotonic_increasing_in_accuracy():
    accuracies = [0.0, 0.05, 0.3, 0.5, 0.51, 0.9, 1.0]
    values = [ta(a, step_time=1.7 * S_REF, params=0.6 * P_REF) for a in accuracies]
    assert all(x < y for x, y in zip(values, values[1:]))


@pytest.mark.parametrize("field, ref", [("step_time", S_REF), ("params", P_REF)])
def test_strictly_decreasing_in_step_time_and_params(field, ref):
    factors = [0.01, 0.25, 0.5, 0.99, 1.0, 1.01, 2.0, 10.0, 1000.0]
    values = [ta(0.8, **{field: f * ref}) for f in factors]
    assert all(x > y for x, y in zip(values, values[1:]))


def test_step_time_weighs_more_than_params():
    # |w| = 0.07 > |v| = 0.05: doubling step time costs more than doubling params.
    assert ta(0.8, step_time=2 * S_REF) < ta(0.8, params=2 * P_REF) < ta(0.8)


def test_accepts_ints_and_returns_float():
    r = training_aware_reward(1, 2, 3, step_time_ref=2, params_ref=3)
    assert type(r) is float and r == 1.0


# --- latency_target_reward -----------------------------------------------------------------

T = 0.080  # a target latency of 80 ms, as in MnasNet's ImageNet search (seconds here)


def test_constraint_presets_match_mnasnet():
    assert LATENCY_CONSTRAINTS["soft"] == (-0.07, -0.07)
    assert LATENCY_CONSTRAINTS["hard"] == (0.0, -1.0)
    with pytest.raises(TypeError):
        LATENCY_CONSTRAINTS["soft"] = (0.0, 0.0)  # read-only


@pytest.mark.parametrize("constraint", ["soft", "hard"])
@pytest.mark.parametrize("accuracy", [0.0, 0.3, 0.75, 1.0])
def test_latency_reward_equals_accuracy_at_target(constraint, accuracy):
    assert latency_target_reward(accuracy, T, target=T, constraint=constraint) == accuracy


@pytest.mark.parametrize("factor", [1e-6, 0.1, 0.5, 0.9, 0.999999, 1.0])
def test_hard_constraint_is_accuracy_at_or_below_target(factor):
    assert latency_target_reward(0.75, factor * T, target=T, constraint="hard") == 0.75


@pytest.mark.parametrize("factor", [1.000001, 1.1, 2.0, 4.0, 100.0])
def test_hard_constraint_penalizes_with_exponent_minus_one_above_target(factor):
    latency = factor * T
    r = latency_target_reward(0.75, latency, target=T, constraint="hard")
    assert r == 0.75 * (latency / T) ** -1
    assert r == pytest.approx(0.75 * T / latency, rel=1e-15)
    assert r < 0.75


def test_hard_constraint_at_twice_the_target_halves_the_reward():
    assert latency_target_reward(0.8, 2 * T, target=T, constraint="hard") == pytest.approx(0.4)


def test_soft_is_the_default():
    for latency in (0.3 * T, 3 * T):
        assert latency_target_reward(0.7, latency, target=T) == latency_target_reward(
            0.7, latency, target=T, constraint="soft"
        )


@pytest.mark.parametrize("factor", [1.5, 2.0, 10.0])
def test_soft_constraint_is_symmetric_in_log_latency(factor):
    # Same exponent -0.07 on both sides: log(reward / A) = -0.07 * log(LAT / T).
    a = 0.7
    faster = latency_target_reward(a, T / factor, target=T, constraint="soft")
    slower = latency_target_reward(a, T * factor, target=T, constraint="soft")
    assert faster / a == pytest.approx(a / slower, rel=1e-14)
    assert faster == pytest.approx(a * factor**0.07, rel=1e-14)
    assert slower == pytest.approx(a * factor**-0.07, rel=1e-14)
    assert math.log(faster / a) == pytest.approx(-math.log(slower / a), rel=1e-12)


def test_soft_constraint_strictly_decreasing_across_target():
    factors = [0.1, 0.5, 0.99, 1.0, 1.01, 2.0, 10.0]
    values = [latency_target_reward(0.6, f * T, target=T) for f in factors]
    assert all(x > y for x, y in zip(values, values[1:]))


def test_monotonic_increasing_in_accuracy_latency_reward():
    for constraint in ("soft", "hard"):
        values = [
            latency_target_reward(a, 1.3 * T, target=T, constraint=constraint)
            for a in (0.0, 0.2, 0.5, 0.9, 1.0)
        ]
        assert all(x < y for x, y in zip(values, values[1:]))


def test_alpha_applies_at_or_below_and_beta_above_target():
    kwargs = dict(target=T, alpha=-0.5, beta=-2.0)
    assert latency_target_reward(0.9, T / 4, **kwargs) == pytest.approx(0.9 * 2.0, rel=1e-15)
    assert latency_target_reward(0.9, T * 2, **kwargs) == pytest.approx(0.9 / 4, rel=1e-15)
    # Exactly at the target, alpha's side: 1 ** alpha == 1.
    assert latency_target_reward(0.9, T, **kwargs) == 0.9


def test_explicit_exponent_overrides_only_its_own_side():
    # Hard preset with alpha overridden: below target uses alpha, above still uses beta = -1.
    below = latency_target_reward(0.8, T / 2, target=T, constraint="hard", alpha=-0.07)
    above = latency_target_reward(0.8, T * 2, target=T, constraint="hard", alpha=-0.07)
    assert below == pytest.approx(0.8 * 2**0.07, rel=1e-15)
    assert above == pytest.approx(0.4, rel=1e-15)
    # Soft preset with beta overridden.
    below = latency_target_reward(0.8, T / 2, target=T, beta=-1.0)
    above = latency_target_reward(0.8, T * 2, target=T, beta=-1.0)
    assert below == pytest.approx(0.8 * 2**0.07, rel=1e-15)
    assert above == pytest.approx(0.4, rel=1e-15)


def test_latency_reward_ratio_is_exact_for_representable_ratios():
    r = latency_target_reward(0.5, 3.0, target=1.5, alpha=0.0, beta=-1.0)
    assert Fraction(r) == Fraction(1, 4)


# --- validation ----------------------------------------------------------------------------

NAN = float("nan")
INF = float("inf")

BAD_ACCURACY = [NAN, INF, -INF, -0.1, -1e-12, 1.0000001, 1.5, 2, True, False, None, "0.5"]
BAD_POSITIVE = [NAN, INF, -INF, -1.0, -1e-300, 0.0, -0.0, 0, True, False, None, "1"]
BAD_EXPONENT = [NAN, INF, -INF, True, False, "0.1", [0.1]]


def _ids(values):
    return [repr(v) for v in values]


def _expect_value_error(name, allowed, call):
    with pytest.raises(ValueError) as excinfo:
        call()
    message = str(excinfo.value)
    assert message.startswith(f"{name} must be "), message
    assert allowed in message, message
    assert "got " in message, message


@pytest.mark.parametrize("bad", BAD_ACCURACY, ids=_ids(BAD_ACCURACY))
def test_training_aware_rejects_bad_accuracy(bad):
    _expect_value_error("accuracy", "[0, 1]", lambda: ta(bad))


@pytest.mark.parametrize("bad", BAD_ACCURACY, ids=_ids(BAD_ACCURACY))
def test_latency_target_rejects_bad_accuracy(bad):
    _expect_value_error("accuracy", "[0, 1]", lambda: latency_target_reward(bad, T, target=T))


@pytest.mark.parametrize("name", ["step_time", "params", "step_time_ref", "params_ref"])
@pytest.mark.parametrize("bad", BAD_POSITIVE, ids=_ids(BAD_POSITIVE))
def test_training_aware_rejects_bad_positive_inputs(name, bad):
    _expect_value_error(name, "> 0", lambda: ta(0.5, **{name: bad}))


@pytest.mark.parametrize("name", ["latency", "target"])
@pytest.mark.parametrize("bad", BAD_POSITIVE, ids=_ids(BAD_POSITIVE))
def test_latency_target_rejects_bad_positive_inputs(name, bad):
    kwargs = {"accuracy": 0.5, "latency": T, "target": T, name: bad}
    _expect_value_error(name, "> 0", lambda: latency_target_reward(**kwargs))


@pytest.mark.parametrize("name", ["w", "v"])
@pytest.mark.parametrize("bad", BAD_EXPONENT, ids=_ids(BAD_EXPONENT))
def test_training_aware_rejects_bad_exponents(name, bad):
    _expect_value_error(name, "finite number", lambda: ta(0.5, **{name: bad}))


@pytest.mark.parametrize("name", ["alpha", "beta"])
@pytest.mark.parametrize("bad", BAD_EXPONENT, ids=_ids(BAD_EXPONENT))
def test_latency_target_rejects_bad_exponents(name, bad):
    # Rejected even when that exponent would not be used for this latency.
    for latency in (T / 2, 2 * T):
        _expect_value_error(
            name,
            "finite number",
            lambda latency=latency: latency_target_reward(0.5, latency, target=T, **{name: bad}),
        )


@pytest.mark.parametrize("bad", ["medium", "Soft", "", None, 1, ["soft"]], ids=repr)
def test_latency_target_rejects_unknown_constraint(bad):
    _expect_value_error(
        "constraint",
        "('soft', 'hard')",
        lambda: latency_target_reward(0.5, T, target=T, constraint=bad),
    )


def test_error_message_format_matches_design_example():
    expected = r"^accuracy must be a finite number in \[0, 1\], got nan$"
    with pytest.raises(ValueError, match=expected):
        ta(NAN)
    with pytest.raises(ValueError, match=r"^params_ref must be a finite number > 0, got 0\.0$"):
        ta(0.5, params_ref=0.0)
    with pytest.raises(ValueError, match=r"^latency must be a finite number > 0, got True$"):
        latency_target_reward(0.5, True, target=T)


def test_reference_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        training_aware_reward(0.5, 1.0, 1.0, 1.0, 1.0)  # type: ignore[misc]
    with pytest.raises(TypeError):
        latency_target_reward(0.5, 1.0, 1.0)  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(step_time=1e-300, step_time_ref=1e300),  # ratio underflows to 0
        dict(step_time=1e300, step_time_ref=1e-300),  # ratio overflows to inf
        dict(step_time=1e-200, step_time_ref=1e100, w=-2.0),  # power overflows
    ],
    ids=["ratio-underflow", "ratio-overflow", "power-overflow"],
)
def test_out_of_range_ratio_is_reported_as_value_error(kwargs):
    with pytest.raises(ValueError, match=r"^step_time / step_time_ref \*\* .* out of float range"):
        ta(0.5, **kwargs)


def test_out_of_range_latency_ratio_is_reported_as_value_error():
    with pytest.raises(ValueError, match=r"^latency / target \*\* "):
        latency_target_reward(0.5, 1e300, target=1e-300)


# --- the reward's factors and its noise ------------------------------------------------------------


def test_the_default_exponents_are_the_paper_s():
    assert (STEP_TIME_EXPONENT, PARAMS_EXPONENT) == (-0.07, -0.05)
    assert ta(0.8, step_time=2 * S_REF) == ta(0.8, step_time=2 * S_REF, w=-0.07, v=-0.05)


@pytest.mark.parametrize("w, v", [(STEP_TIME_EXPONENT, PARAMS_EXPONENT), (-0.1, -0.02), (0.5, 3.0)])
@pytest.mark.parametrize("step_time, params", [(S_REF, P_REF), (S_REF / 2, 3 * P_REF), (1.7 * S_REF, P_REF / 4)])
def test_the_factors_multiply_to_the_reward(w, v, step_time, params):
    factors = reward_factors(0.73, step_time / S_REF, params / P_REF, w=w, v=v)
    assert factors.product == pytest.approx(ta(0.73, step_time, params, w=w, v=v), rel=1e-14)
    assert factors.step_time_factor == pytest.approx((step_time / S_REF) ** w, rel=1e-15)
    assert factors.params_factor == pytest.approx((params / P_REF) ** v, rel=1e-15)
    assert (factors.accuracy, factors.step_time_ratio, factors.params_ratio) == (
        0.73, step_time / S_REF, params / P_REF)


def test_a_faster_and_smaller_candidate_has_factors_above_one():
    factors = reward_factors(0.7, 0.5, 0.8)  # the paper's exponents by default
    assert factors.step_time_factor == pytest.approx(0.5**-0.07) and factors.step_time_factor > 1
    assert factors.params_factor == pytest.approx(0.8**-0.05) and factors.params_factor > 1
    slower = reward_factors(0.7, 2.0, 1.0)
    assert slower.step_time_factor < 1 and slower.params_factor == 1.0


@pytest.mark.parametrize("name, kwargs, allowed", [
    ("accuracy", {"accuracy": 1.5}, "[0, 1]"),
    ("step_time_ratio", {"step_time_ratio": 0.0}, "> 0"),
    ("params_ratio", {"params_ratio": NAN}, "> 0"),
    ("w", {"w": True}, "finite number"),
])
def test_reward_factors_refuse_bad_inputs_naming_them(name, kwargs, allowed):
    arguments = {"accuracy": 0.7, "step_time_ratio": 1.0, "params_ratio": 1.0} | kwargs
    _expect_value_error(name, allowed, lambda: reward_factors(**arguments))


def test_the_accuracy_s_standard_error_is_binomial():
    assert accuracy_standard_error(0.746, 500) == pytest.approx(math.sqrt(0.746 * 0.254 / 500), rel=1e-15)
    assert accuracy_standard_error(0.746, 500) == pytest.approx(0.0195, abs=1e-4)  # the docstring's example
    assert accuracy_standard_error(0.5, 100) == pytest.approx(0.05, rel=1e-15)  # the largest at A = 0.5
    assert accuracy_standard_error(0.5, 400) == pytest.approx(0.025, rel=1e-15)  # 4x the images: half the error
    assert accuracy_standard_error(1.0, 500) == accuracy_standard_error(0.0, 500) == 0.0


def test_the_reward_noise_of_the_docstring_s_worked_example():
    """The demo's leader: A 0.746 on 500 images, S/S0 0.42 with pair IQR 0.05, P/P0 0.5."""
    noise = reward_noise(0.746, 0.42, 0.5, holdout_images=500, step_time_ratio_iqr=0.05)
    reward = reward_factors(0.746, 0.42, 0.5).product
    accuracy_part = 0.42**-0.07 * 0.5**-0.05 * math.sqrt(0.746 * 0.254 / 500)
    step_time_part = 0.07 * reward / 0.42 * 0.05 / 1.349
    assert noise == pytest.approx(math.hypot(accuracy_part, step_time_part), rel=1e-12)
    assert (reward, accuracy_part, step_time_part, noise) == pytest.approx((0.8207, 0.0214, 0.0051, 0.0220), abs=1e-4)
    assert IQR_PER_STANDARD_DEVIATION == pytest.approx(2 * 0.6745, abs=1e-3)  # a normal's IQR in standard deviations


def test_an_interval_gives_the_step_time_error_and_wins_over_the_iqr():
    """The docstring's example with the interval 0.41-0.43: σ_S = 0.02 / 3.92 = 0.0051, δ = 0.0214."""
    noise = reward_noise(0.746, 0.42, 0.5, holdout_images=500, step_time_ratio_interval=(0.41, 0.43))
    reward = reward_factors(0.746, 0.42, 0.5).product
    accuracy_part = 0.42**-0.07 * 0.5**-0.05 * math.sqrt(0.746 * 0.254 / 500)
    step_time_part = 0.07 * reward / 0.42 * (0.43 - 0.41) / (2 * 1.96)
    assert noise == pytest.approx(math.hypot(accuracy_part, step_time_part), rel=1e-12)
    assert noise == pytest.approx(0.0214, abs=1e-4)
    both = reward_noise(0.746, 0.42, 0.5, holdout_images=500, step_time_ratio_interval=(0.41, 0.43),
                        step_time_ratio_iqr=0.05)
    assert both == noise  # the interval is the median's own error; the IQR only bounds it
    with pytest.raises(ValueError, match=r"needs step_time_ratio_interval or step_time_ratio_iqr, got neither"):
        reward_noise(0.746, 0.42, 0.5, holdout_images=500)
    with pytest.raises(ValueError, match=r"step_time_ratio_interval must be \(low, high\) with low <= high"):
        reward_noise(0.746, 0.42, 0.5, holdout_images=500, step_time_ratio_interval=(0.43, 0.41))


def test_each_measurement_adds_its_own_noise_and_the_counted_parameters_none():
    timing_only = reward_noise(1.0, 0.5, 2.0, holdout_images=100, step_time_ratio_iqr=0.1)  # A = 1: no binomial error
    assert timing_only == pytest.approx(0.07 * reward_factors(1.0, 0.5, 2.0).product / 0.5 * 0.1 / 1.349, rel=1e-12)
    accuracy_only = reward_noise(0.7, 0.5, 2.0, holdout_images=100, step_time_ratio_iqr=0.0)
    assert accuracy_only == pytest.approx(0.5**-0.07 * 2.0**-0.05 * accuracy_standard_error(0.7, 100), rel=1e-12)
    doubled_w = reward_noise(1.0, 0.5, 2.0, holdout_images=100, step_time_ratio_iqr=0.1, w=-0.14)
    assert doubled_w == pytest.approx(2 * timing_only * (0.5**-0.07), rel=1e-12)  # |w| and the factor both move
    assert reward_noise(0.7, 1.0, 1.0, holdout_images=500, step_time_ratio_iqr=0.0) == pytest.approx(
        accuracy_standard_error(0.7, 500), rel=1e-15)  # the baseline: its accuracy's noise alone


def test_two_rewards_are_inside_the_noise_below_z_standard_errors_of_their_difference():
    """The docstring's example: 0.8207 +- 0.0220 against 0.7754 +- 0.0222 differ by 0.0453 < 2 x 0.0313."""
    first = reward_noise(0.746, 0.42, 0.5, holdout_images=500, step_time_ratio_iqr=0.05)
    second = reward_noise(0.714, 0.472, 0.55, holdout_images=500, step_time_ratio_iqr=0.04)
    rewards_ = reward_factors(0.746, 0.42, 0.5).product, reward_factors(0.714, 0.472, 0.55).product
    assert NOISE_Z == 2.0
    assert noise_margin(first, second) == pytest.approx(2 * math.hypot(first, second), rel=1e-15)
    assert noise_margin(first, second) == pytest.approx(0.0625, abs=1e-4)
    assert within_noise(rewards_[0], first, rewards_[1], second) is True
    assert within_noise(rewards_[0], first, rewards_[1], second, z=1.0) is False  # 1.45 standard errors apart
    assert within_noise(rewards_[1], second, rewards_[0], first) is True  # symmetric
    assert within_noise(0.7, 0.0, 0.7, 0.0) is False  # no noise: only a strictly smaller difference is inside it


@pytest.mark.parametrize("name, call, allowed", [
    ("accuracy", lambda: accuracy_standard_error(1.5, 100), "[0, 1]"),
    ("holdout_images", lambda: accuracy_standard_error(0.5, 0), "integer >= 1"),
    ("holdout_images", lambda: accuracy_standard_error(0.5, True), "integer >= 1"),
    ("holdout_images", lambda: accuracy_standard_error(0.5, 10.0), "integer >= 1"),
    ("step_time_ratio_iqr", lambda: reward_noise(0.5, 1.0, 1.0, holdout_images=10, step_time_ratio_iqr=-0.1), ">= 0"),
    ("step_time_ratio", lambda: reward_noise(0.5, 0.0, 1.0, holdout_images=10, step_time_ratio_iqr=0.1), "> 0"),
    ("w", lambda: reward_noise(0.5, 1.0, 1.0, holdout_images=10, step_time_ratio_iqr=0.1, w=INF), "finite number"),
    ("other_noise", lambda: noise_margin(0.1, NAN), ">= 0"),
    ("z", lambda: noise_margin(0.1, 0.1, z=-1.0), ">= 0"),
    ("reward", lambda: within_noise(-0.1, 0.1, 0.5, 0.1), ">= 0"),
])
def test_the_noise_functions_refuse_bad_inputs_naming_them(name, call, allowed):
    _expect_value_error(name, allowed, call)
