"""EfficientNet's coefficient search: which (alpha, beta, gamma) should scale *this* network?

At phi = 1 every grid point of :func:`nas.scaling.coefficient_grid` roughly doubles FLOPs; each scaled network is
proxy-trained and the point with the highest hold-out accuracy wins, as in EfficientNet (Section 3.3, step 2),
which compared accuracy at a fixed FLOPs budget. Accuracy rather than the search reward is the criterion because
the grid already fixes the cost; a reward would penalize the depth/width/resolution trade-off twice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from nas.data import ImageData
from nas.scaling import CompoundCoefficients, round_image_size, compound_scale
from nas.train import EvalResult, TrainConfig, train_and_evaluate
from search_spaces.spec import ArchSpec


@dataclass(frozen=True)
class CoefficientTrial:
    """One grid point: its coefficients, the scaled spec, the image size it trained at, and the result."""

    coefficients: CompoundCoefficients
    spec: ArchSpec
    image_size: int
    result: EvalResult


def search_coefficients(
    spec: ArchSpec,
    data: ImageData,
    config: TrainConfig,
    grid: list[CompoundCoefficients],
    *,
    on_trial: Callable[[CoefficientTrial], None] | None = None,
) -> tuple[CoefficientTrial | None, list[CoefficientTrial]]:
    """Proxy-trains ``spec`` scaled by every grid point at phi = 1; returns the best (None if all failed) and all.

    The data's resolution is the base resolution: a point trains at ``gamma`` times it (multiple of 8).
    """
    trials = []
    for coefficients in grid:
        scaled = compound_scale(
            spec, 1, alpha=coefficients.depth, beta=coefficients.width, gamma=coefficients.resolution
        )
        image_size = round_image_size(data.image_size * coefficients.resolution)
        result = train_and_evaluate(scaled, data, dataclasses.replace(config, image_size=image_size))
        trial = CoefficientTrial(coefficients, scaled, image_size, result)
        trials.append(trial)
        if on_trial is not None:
            on_trial(trial)
    successful = [trial for trial in trials if trial.result.ok]
    best = max(successful, key=lambda trial: trial.result.accuracy, default=None)
    return best, trials
