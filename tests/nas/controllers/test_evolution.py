"""Regularized evolution: sizes scaled to the budget, aging, tournaments and one-decision mutations, and what
finished trials teach it (issue 14)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from nas.controllers import CategoricalSpace, RegularizedEvolutionSampler, distributions, make_sampler
from nas.controllers.evolution import population_sizes

pytestmark = pytest.mark.usefixtures("quiet_optuna")

SPACE = CategoricalSpace.from_choices("grid", {"a": [0, 1, 2, 3], "b": ["x", "y", "z"], "c": [True, False], "d": [7]})


def finished(params: dict, value: float | None = None, *, state=TrialState.COMPLETE, **user_attrs):
    return create_trial(state=state, value=value, params=params, distributions=distributions(SPACE),
                        user_attrs=user_attrs)


def every_architecture() -> list[dict]:
    return [{"a": a, "b": b, "c": c, "d": 7} for a in range(4) for b in "xyz" for c in (True, False)]


def study_of(trials) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for trial in trials:
        study.add_trial(trial)
    return study


def population_after(trials, **options) -> list[tuple[tuple[int, ...], float]]:
    sampler = RegularizedEvolutionSampler(SPACE, **options)
    sampler.update(study_of(trials))
    return sampler.population()


@pytest.mark.parametrize(
    ("budget", "sizes"),
    [(None, (100, 25)), (1, (10, 3)), (50, (10, 3)), (100, (10, 3)), (200, (20, 5)), (450, (45, 12)),
     (1000, (100, 25)), (20_000, (100, 25))],
)
def test_the_sizes_scale_with_the_budget_between_the_two_published_settings(budget, sizes):
    assert population_sizes(budget) == sizes
    sampler = RegularizedEvolutionSampler(SPACE, budget=budget)
    assert (sampler.population_size, sampler.sample_size) == sizes


def test_given_sizes_win_over_the_budget_and_a_sample_never_exceeds_the_population():
    sampler = RegularizedEvolutionSampler(SPACE, population_size=4, budget=1000)
    assert (sampler.population_size, sampler.sample_size) == (4, 4)
    sampler = RegularizedEvolutionSampler(SPACE, population_size=30, sample_size=2)
    assert (sampler.population_size, sampler.sample_size) == (30, 2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"population_size": 1}, "population_size must be an integer >= 2 or None, got 1"),
        ({"population_size": 5, "sample_size": 6}, r"sample_size must be an integer in \[1, 5\], got 6"),
        ({"sample_size": 0}, r"sample_size must be an integer in \[1, 100\], got 0"),
        ({"budget": 0}, "budget must be an integer >= 1, got 0"),
        ({"budget": 2.5}, "budget must be an integer >= 1, got 2.5"),
        ({"failed_reward": float("inf")}, "failed_reward must be a finite number, got inf"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ],
)
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        RegularizedEvolutionSampler(SPACE, **options)


def test_make_sampler_scales_evolution_to_the_budget_and_refuses_a_budget_option():
    assert make_sampler("evolution", SPACE, budget=300).proposer.population_size == 30
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['population_sizes'\]; allowed options are "
                                         r"\['population_size', 'sample_size', 'failed_reward'\]"):
        make_sampler("evolution", SPACE, population_sizes=3)


def test_the_oldest_member_dies_whatever_its_reward():
    architectures = every_architecture()
    trials = [finished(params, 1.0 if index == 0 else 0.1 * index) for index, params in enumerate(architectures[:7])]
    population = population_after(trials, population_size=4)
    # Trials 3-6 remain, in trial order: trial 0, the best, aged out.
    assert [reward for _, reward in population] == pytest.approx([0.3, 0.4, 0.5, 0.6])
    assert population[0][0] == (0, 1, 1, 0)  # architecture 3: a=0, b=y, c=False, d=7


def test_failed_trials_join_with_the_failed_reward_and_interrupted_or_pruned_ones_do_not():
    architectures = every_architecture()
    trials = [
        finished(architectures[0], 0.5),
        finished(architectures[1], state=TrialState.FAIL, reason="out of memory"),
        finished(architectures[2], state=TrialState.FAIL, interrupted=True),
        finished(architectures[3], state=TrialState.PRUNED),
        create_trial(value=0.9, params=dict(architectures[4], a=9),  # outside the space
                     distributions=dict(distributions(SPACE), a=optuna.distributions.CategoricalDistribution((0, 9)))),
        finished(architectures[5], float("inf")),
        finished(architectures[6], 0.7),
    ]
    population = population_after(trials, failed_reward=0.05)
    assert [reward for _, reward in population] == [0.5, 0.05, 0.7]


def test_until_the_population_is_full_proposals_are_uniform_then_mutations_of_the_best_contestant():
    """With the sample as large as the population, the tournament always picks the best member: every proposal
    is then that member with exactly one decision changed (``d`` has one choice and never changes)."""
    architectures = every_architecture()
    rewards = [0.2, 0.9, 0.4, 0.1, 0.3]
    sampler = RegularizedEvolutionSampler(SPACE, population_size=5, sample_size=5, seed=3)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for params, reward in zip(architectures[:4], rewards):
        study.add_trial(finished(params, reward))
    early = {tuple(study.ask(fixed_distributions=distributions(SPACE)).params.values()) for _ in range(30)}
    assert len(early) > 6  # the random phase: four members taught, a fifth needed
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for params, reward in zip(architectures[:5], rewards):
        study.add_trial(finished(params, reward))
    best = architectures[1]
    for _ in range(40):
        child = study.ask(fixed_distributions=distributions(SPACE)).params
        changed = [name for name in best if child[name] != best[name]]
        assert len(changed) == 1 and changed != ["d"]
