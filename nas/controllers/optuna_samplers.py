"""Optuna's own samplers (RandomSampler, TPESampler) seeded per trial, as every controller here is.

An Optuna sampler holds a random state seeded once per object, so a new process resuming a study replays the
stream of the first one: trial 40 of the resumed run got the params of trial 0 (issue 11, point 2). Building the
sampler afresh for each draw, seeded by ``(seed, trial.number)`` (:mod:`nas.controllers.seeding`), is the public
way to seed it per trial. :class:`OptunaProposer` does that for :class:`~nas.controllers.DistinctSampler`;
:class:`TrialSeededSampler` does it in a plain Optuna study.

Trials successive halving stopped (PRUNED, status ``stopped``, their intermediate values the rung rewards) reach
TPE by Optuna's own rule (``optuna.samplers._tpe.sampler._split_trials``): its good ("below") group takes the best
COMPLETE trials first and fills any room left with PRUNED ones, ranked by the last step they reached (later is
better), then by the value there; so a stopped trial counts as worse than every complete one and better than one
stopped at an earlier rung. Constraint-PRUNED trials (no intermediate value) rank below those. RandomSampler
ignores finished trials altogether.
"""

from __future__ import annotations

from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial

from nas.controllers.seeding import attempt_seed, parameter_seed


class OptunaProposer:
    """Proposals of an Optuna sampler class, built afresh for each seed: ``sampler_class(seed=seed, **options)``.

    Optuna's samplers hold a random state seeded once per object (RandomSampler's; TPESampler's and its start-up
    RandomSampler's), so a new process replays the same stream. Building the sampler per draw is the public way
    to seed it per trial; TPE loses nothing by it, since it fits its Parzen estimators to the study on every
    call anyway (only its intersection search space is recomputed over the study's trials).
    """

    def __init__(self, sampler_class: type[BaseSampler], **options: Any) -> None:
        self._sampler_class = sampler_class
        self._options = options

    def sampler(self, seed: int) -> BaseSampler:
        """The sampler that draws the proposal of ``seed``."""
        return self._sampler_class(seed=seed, **self._options)

    def propose(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution], *, seed: int
    ) -> dict[str, Any]:
        """The sampler's relative (joint) sample where it has one, its independent samples for the rest."""
        sampler = self.sampler(seed)
        relative_space = {
            name: distribution
            for name, distribution in sampler.infer_relative_search_space(study, trial).items()
            if name in search_space
        }
        params = dict(sampler.sample_relative(study, trial, relative_space))
        for name, distribution in search_space.items():
            if name not in params:
                params[name] = sampler.sample_independent(study, trial, name, distribution)
        return params


class TrialSeededSampler(BaseSampler):
    """An Optuna sampler whose every draw comes from a fresh ``proposer.sampler``, seeded by the trial's number.

    Its proposals are the wrapped sampler's, but a function of ``(seed, the study, trial.number)`` alone: a study
    resumed in a new process gets the proposals the first process would have made.
    """

    def __init__(self, proposer: OptunaProposer, *, seed: int) -> None:
        self._proposer = proposer
        self._seed = seed

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        """The wrapped sampler's relative search space (it does not depend on the seed)."""
        return self._proposer.sampler(self._seed).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """The wrapped sampler's joint sample, seeded by ``(seed, trial.number)``."""
        sampler = self._proposer.sampler(attempt_seed(self._seed, trial.number, 0))
        return sampler.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        """The wrapped sampler's sample of one parameter, seeded by ``(seed, trial.number, its name)``."""
        sampler = self._proposer.sampler(parameter_seed(self._seed, trial.number, param_name))
        return sampler.sample_independent(study, trial, param_name, param_distribution)
