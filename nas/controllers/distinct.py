"""One architecture, one trial: the wrapper every controller runs in, so a study never evaluates a candidate twice.

A resumed campaign asked its controllers again with the same seed and got the architectures of its first trials
once more; an interrupted architecture ran twice more instead of once (issue 11, point 2). The cure has two
halves, applied to every controller by :func:`~nas.controllers.make_sampler`:

* Every draw is seeded by ``(seed, trial.number, attempt)`` (:mod:`nas.controllers.seeding`), so a trial's params
  depend on the study and its number, not on the process.
* :class:`DistinctSampler` rejects a proposal whose architecture a trial of the study already holds and draws
  again (a few attempts from the controller, then uniformly among the architectures nobody holds), unless every
  architecture is taken: then it repeats one, and :func:`space_exhausted` says so to the campaign.

An architecture is *taken* once any trial of the study holds all of its decisions, whatever the trial's state:
COMPLETE, PRUNED, FAIL, RUNNING, or WAITING (enqueued, its params in the trial's ``fixed_params``). Interrupted
failures count too: the campaign re-runs those itself, exactly once, by enqueueing them, and a controller that
drew one again (before that re-run is enqueued, or after the re-run was itself interrupted) would run it more.
Enqueued trials keep their params: Optuna suggests fixed params before asking the sampler.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any, Protocol

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial

from nas.controllers.params import DecisionSpace, choice_indices, distributions
from nas.controllers.seeding import attempt_seed, sample_uniform
from search_spaces.checks import check_int

_logger = logging.getLogger(__name__)

# The system attribute in which ``Study.enqueue_trial`` keeps a trial's given params (Optuna's own key).
_FIXED_PARAMS_ATTR = "fixed_params"


class Proposer(Protocol):
    """What :class:`DistinctSampler` draws architectures from: a controller that proposes from a given seed."""

    def propose(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution], *, seed: int
    ) -> dict[str, Any]:
        """A value for every parameter of ``search_space``, from randomness seeded by ``seed`` alone."""


class DistinctSampler(BaseSampler):
    """An Optuna sampler that proposes, for each trial, an architecture no trial of the study holds yet.

    The space's decisions are sampled jointly (the relative search space is :func:`distributions` of the
    space); a trial's draw ``k`` is ``proposer.propose(..., seed=attempt_seed(seed, trial.number, k))``. A
    proposal whose architecture is taken (see the module doc) is drawn again, up to ``attempts`` proposals;
    then the architecture is drawn uniformly among those not taken. That draw is exact and cheap for any size
    of space (10^20 architectures included): the untaken architectures are numbered in mixed radix and the
    k-th is found by stepping over the sorted numbers of the taken ones, in O(T log T) for T trials. When every
    architecture is taken the first proposal is kept, a repeat, and a warning is logged;
    :func:`space_exhausted` lets a campaign see it coming.

    Enqueued trials keep their params: Optuna suggests them without asking the sampler. When only some
    decisions were enqueued, the free ones are drawn so that the whole architecture is not taken.

    Distinct for one asker at a time (the campaign's driver); concurrent asks may race to the same architecture.

    Args:
        space: The decisions that make an architecture: a search space, or any
            :class:`~nas.controllers.params.DecisionSpace`.
        proposer: The controller that proposes: a :class:`~nas.controllers.PolicyGradientSampler`, or an
            :class:`~nas.controllers.optuna_samplers.OptunaProposer` for Optuna's samplers.
        seed: Seed of every draw (an integer >= 0).
        attempts: Proposals drawn from ``proposer`` for a trial before the uniform draw among untaken
            architectures (an integer >= 1).
    """

    def __init__(self, space: DecisionSpace, proposer: Proposer, *, seed: int = 0, attempts: int = 8) -> None:
        check_int("seed", seed, 0)
        check_int("attempts", attempts, 1)
        self._space = space
        self._decisions = space.decisions
        self._distributions = distributions(space)
        self._proposer = proposer
        self._seed = seed
        self._attempts = attempts

    @property
    def proposer(self) -> Proposer:
        """The wrapped controller (the RL policy is read from it)."""
        return self._proposer

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        """Every decision of the space: an architecture is drawn as a whole."""
        return dict(self._distributions)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """The proposer's first proposal whose architecture is not taken, else a uniform untaken one."""
        fixed = trial.system_attrs.get(_FIXED_PARAMS_ATTR, {})
        free = [name for name in search_space if name not in fixed]
        if not free:
            return {}
        taken = taken_architectures(study, self._space)
        first: dict[str, Any] | None = None
        for attempt in range(self._attempts):
            proposal = self._proposer.propose(
                study, trial, search_space, seed=attempt_seed(self._seed, trial.number, attempt)
            )
            architecture = choice_indices(self._space, {**proposal, **fixed})
            if architecture is None or architecture not in taken:
                return {name: proposal[name] for name in free}
            if first is None:
                first = proposal
        # Every proposal was a taken architecture of the space, so the enqueued values are choices of it.
        fixed_positions = {
            position: index
            for position, (decision, index) in enumerate(zip(self._decisions, architecture))
            if decision.name in fixed
        }
        untaken = self._untaken_architecture(trial, fixed_positions, taken)
        if untaken is None:
            _logger.warning(
                f"trial {trial.number}: every architecture of the space {self._space.name!r} that the trial may "
                "take is already in the study; proposing a repeat"
            )
            return {name: first[name] for name in free}
        return untaken

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        """A parameter outside the space is drawn uniformly, seeded by ``(seed, trial.number, its name)``."""
        return sample_uniform(study, trial, param_name, param_distribution, seed=self._seed)

    def _untaken_architecture(
        self, trial: FrozenTrial, fixed_positions: dict[int, int], taken: set[tuple[int, ...]]
    ) -> dict[str, Any] | None:
        """A uniform draw among the untaken architectures that agree with the enqueued decisions; ``None`` if
        there is none. Seeded by the attempt after the last proposal."""
        free = [position for position in range(len(self._decisions)) if position not in fixed_positions]
        radices = [len(self._decisions[position].choices) for position in free]
        taken_ranks = sorted(
            {
                _rank([architecture[position] for position in free], radices)
                for architecture in taken
                if all(architecture[position] == index for position, index in fixed_positions.items())
            }
        )
        available = math.prod(radices) - len(taken_ranks)
        if available == 0:
            return None
        rank = random.Random(attempt_seed(self._seed, trial.number, self._attempts)).randrange(available)
        for taken_rank in taken_ranks:  # the rank-th untaken number: step over each taken one at or below it
            if taken_rank > rank:
                break
            rank += 1
        indices = []
        for radix in reversed(radices):
            rank, index = divmod(rank, radix)
            indices.append(index)
        return {
            self._decisions[position].name: self._decisions[position].choices[index]
            for position, index in zip(free, reversed(indices))
        }


def taken_architectures(study: Study, space: DecisionSpace) -> set[tuple[int, ...]]:
    """The architectures (choice indices, as :func:`choice_indices`) that trials of ``study`` hold, any state.

    A trial's architecture is its params over its enqueued ``fixed_params``, so a WAITING trial counts; a trial
    holding only some decisions (a driver that died while asking) or values outside the space holds none.
    """
    taken = set()
    for trial in study.get_trials(deepcopy=False):
        architecture = choice_indices(space, {**trial.system_attrs.get(_FIXED_PARAMS_ATTR, {}), **trial.params})
        if architecture is not None:
            taken.add(architecture)
    return taken


def space_exhausted(study: Study, space: DecisionSpace) -> bool:
    """Whether every architecture of ``space`` is taken in ``study``, so the next controller trial repeats one.

    A campaign calls it before asking a controller trial (not an enqueued one) and stops the search, saying so.
    """
    return len(taken_architectures(study, space)) >= space.size


def _rank(indices: list[int], radices: list[int]) -> int:
    """The number of ``indices`` in mixed radix ``radices``, the first index the most significant."""
    rank = 0
    for index, radix in zip(indices, radices):
        rank = rank * radix + index
    return rank
