"""EfficientNet's coefficient search: which (alpha, beta, gamma) should scale *this* network?

At phi = 1 every grid point of :func:`nas.scaling.coefficient_grid` roughly doubles FLOPs; each scaled network is
proxy-trained and the point with the highest hold-out accuracy wins, as in EfficientNet (Section 3.3, step 2),
which compared accuracy at a fixed FLOPs budget. Accuracy rather than the search reward is the criterion because
the grid already fixes the cost; a reward would penalize the depth/width/resolution trade-off twice.

On a small network many grid points round to the same network at the same image size (repeats of a stage cannot
be fractional): such a network is trained once and its result stands for each of its points. Whether the winner's
lead over the runner-up is larger than the hold-out's sampling noise is said (:func:`lead_over_noise`), since a
small hold-out cannot tell close points apart.
"""

from __future__ import annotations

import dataclasses
import json
import math
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
class GridPoint:
    """One grid point, planned: its coefficients, the scaled spec and the image size it trains at."""

    coefficients: CompoundCoefficients
    spec: ArchSpec
    image_size: int

    @property
    def network(self) -> str:
        """What training depends on: the scaled network (its name aside) and the image size."""
        layout = {key: value for key, value in self.spec.to_dict().items() if key != "name"}
        return json.dumps([layout, self.image_size], sort_keys=True)


@dataclass(frozen=True)
class CoefficientTrial:
    """One grid point: its coefficients, the scaled spec, the image size it trained at, and the result.
    ``same_as`` is the earlier point whose training this one's network repeats (its result is that one's)."""

    coefficients: CompoundCoefficients
    spec: ArchSpec
    image_size: int
    result: EvalResult
    same_as: CompoundCoefficients | None = None


def plan_grid(spec: ArchSpec, base_image_size: int, grid: list[CompoundCoefficients]) -> list[GridPoint]:
    """``spec`` scaled by every grid point at phi = 1; a point trains at ``gamma`` times ``base_image_size``
    (multiple of 8)."""
    return [GridPoint(coefficients,
                      compound_scale(spec, 1, alpha=coefficients.depth, beta=coefficients.width,
                                     gamma=coefficients.resolution),
                      round_image_size(base_image_size * coefficients.resolution))
            for coefficients in grid]


def distinct_networks(points: list[GridPoint]) -> int:
    """How many trainings ``points`` need: one per distinct network and image size."""
    return len({point.network for point in points})


def search_coefficients(
    spec: ArchSpec,
    data: ImageData,
    config: TrainConfig,
    grid: list[CompoundCoefficients],
    *,
    on_trial: Callable[[CoefficientTrial], None] | None = None,
) -> tuple[CoefficientTrial | None, list[CoefficientTrial]]:
    """Proxy-trains ``spec`` scaled by every grid point at phi = 1 (each distinct network once); returns the best
    (None if all failed; of equal accuracies, the first point) and all.

    The data's resolution is the base resolution: a point trains at ``gamma`` times it (multiple of 8).
    """
    trials: list[CoefficientTrial] = []
    trained: dict[str, CoefficientTrial] = {}
    for point in plan_grid(spec, data.image_size, grid):
        first = trained.get(point.network)
        if first is None:
            result = train_and_evaluate(point.spec, data, dataclasses.replace(config, image_size=point.image_size))
            trial = trained[point.network] = CoefficientTrial(point.coefficients, point.spec, point.image_size, result)
        else:
            trial = CoefficientTrial(point.coefficients, point.spec, point.image_size, first.result,
                                     same_as=first.coefficients)
        trials.append(trial)
        if on_trial is not None:
            on_trial(trial)
    successful = [trial for trial in trials if trial.result.ok]
    best = max(successful, key=lambda trial: trial.result.accuracy, default=None)
    return best, trials


def lead_over_noise(best: float, runner_up: float, holdout_images: int) -> float:
    """The winner's accuracy lead in standard errors of the difference of two accuracies measured on
    ``holdout_images`` hold-out images each (binomial: ``sqrt(p(1-p)/n)`` per accuracy, independent); below 2 the
    two points cannot be told apart on this hold-out.

    Example: 0.951 and 0.942 on 500 images: SEs 0.0097 and 0.0105, of the difference 0.0142; the lead 0.009 is
    0.63 standard errors: inside the noise.
    """
    variance = sum(p * (1 - p) for p in (best, runner_up)) / holdout_images
    if variance == 0:  # both 0 or 1: any lead is certain, and no lead is none
        return math.inf if best > runner_up else 0.0
    return (best - runner_up) / math.sqrt(variance)


def search_and_save_coefficients(
    spec: ArchSpec,
    data_source: str,
    config: TrainConfig,
    directory: Path,
    *,
    grid_step: float,
    on_start: Callable[[list[GridPoint], ImageData], None] | None = None,
    on_trial: Callable[[CoefficientTrial], None] | None = None,
) -> tuple[CoefficientTrial, list[CoefficientTrial]]:
    """``nas scale --search-coefficients``: proxy-trains ``spec`` at every point of a ``grid_step`` grid on the data
    of ``data_source`` and saves the winner as ``directory/coefficients.json``; returns the best point and all.

    A device this machine lacks is refused before the data loads. ``on_start(planned points, data)`` is told once
    the data is loaded, ``on_trial`` after each point. Raises ``ValueError`` when every point failed.
    """
    resolve_device(config.device)
    grid = coefficient_grid(step=grid_step)
    data = load_data(data_source, seed=config.seed)
    if on_start is not None:
        on_start(plan_grid(spec, data.image_size, grid), data)
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
