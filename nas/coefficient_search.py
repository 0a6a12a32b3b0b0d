"""EfficientNet's coefficient search: which (alpha, beta, gamma) should scale *this* network?

At phi = 1 every grid point of :func:`nas.scaling.coefficient_grid` roughly doubles FLOPs; each scaled network is
proxy-trained and the point with the highest hold-out accuracy wins, as in EfficientNet (Section 3.3, step 2),
which compared accuracy at a fixed FLOPs budget. Accuracy rather than the search reward is the criterion because
the grid already fixes the cost; a reward would penalize the depth/width/resolution trade-off twice.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from nas.data import ImageData, load_data
from nas.measure import resolve_device
from nas.recipe import TrainConfig
from nas.records import EvalResult
from nas.scaling import CompoundCoefficients, coefficient_grid, compound_scale, round_image_size
from nas.train import train_and_evaluate
from search_spaces.files import write_file
from search_spaces.spec import ArchSpec

COEFFICIENTS_FILE = "coefficients.json"


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


def search_and_save_coefficients(
    spec: ArchSpec,
    data_source: str,
    config: TrainConfig,
    directory: Path,
    *,
    grid_step: float,
    on_start: Callable[[int, ImageData], None] | None = None,
    on_trial: Callable[[CoefficientTrial], None] | None = None,
) -> tuple[CoefficientTrial, list[CoefficientTrial]]:
    """``nas scale --search-coefficients``: proxy-trains ``spec`` at every point of a ``grid_step`` grid on the data
    of ``data_source`` and saves the winner as ``directory/coefficients.json``; returns the best point and all.

    A device this machine lacks is refused before the data loads. ``on_start(grid points, data)`` is told once
    the data is loaded, ``on_trial`` after each point. Raises ``ValueError`` when every point failed.
    """
    resolve_device(config.device)
    grid = coefficient_grid(step=grid_step)
    data = load_data(data_source, seed=config.seed)
    if on_start is not None:
        on_start(len(grid), data)
    best, trials = search_coefficients(spec, data, config, grid, on_trial=on_trial)
    if best is None:
        raise ValueError("every grid point failed; see the reasons above")
    save_coefficients(directory, best, data, config)
    return best, trials


def coefficients_record(best: CoefficientTrial, data: ImageData, config: TrainConfig) -> dict[str, Any]:
    """What a coefficient search found, as plain data: the winning alpha (depth), beta (width) and gamma
    (resolution), its hold-out accuracy, and the data and number of epochs that decided it."""
    return {"alpha": best.coefficients.depth, "beta": best.coefficients.width,
            "gamma": best.coefficients.resolution, "accuracy": best.result.accuracy,
            "data": data.name, "epochs": config.epochs}


def save_coefficients(directory: Path, best: CoefficientTrial, data: ImageData, config: TrainConfig) -> Path:
    """Writes :func:`coefficients_record` as ``directory/coefficients.json`` (the directory is created) through
    :func:`~search_spaces.files.write_file`; returns the file's path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / COEFFICIENTS_FILE
    write_file(path, json.dumps(coefficients_record(best, data, config), indent=2) + "\n")
    return path
