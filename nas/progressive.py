"""Progressive learning with adaptive regularization (EfficientNetV2, Tan & Le 2021, Section 4.2, Algorithm 1).

Training of ``N`` epochs is divided into ``M`` stages. Stage ``i`` (0-based) trains with image size ``S_i`` and
regularization magnitudes ``phi_i^k``, both interpolated linearly from the initial to the final values::

    S_i     = S_0     + (S_e     - S_0)     * i / (M - 1)
    phi_i^k = phi_0^k + (phi_e^k - phi_0^k) * i / (M - 1)

Small images early train fast and need little regularization; larger images later need more (Section 4.1), so
dropout, RandAugment magnitude and mixup alpha grow with the image size. Table 6 gives the (initial, final) values
per model, reproduced by :meth:`ProgressiveConfig.from_preset`.

Decisions where Algorithm 1 leaves room, each documented where it is implemented:

- ``M = 1`` (Algorithm 1 divides by ``M - 1 = 0``): the single stage trains at the final values ``S_e`` and
  ``phi_e``, i.e. plain training at the target size and regularization, the same as :func:`fixed_schedule`.
- Intermediate image sizes are rounded to a multiple of ``image_size_divisor``; ``S_0`` and ``S_e`` are kept
  exactly as given (Table 6's 300 is not a multiple of 8).
- Epochs are shared out with the stage boundaries of the reference implementation, ``first_epoch_i = floor(i*N/M)``.

This module is plain data (stdlib only), so schedules can be stored in checkpoints and studies without a framework.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from search_spaces.checks import check_int, check_real, is_int
from search_spaces.spec import MAX_IMAGE_SIZE

RANDAUGMENT_MAX_MAGNITUDE = 30.0  # RandAugment's magnitude scale as torchvision implements it (31 bins, 0..30)


class _Table6Row(NamedTuple):
    """One row of EfficientNetV2's Table 6: (min, max) of each progressive-learning setting."""

    image_size: tuple[int, int]
    randaugment_magnitude: tuple[float, float]
    mixup_alpha: tuple[float, float]
    dropout: tuple[float, float]


# EfficientNetV2 Table 6, "Progressive training settings for EfficientNetV2" (ImageNet).
TABLE_6: dict[str, _Table6Row] = {
    "efficientnetv2-s": _Table6Row(
        image_size=(128, 300), randaugment_magnitude=(5.0, 15.0), mixup_alpha=(0.0, 0.0), dropout=(0.1, 0.3)
    ),
    "efficientnetv2-m": _Table6Row(
        image_size=(128, 380), randaugment_magnitude=(5.0, 20.0), mixup_alpha=(0.0, 0.2), dropout=(0.1, 0.4)
    ),
    "efficientnetv2-l": _Table6Row(
        image_size=(128, 380), randaugment_magnitude=(5.0, 25.0), mixup_alpha=(0.0, 0.4), dropout=(0.1, 0.5)
    ),
}
_V2_S = TABLE_6["efficientnetv2-s"]


# What each regularization accepts, as check_real's bounds: dropout is a probability of dropping (1 would drop
# everything), RandAugment magnitudes live on the 0..30 scale, mixup alpha is the Beta(alpha, alpha) parameter (0
# means no mixup).
_REGULARIZATION_RANGES: dict[str, dict[str, Any]] = {
    "dropout": {"low": 0, "high": 1, "high_open": True},
    "randaugment_magnitude": {"low": 0, "high": int(RANDAUGMENT_MAX_MAGNITUDE)},  # int: the message says [0, 30]
    "mixup_alpha": {"low": 0},
}
_REGULARIZATION_FIELDS = tuple(_REGULARIZATION_RANGES)  # also the Regularization fields a schedule interpolates


