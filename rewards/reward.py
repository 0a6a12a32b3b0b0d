"""Multi-objective search rewards: pure functions of floats.

Two rewards, each taken from the paper that defines it:

* ``training_aware_reward`` -- EfficientNetV2 (Tan & Le, 2021, Section 3.3). The search
  maximizes ``A * S**w * P**v``, where ``A`` is model accuracy, ``S`` the normalized training
  step time and ``P`` the parameter size, with ``w = -0.07`` and ``v = -0.05`` "empirically
  determined to balance the trade-offs". ``S`` and ``P`` are normalized by the baseline
  architecture's step time and parameter count, so the baseline scores exactly its accuracy.
  ``reward_factors`` breaks such a reward into its factors, and ``step_time_noise`` says how far the
  spread of a step-time measurement moves it (what a report needs to tell a lead from timing noise).
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
    "LATENCY_CONSTRAINTS",
    "PARAMS_EXPONENT",
    "STEP_TIME_EXPONENT",
    "RewardFactors",
    "latency_target_reward",
    "reward_factors",
    "step_time_noise",
    "training_aware_reward",
    "within_noise",
]

#: EfficientNetV2 (Tan & Le, 2021, Section 3.3): the exponents ``w`` of the normalized step time and ``v`` of
#: the normalized parameter count, "empirically determined to balance the trade-offs". The one home of the
#: defaults: a campaign, the report and the benchmarks read them from here.
STEP_TIME_EXPONENT = -0.07
PARAMS_EXPONENT = -0.05

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


def step_time_noise(
    reward: float, step_time: float, step_time_iqr: float, *, w: float = STEP_TIME_EXPONENT
) -> float:
    """How far a step time's spread moves a reward: the change in ``reward`` that moving the step time (a median
    of timed windows) by half the windows' interquartile range implies through ``(S/S_ref)**w``, to first order,
    ``|w| * reward * iqr / (2 * median)``. The step time and its IQR in any one unit.

    The reference's own spread moves every normalized step time alike, so it does not reorder candidates and is
    not counted; neither is accuracy noise (the proxy training's seed), which comes on top.

    Raises:
        ValueError: If ``reward`` or ``step_time_iqr`` is not a finite number >= 0, ``step_time`` not > 0, or ``w``
            not finite; the message names the argument.
    """
    r = _check_non_negative("reward", reward)
    median = _check_positive("step_time", step_time)
    iqr = _check_non_negative("step_time_iqr", step_time_iqr)
    return abs(_check_exponent("w", w)) * r * iqr / (2 * median)


def within_noise(reward: float, noise: float, other_reward: float, other_noise: float) -> bool:
    """Whether two rewards differ by less than their summed noise (:func:`step_time_noise`): their ranges
    ``reward +- noise`` overlap, so timing the two again could swap them."""
    return abs(reward - other_reward) < noise + other_noise
