"""The coefficient search (issue 28): grid points that give one network train once, and the winner's lead is
weighed against the hold-out's noise."""

from __future__ import annotations

import pytest

from nas import coefficient_search
from nas.coefficient_search import distinct_networks, lead_over_noise, plan_grid, search_coefficients
from nas.data import load_data
from nas.recipe import TrainConfig
from nas.records import EvalResult
from nas.scaling import coefficient_grid
from search_spaces import presets


def test_points_that_round_to_one_network_at_one_size_are_trained_once(monkeypatch):
    data = load_data("synthetic:num_images=200,image_size=32")
    grid = coefficient_grid(step=0.1)
    points = plan_grid(presets.get("tiny"), data.image_size, grid)
    assert (len(points), distinct_networks(points)) == (12, 7)  # the tiny backbone's stages are 1-3 blocks deep
    trained = []

    def fake_training(spec, data, config):
        trained.append((spec.block_strings, config.image_size))
        return EvalResult(status="ok", accuracy=0.5 + 0.01 * len(trained), parameters=1000, step_time_s=0.01,
                          wall_time_s=1.0, epochs_completed=1)

    monkeypatch.setattr(coefficient_search, "train_and_evaluate", fake_training)
    best, trials = search_coefficients(presets.get("tiny"), data, TrainConfig(epochs=1), grid)
    assert len(trained) == 7 and len(set(trained)) == 7 and len(trials) == 12
    repeats = [trial for trial in trials if trial.same_as is not None]
    assert len(repeats) == 5
    for repeat in repeats:
        first = next(trial for trial in trials if trial.coefficients == repeat.same_as)
        assert first.same_as is None and first.result is repeat.result
        assert (first.spec.block_strings, first.image_size) == (repeat.spec.block_strings, repeat.image_size)
    assert best.same_as is None and best.result.accuracy == pytest.approx(0.57)  # the last network trained


def test_the_lead_is_counted_in_standard_errors_of_the_difference():
    assert lead_over_noise(0.951, 0.942, 500) == pytest.approx(0.6325, abs=1e-4)  # the docstring's example
    assert lead_over_noise(0.95, 0.85, 10_000) > 20
    assert lead_over_noise(1.0, 1.0, 100) == 0.0  # no variance and no lead
    assert lead_over_noise(1.0, 0.0, 100) == float("inf")
