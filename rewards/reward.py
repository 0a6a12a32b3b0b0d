"""Multi-objective search rewards: pure functions of floats.

Two rewards, each taken from the paper that defines it:

* ``training_aware_reward`` -- EfficientNetV2 (Tan & Le, 2021, Section 3.3). The search
  maximizes ``A * S**w * P**v``, where ``A`` is model accuracy, ``S`` the normalized training
  step time and ``P`` the parameter size, with ``w = -0.07`` and ``v = -0.05`` "empirically
  determined to balance the trade-offs". ``S`` and ``P`` are normalized by the baseline
  architecture's step time and parameter count, so the baseline scores exactly its accuracy.
  ``reward_factors`` breaks such a reward into its factors; ``reward_noise`` is the standard error the
  reward carries from its two measured inputs (accuracy on a finite hold-out set, a timed S/S_ref), and
  ``within_noise`` the one rule that says whether two rewards differ by more than that noise.
* ``latency_target_reward`` -- MnasNet (Tan et al., 2019, Eq. 2):
  ``ACC(m) * (LAT(m) / T)**w`` with ``w = alpha`` if ``LAT(m) <= T`` else ``beta``.
  The paper's soft constraint uses ``alpha = beta = -0.07``; its hard constraint uses
  ``alpha = 0, beta = -1`` (accuracy alone below the target, a steep penalty above it).

This module imports nothing from the project (see DESIGN.md, section 1), only the standard
library. Every input is checked; an invalid one raises ``ValueError`` naming the argument and
its allowed range, because a NaN or negative measurement silently turned into a reward would
steer the controller wrongly without any visible failure.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

__all__ = [
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
]

#: EfficientNetV2 (Tan & Le, 2021, Section 3.3): the exponents ``w`` of the normalized step time and ``v`` of
#: the normalized parameter count, "empirically determined to balance the trade-offs". The one home of the
#: defaults: a campaign, the report and the benchmarks read them from here.
STEP_TIME_EXPONENT = -0.07
PARAMS_EXPONENT = -0.05

#: How many standard errors of their difference two rewards must differ by to be told apart (:func:`within_noise`):
#: 2, about a 95% two-sided bound for normal errors; a smaller lead could swap when both are measured again.
NOISE_Z = 2.0
#: The interquartile range of a normal distribution in units of its standard deviation (2 x 0.6745): how the spread
#: of S/S_ref's timed pairs, recorded as an IQR, becomes a standard deviation (:func:`reward_noise`).
IQR_PER_STANDARD_DEVIATION = 1.349
#: The half-width of a 95% interval in standard errors of a normal estimate: how S/S_ref's recorded 95% interval
#: becomes its standard error (:func:`reward_noise`).
INTERVAL_Z = 1.96

#: MnasNet (Tan et al., 2019, Section 3) exponents ``(alpha, beta)`` of Eq. 2 by constraint kind.
#: "soft": alpha = beta = -0.07 (a model 2x slower than the target needs ~5% more accuracy to
#: score the same). "hard": alpha = 0, beta = -1 (no reward for being faster than the target,
#: a sharp penalty for exceeding it).
LATENCY_CONSTRAINTS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "soft": (-0.07, -0.07),
        "hard": (0.0, -1.0),
    }
)


def _real(name: str, value: object, allowed: str) -> float:
    """Return ``value`` as a float if it is a real number (not a bool), else raise ValueError."""
    # bool is a subclass of int; True/False as a measurement is always a caller's mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def _check_accuracy(name: str, value: object) -> float:
    allowed = "a finite number in [0, 1]"
    x = _real(name, value, allowed)
    if not (math.isfinite(x) and 0.0 <= x <= 1.0):
        raise ValueError(f"{name} must be {allowed}, got {x!r}")
    return x


def _check_positive(name: str, value: object) -> float:
    allowed = "a finite number > 0"
    x = _real(name, value, allowed)
    if not (math.isfinite(x) and x > 0.0):
        raise ValueError(f"{name} must be {allowed}, got {x!r}")
    return x


def _check_non_negative(name: str, value: object) -> float:
    allowed = "a finite number >= 0"
    x = _real(name, value, allowed)
    if not (math.isfinite(x) and x >= 0.0):
        raise ValueError(f"{name} must be {allowed}, got {x!r}")
    return x


def _check_exponent(name: str, value: object) -> float:
    allowed = "a finite number"
    x = _real(name, value, allowed)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be {allowed}, got {x!r}")
    return x


def _power(name: str, ratio: float, exponent: float) -> float:
    """``ratio ** exponent``; a ratio or power out of float range raises ValueError naming it.

    The inputs are already finite and > 0, but their quotient can still underflow to 0 or
    overflow to inf (e.g. 1e-300 / 1e300), and the power can overflow; a reward computed from
    such a value would be meaningless, so it is refused rather than returned as 0 or inf.
    """
    result = math.inf
    if 0.0 < ratio < math.inf:
        try:
            result = ratio**exponent
        except OverflowError:
            pass
    if not math.isfinite(result):
        raise ValueError(
            f"{name} ** {exponent!r} is out of float range for {name} = {ratio!r}; "
            "the measurement and its reference are too far apart"
        )
    return result


def training_aware_reward(
    accuracy: float,
    step_time: float,
    params: float,
    *,
    step_time_ref: float,
    params_ref: float,
    w: float = STEP_TIME_EXPONENT,
    v: float = PARAMS_EXPONENT,
) -> float:
    """EfficientNetV2's training-aware search reward ``A * (S / S_ref)**w * (P / P_ref)**v``.

    EfficientNetV2 (Tan & Le, 2021, Section 3.3) searches for accuracy, training efficiency
    and parameter efficiency jointly with the reward ``A * S**w * P**v``, where ``S`` is the
    normalized training step time and ``P`` the parameter size, and ``w = -0.07``,
    ``v = -0.05``. Here ``S`` and ``P`` are normalized by the baseline architecture's
    measurements, so the baseline's reward is exactly its accuracy, and a candidate whose step
    time is half the baseline's gains a factor ``2**0.07`` (about 5%).

    Args:
        accuracy: ``A``, validation accuracy as a fraction in [0, 1].
        step_time: Measured training step time of the candidate (any unit, > 0).
        params: Parameter count of the candidate (> 0).
        step_time_ref: Step time of the baseline, in the same unit as ``step_time`` (> 0).
        params_ref: Parameter count of the baseline (> 0).
        w: Exponent of the normalized step time (paper: -0.07).
        v: Exponent of the normalized parameter count (paper: -0.05).

    Returns:
        The reward, a finite float >= 0.

    Raises:
        ValueError: If any argument is not a finite real number in its allowed range
            (bools are rejected); the message names the argument.
    """
    a = _check_accuracy("accuracy", accuracy)
    s = _check_positive("step_time", step_time)
    p = _check_positive("params", params)
    s_ref = _check_positive("step_time_ref", step_time_ref)
    p_ref = _check_positive("params_ref", params_ref)
    w = _check_exponent("w", w)
    v = _check_exponent("v", v)
    return a * _power("step_time / step_time_ref", s / s_ref, w) * _power(
        "params / params_ref", p / p_ref, v
    )


def latency_target_reward(
    accuracy: float,
    latency: float,
    *,
    target: float,
    constraint: str = "soft",
    alpha: float | None = None,
    beta: float | None = None,
) -> float:
    """MnasNet's latency-target reward ``ACC * (LAT / T)**w`` (Tan et al., 2019, Eq. 2).

    ``w = alpha`` when ``latency <= target`` and ``w = beta`` otherwise. ``constraint`` picks the
    paper's two settings (see ``LATENCY_CONSTRAINTS``):

    * ``"soft"`` (default): ``alpha = beta = -0.07`` -- the same trade-off on both sides of the
      target, so the search is rewarded for being faster even below it.
    * ``"hard"``: ``alpha = 0, beta = -1`` -- the reward is the accuracy itself at or below the
      target and ``ACC * T / LAT`` above it.

    An explicit ``alpha`` or ``beta`` overrides the value taken from ``constraint``.

    Args:
        accuracy: ``ACC(m)``, validation accuracy as a fraction in [0, 1].
        latency: ``LAT(m)``, measured latency of the candidate (any unit, > 0).
        target: ``T``, the target latency, in the same unit as ``latency`` (> 0).
        constraint: ``"soft"`` or ``"hard"``, the default source of ``alpha`` and ``beta``.
        alpha: Exponent used when ``latency <= target``; overrides ``constraint``.
        beta: Exponent used when ``latency > target``; overrides ``constraint``.

    Returns:
        The reward, a finite float >= 0.

    Raises:
        ValueError: If any argument is not a finite real number in its allowed range
            (bools are rejected), or ``constraint`` is unknown; the message names the argument.
    """
    if not isinstance(constraint, str) or constraint not in LATENCY_CONSTRAINTS:
        raise ValueError(
            f"constraint must be one of {tuple(LATENCY_CONSTRAINTS)}, got {constraint!r}"
        )
    default_alpha, default_beta = LATENCY_CONSTRAINTS[constraint]
    a = _check_accuracy("accuracy", accuracy)
    lat = _check_positive("latency", latency)
    t = _check_positive("target", target)
    alpha = _check_exponent("alpha", default_alpha if alpha is None else alpha)
    beta = _check_exponent("beta", default_beta if beta is None else beta)
    exponent = alpha if lat <= t else beta
    return a * _power("latency / target", lat / t, exponent)


@dataclass(frozen=True)
class RewardFactors:
    """A training-aware reward as the product of its factors: ``accuracy * step_time_factor * params_factor``,
    where ``step_time_factor = step_time_ratio**w`` and ``params_factor = params_ratio**v``."""

    accuracy: float
    step_time_ratio: float
    params_ratio: float
    step_time_factor: float
    params_factor: float

    @property
    def product(self) -> float:
        """``A * (S/S_ref)**w * (P/P_ref)**v``: the reward, recomputed from the factors."""
        return self.accuracy * self.step_time_factor * self.params_factor


def reward_factors(
    accuracy: float,
    step_time_ratio: float,
    params_ratio: float,
    *,
    w: float = STEP_TIME_EXPONENT,
    v: float = PARAMS_EXPONENT,
) -> RewardFactors:
    """The factors of :func:`training_aware_reward` for a normalized step time ``S/S_ref`` and parameter count
    ``P/P_ref``: a factor above 1 raises the reward (faster or smaller than the reference), below 1 lowers it.

    Raises:
        ValueError: If an argument is not a finite real number in its allowed range (accuracy in [0, 1], ratios
            > 0); the message names the argument.
    """
    a = _check_accuracy("accuracy", accuracy)
    s = _check_positive("step_time_ratio", step_time_ratio)
    p = _check_positive("params_ratio", params_ratio)
    w = _check_exponent("w", w)
    v = _check_exponent("v", v)
    return RewardFactors(a, s, p, _power("step_time_ratio", s, w), _power("params_ratio", p, v))


def accuracy_standard_error(accuracy: float, holdout_images: int) -> float:
    """The binomial standard error ``sqrt(A * (1 - A) / n)`` of an accuracy ``A`` counted on ``n`` hold-out images:
    how far another draw of ``n`` images would move it, typically. ``0.746`` on 500 images: ``0.0195``.

    Raises:
        ValueError: If ``accuracy`` is not in [0, 1] or ``holdout_images`` not an integer >= 1 (bools are
            rejected); the message names the argument.
    """
    a = _check_accuracy("accuracy", accuracy)
    if isinstance(holdout_images, bool) or not isinstance(holdout_images, numbers.Integral) or holdout_images < 1:
        raise ValueError(f"holdout_images must be an integer >= 1, got {holdout_images!r}")
    return math.sqrt(a * (1.0 - a) / int(holdout_images))


def reward_noise(
    accuracy: float,
    step_time_ratio: float,
    params_ratio: float,
    *,
    holdout_images: int,
    step_time_ratio_interval: tuple[float, float] | None = None,
    step_time_ratio_iqr: float | None = None,
    w: float = STEP_TIME_EXPONENT,
    v: float = PARAMS_EXPONENT,
) -> float:
    """The standard error δ of the reward ``R = A * (S/S_ref)**w * (P/P_ref)**v`` that its two measured inputs imply,
    to first order: ``δ = sqrt((dR/dA * σ_A)**2 + (dR/d(S/S_ref) * σ_S)**2)``, where

    * ``σ_A`` is :func:`accuracy_standard_error` on the ``holdout_images`` A was counted on, and
      ``dR/dA = (S/S_ref)**w * (P/P_ref)**v``;
    * ``σ_S`` is the standard error of S/S_ref: from its 95% interval when the measurement recorded one,
      ``(high - low) / (2 * INTERVAL_Z)``; else (trials timed before S/S_ref had an interval) from the
      interquartile range of the per-pair ratios, ``step_time_ratio_iqr / IQR_PER_STANDARD_DEVIATION``, the spread
      of one pair's ratio, larger than the error of their median: an upper bound. ``dR/d(S/S_ref) = w * R /
      (S/S_ref)``.

    ``P/P_ref`` is counted, not measured: it carries no noise. The two errors are taken as independent. The proxy
    training's seed-to-seed spread is not counted (one training per trial says nothing of it), so δ is the least
    noise a reward carries.

    Worked example (the demo's leader, w = -0.07, v = -0.05): A 0.746 on 500 images, S/S_ref 0.42 with pair IQR
    0.05, P/P_ref 0.5 gives R = 0.8207, σ_A = 0.0195, dR/dA = 1.100, σ_S = 0.0371, dR/d(S/S_ref) = -0.137,
    so δ = sqrt(0.0214**2 + 0.0051**2) = 0.0220: the hold-out's 500 images, not the timing, set the noise. With
    the interval 0.41-0.43 instead, σ_S = 0.0051 and δ = 0.0214.

    Raises:
        ValueError: If an argument is not a finite real number in its allowed range (accuracy in [0, 1], ratios
            > 0, the IQR >= 0, the interval two numbers low <= high, ``holdout_images`` an integer >= 1), or if
            neither the interval nor the IQR is given; the message names the argument.
    """
    factors = reward_factors(accuracy, step_time_ratio, params_ratio, w=w, v=v)
    if step_time_ratio_interval is not None:
        low, high = (_check_positive("step_time_ratio_interval", value) for value in step_time_ratio_interval)
        if low > high:
            raise ValueError(f"step_time_ratio_interval must be (low, high) with low <= high, got "
                             f"{tuple(step_time_ratio_interval)!r}")
        step_time_error = (high - low) / (2 * INTERVAL_Z)
    elif step_time_ratio_iqr is not None:
        step_time_error = _check_non_negative("step_time_ratio_iqr", step_time_ratio_iqr) / IQR_PER_STANDARD_DEVIATION
    else:
        raise ValueError("reward_noise needs step_time_ratio_interval or step_time_ratio_iqr, got neither")
    accuracy_part = factors.step_time_factor * factors.params_factor * accuracy_standard_error(
        factors.accuracy, holdout_images)
    step_time_part = abs(w) * factors.product / factors.step_time_ratio * step_time_error
    return math.hypot(accuracy_part, step_time_part)


def noise_margin(noise: float, other_noise: float, *, z: float = NOISE_Z) -> float:
    """``z * sqrt(noise**2 + other_noise**2)``: the least difference of two rewards with standard errors ``noise``
    and ``other_noise`` (:func:`reward_noise`) that lies outside their noise, ``z`` standard errors of the
    difference of two independent measurements. Two trials of a campaign are counted on the same hold-out images,
    so their accuracy errors are partly shared and the margin overstates that part; the seed-to-seed spread that
    :func:`reward_noise` leaves out works the other way.

    Raises:
        ValueError: If an argument is not a finite number >= 0; the message names the argument.
    """
    first = _check_non_negative("noise", noise)
    second = _check_non_negative("other_noise", other_noise)
    return _check_non_negative("z", z) * math.hypot(first, second)


def within_noise(reward: float, noise: float, other_reward: float, other_noise: float, *, z: float = NOISE_Z) -> bool:
    """Whether two rewards differ by less than :func:`noise_margin` of their standard errors: measuring both again
    (another hold-out draw, another timing) could swap them, so their order says little.

    The demo's two best (:func:`reward_noise`'s example against A 0.714, S/S_ref 0.472 with IQR 0.04, P/P_ref
    0.55: R 0.7754, δ 0.0222) differ by 0.0453, less than 2 * sqrt(0.0220**2 + 0.0222**2) = 0.0625: inside the
    noise.

    Raises:
        ValueError: If a reward or noise is not a finite number >= 0; the message names the argument.
    """
    difference = _check_non_negative("reward", reward) - _check_non_negative("other_reward", other_reward)
    return abs(difference) < noise_margin(noise, other_noise, z=z)
