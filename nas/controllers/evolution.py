"""Regularized evolution (aging evolution, Real et al., 2019), as an Optuna sampler whose population lives in the
study.

The algorithm keeps a population of the last ``population_size`` evaluated architectures. Until it is full, new
architectures are drawn uniformly at random. Then each proposal samples ``sample_size`` members uniformly
without replacement (a tournament), takes the one with the highest reward as the parent, and mutates one of its
decisions, chosen uniformly among those with more than one choice, to a different choice drawn uniformly. When
the child is evaluated it joins the population and the *oldest* member dies, whatever its reward: the aging that
regularizes the search towards architectures that stay good when re-trained (the paper's argument), and that
lets a noisy lucky reward leave the population.

"Evaluated" is replayed from the study (:mod:`nas.controllers.replay`): the population is the last
``population_size`` teaching trials in trial-number order, with the rewards and the handling of FAIL,
interrupted and PRUNED trials that every replayed controller shares. A failed architecture joins the population
with ``failed_reward`` and so is almost never a parent; trial-number order rather than finishing order makes the
population a function of the study alone, so a resumed campaign needs nothing but the database.

Sizes. The paper's ImageNet and CIFAR-10 searches used a population of 100 and a sample of 25 over 20,000
models; NAS-Bench-201's regularized evolution (Dong & Yang, 2020) used 10 and 3 for a budget of about a hundred
evaluations. With a population as large as the budget the search never leaves its random phase, so by default
the population is a tenth of the ``budget`` (the number of trials the search will run), between 10 and 100, and
the sample is a quarter of the population, rounded up: 10 and 3 at 100 trials, 100 and 25 from 1,000 trials, the
two published settings. Without a budget the paper's 100 and 25 apply.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from nas.controllers.params import DecisionSpace
from nas.controllers.replay import ReplayedSampler
from search_spaces.checks import check_int

#: The paper's population and sample sizes (Real et al., 2019).
PAPER_POPULATION_SIZE = 100
PAPER_SAMPLE_SIZE = 25
#: The smallest population the budget scaling gives (NAS-Bench-201's).
MIN_POPULATION_SIZE = 10
#: Trials of the budget per member of the scaled population.
TRIALS_PER_MEMBER = 10


def population_sizes(budget: int | None) -> tuple[int, int]:
    """The default ``(population_size, sample_size)`` for a search of ``budget`` trials (module doc)."""
    if budget is None:
        return PAPER_POPULATION_SIZE, PAPER_SAMPLE_SIZE
    check_int("budget", budget, 1)
    population_size = min(PAPER_POPULATION_SIZE, max(MIN_POPULATION_SIZE, budget // TRIALS_PER_MEMBER))
    return population_size, math.ceil(population_size * PAPER_SAMPLE_SIZE / PAPER_POPULATION_SIZE)


@dataclass
class _Population:
    """The last ``population_size`` teaching trials: ``(choice indices, reward)``, oldest first."""

    members: deque[tuple[tuple[int, ...], float]]
    #: Number of trials taught so far: the random phase lasts until it reaches the population size.
    taught: int = 0


class RegularizedEvolutionSampler(ReplayedSampler[_Population]):
    """Regularized (aging) evolution over categorical decisions, rebuilt from the study's finished trials.

    Works in any maximizing study whose parameters are categorical: with a ``space`` its decisions are evolved;
    without one, those that every complete trial holds (see :class:`~nas.controllers.replay.ReplayedSampler`).

    Args:
        space: The decisions an architecture is made of; ``None`` to infer them from the study.
        population_size: Members of the population (an integer >= 2); default from ``budget`` (module doc).
        sample_size: Members of each tournament (an integer in [1, population_size]); default a quarter of the
            population, rounded up.
        budget: The number of trials the search will run, which scales the default sizes; ``None`` for the
            paper's 100 and 25.
        failed_reward: Reward of a FAIL trial that was not interrupted (finite).
        seed: Seed of the samples (an integer >= 0).
    """

    def __init__(
        self,
        space: DecisionSpace | None = None,
        *,
        population_size: int | None = None,
        sample_size: int | None = None,
        budget: int | None = None,
        failed_reward: float = 0.0,
        seed: int = 0,
    ) -> None:
        check_int("population_size", population_size, 2, optional=True)
        default_population, default_sample = population_sizes(budget)
        self.population_size = default_population if population_size is None else population_size
        if sample_size is None:
            sample_size = min(default_sample, self.population_size)
        check_int("sample_size", sample_size, 1, self.population_size)
        self.sample_size = sample_size
        super().__init__(space, failed_reward=failed_reward, seed=seed)

    def population(self) -> list[tuple[tuple[int, ...], float]]:
        """The current members as ``(choice indices, reward)``, oldest first, after the last update."""
        with self._lock:
            return [] if self._replay is None else list(self._replay.state.members)

    def _initial_state(self, space: DecisionSpace) -> _Population:
        return _Population(members=deque(maxlen=self.population_size))

    def _learn(self, population: _Population, indices: tuple[int, ...], reward: float) -> None:
        """The architecture joins the population; past its size, the oldest member dies."""
        population.members.append((indices, reward))
        population.taught += 1

    def _draw(self, population: _Population, space: DecisionSpace, generator: np.random.Generator) -> tuple[int, ...]:
        """A uniform architecture while the population fills, else the mutated winner of a tournament."""
        radices = [len(decision.choices) for decision in space.decisions]
        if population.taught < self.population_size:
            return tuple(int(generator.integers(radix)) for radix in radices)
        contestants = generator.choice(len(population.members), size=self.sample_size, replace=False)
        parent, _ = max((population.members[int(index)] for index in contestants), key=lambda member: member[1])
        return _mutated(parent, radices, generator)


def _mutated(parent: tuple[int, ...], radices: list[int], generator: np.random.Generator) -> tuple[int, ...]:
    """``parent`` with one decision (of those with a choice to make) changed to another of its choices."""
    mutable = [position for position, radix in enumerate(radices) if radix > 1]
    if not mutable:
        return parent
    position = mutable[int(generator.integers(len(mutable)))]
    offset = 1 + int(generator.integers(radices[position] - 1))
    child = list(parent)
    child[position] = (parent[position] + offset) % radices[position]
    return tuple(child)