@dataclass(frozen=True, kw_only=True)
class Regularization:
    """The regularization magnitudes ``Phi_i`` of one stage (EfficientNetV2 Section 4.2 uses these three).

    ``randaugment_magnitude`` may be fractional for intermediate stages (V2-S stage 1 gets 8.33); how a fractional
    magnitude is applied is the augmentation code's decision.
    """

    dropout: float
    randaugment_magnitude: float
    mixup_alpha: float

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            check_real(field.name, getattr(self, field.name), **_REGULARIZATION_RANGES[field.name])


@dataclass(frozen=True, kw_only=True)
class ProgressiveConfig:
    """Settings of Algorithm 1: the number of stages ``M`` and the (initial, final) value of every setting.

    Each pair is ``(S_0, S_e)`` or ``(phi_0, phi_e)``. Table 6 lists them as min -> max because the paper grows
    them, but any order is accepted (a shrinking schedule is a valid ablation); only the ranges are validated.
    Defaults are Table 6's EfficientNetV2-S row with the paper's 4 stages.

    ``image_size_divisor``: intermediate sizes ``S_1 .. S_{M-2}`` are rounded to the nearest multiple of it
    (halves round up), as :mod:`nas.scaling` rounds train sizes, so that feature maps halve evenly through the
    first three stride-2 layers; ``S_0`` and ``S_e`` are used exactly as given. 1 disables rounding.
    """

    num_stages: int = 4
    image_size: tuple[int, int] = _V2_S.image_size
    dropout: tuple[float, float] = _V2_S.dropout
    randaugment_magnitude: tuple[float, float] = _V2_S.randaugment_magnitude
    mixup_alpha: tuple[float, float] = _V2_S.mixup_alpha
    image_size_divisor: int = 8

    def __post_init__(self) -> None:
        check_int("num_stages", self.num_stages, 1)
        check_int("image_size_divisor", self.image_size_divisor, 1)
        _check_pair("image_size", self.image_size)
        if not all(is_int(size, 1) for size in self.image_size):
            raise ValueError(f"image_size must be a pair of integers >= 1, got {self.image_size!r}")
        if max(self.image_size) > MAX_IMAGE_SIZE:
            raise ValueError(f"image_size must be at most {MAX_IMAGE_SIZE}, got {self.image_size!r}")
        for name in _REGULARIZATION_FIELDS:
            pair = getattr(self, name)
            _check_pair(name, pair)
            for value in pair:
                check_real(name, value, **_REGULARIZATION_RANGES[name])

    @classmethod
    def from_preset(cls, name: str) -> ProgressiveConfig:
        """Table 6's settings for ``name`` (one of :data:`TABLE_6`'s keys) with 4 stages, as the paper trains."""
        if name not in TABLE_6:
            raise ValueError(f"preset must be one of {tuple(TABLE_6)}, got {name!r}")
        return cls(**TABLE_6[name]._asdict())

    def to_dict(self) -> dict[str, Any]:
        """Plain data (pairs as lists), JSON- and YAML-safe, for checkpoints; :meth:`from_dict` inverts it."""
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return {name: list(value) if isinstance(value, tuple) else value for name, value in data.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProgressiveConfig:
        """Builds a config from :meth:`to_dict`'s form; unknown keys are refused, missing ones take the defaults."""
        allowed = tuple(field.name for field in dataclasses.fields(cls))
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(f"progressive config keys must be among {allowed}, got unknown {unknown}")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})


def _check_pair(name: str, value: object) -> None:
    if not (isinstance(value, tuple) and len(value) == 2):
        raise ValueError(f"{name} must be a tuple (initial, final), got {value!r}")


@dataclass(frozen=True)
class Stage:
    """One stage of a schedule: epochs ``[first_epoch, first_epoch + num_epochs)`` at one size and regularization."""

    index: int
    first_epoch: int
    num_epochs: int
    image_size: int
    regularization: Regularization


def _interpolate(initial: float, final: float, stage_index: int, num_stages: int) -> float:
    """Algorithm 1's ``v_0 + (v_e - v_0) * i / (M - 1)``; the last stage (the only one when M = 1) gets ``v_e``.

    Returning ``v_e`` itself for the last stage also keeps it exact: ``0.1 + (0.3 - 0.1)`` is not ``0.3`` in floats.
    """
    if stage_index == num_stages - 1:
        return final
    return initial + (final - initial) * stage_index / (num_stages - 1)


def _stage_image_size(config: ProgressiveConfig, stage_index: int) -> int:
    """``S_i``: the endpoints as given, intermediate sizes rounded to ``image_size_divisor``.

    The rounded size is clamped between ``S_0`` and ``S_e``, so rounding never steps outside the schedule's range
    (possible when the endpoints are closer than one divisor).
    """
    initial, final = config.image_size
    if stage_index == config.num_stages - 1:  # also the single stage when M = 1
        return final
    if stage_index == 0:
        return initial
    size = _interpolate(initial, final, stage_index, config.num_stages)
    divisor = config.image_size_divisor
    rounded = int(size + divisor / 2) // divisor * divisor
    return min(max(rounded, min(initial, final)), max(initial, final))


def progressive_schedule(config: ProgressiveConfig, total_epochs: int) -> tuple[Stage, ...]:
    """The ``M`` stages of Algorithm 1 over ``total_epochs`` epochs, covering ``[0, total_epochs)`` contiguously.

    Stage ``i`` starts at epoch ``floor(i * N / M)``, the boundaries of the reference implementation
    (google/automl efficientnetv2, ``start_epoch = int(stage / total_stages * epochs)``), here in exact integer
    arithmetic; stage lengths differ by at most one (350 epochs in 4 stages: 87, 88, 87, 88).
    ``total_epochs < num_stages`` raises ``ValueError`` rather than dropping stages: fewer stages would change every
    ``S_i`` and ``phi_i``, i.e. silently run another experiment.

    Sizes and regularization follow the paper's ``i / (M - 1)``; the reference code uses ``(i + 1) / M`` for the
    image size (so it never trains at ``S_0``), which this module does not copy.
    """
    check_int("total_epochs", total_epochs, 1)
    num_stages = config.num_stages
    if total_epochs < num_stages:
        raise ValueError(
            f"total_epochs must be >= num_stages ({num_stages}) so that every stage trains at least one epoch, "
            f"got {total_epochs}"
        )
    boundaries = [stage_index * total_epochs // num_stages for stage_index in range(num_stages + 1)]
    return tuple(
        Stage(
            index=stage_index,
            first_epoch=boundaries[stage_index],
            num_epochs=boundaries[stage_index + 1] - boundaries[stage_index],
            image_size=_stage_image_size(config, stage_index),
            regularization=Regularization(
                **{
                    name: _interpolate(*getattr(config, name), stage_index, num_stages)
                    for name in _REGULARIZATION_FIELDS
                }
            ),
        )
        for stage_index in range(num_stages)
    )


def fixed_schedule(image_size: int, regularization: Regularization, total_epochs: int) -> tuple[Stage, ...]:
    """One stage at a fixed size and regularization: the non-progressive baseline that Section 4 compares against."""
    check_int("image_size", image_size, 1)
    if not isinstance(regularization, Regularization):
        raise ValueError(f"regularization must be a Regularization, got {type(regularization).__name__}")
    check_int("total_epochs", total_epochs, 1)
    stage = Stage(index=0, first_epoch=0, num_epochs=total_epochs, image_size=image_size, regularization=regularization)
    return (stage,)


def stage_for_epoch(schedule: tuple[Stage, ...], epoch: int) -> Stage:
    """The stage that trains 0-based ``epoch``; ``ValueError`` when the epoch lies outside the schedule."""
    if not schedule:
        raise ValueError("schedule must hold at least one stage, got an empty schedule")
    total_epochs = schedule[-1].first_epoch + schedule[-1].num_epochs
    check_int("epoch", epoch, 0, total_epochs, high_open=True)
    return next(stage for stage in schedule if epoch < stage.first_epoch + stage.num_epochs)
