"""Controllers whose state is rebuilt from the study's finished trials, and what each finished trial teaches.

The RL and evolution controllers keep no state of their own (DESIGN.md, section 2): on every proposal they
replay the study's finished trials in trial-number order, from where their cached state stopped, or from scratch
when the trials no longer extend it (a lower-numbered trial finished late, a new process resumed the study, the
decisions inferred from the study changed). A resumed campaign therefore needs nothing but the database, and a
trial's proposal is the same in any process. :class:`ReplayedSampler` is that machinery; a controller adds its
state, its learning rule and its draw.

Which finished trials teach, and with which reward (:func:`taught_reward`), is the same for every such controller:

* COMPLETE trials, with their value.
* FAIL trials with the user attribute ``interrupted`` set teach nothing: the driver died, the architecture is not to
  blame (the campaign re-enqueues their params).
* Other FAIL trials (out of memory, non-finite loss, an exception) teach ``failed_reward`` (by default 0.0, the
  lowest reward a campaign's candidate can get), so the controller learns to avoid what fails.
* PRUNED trials that a campaign constraint stopped (status ``pruned``: over ``max_step_time_ratio`` or
  ``max_params_ratio``) teach ``failed_reward`` too: to the controller an architecture over a hard limit is as
  bad as one that fails, so it learns to stay under the limits.
* PRUNED trials that successive halving stopped at a rung (status ``stopped``, :mod:`nas.halving`) teach their
  last rung's reward (Optuna's value of a PRUNED trial: its last intermediate value): the best estimate there is of
  what the architecture would have reached, and low, since it was behind the others at that rung.
* Other PRUNED trials (an ordinary Optuna study's pruner) teach nothing: their final value is unknown.
* COMPLETE trials with a non-finite value, and trials whose params are not a member of the decisions (one
  missing, a value outside its choices), teach nothing. RUNNING and WAITING trials are not finished.

Enqueued trials (the backbone, re-enqueued params) teach like any other.
"""

from __future__ import annotations

import abc
import math
import threading
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from nas import records
from nas.controllers.params import DecisionSpace, choice_indices, distributions, inferred_space
from nas.controllers.seeding import attempt_seed, sample_uniform
from nas.states import finished_states
from search_spaces.checks import check_int, check_real

State = TypeVar("State")


def taught_reward(trial: FrozenTrial, failed_reward: float) -> float | None:
    """The reward a finished ``trial`` teaches a controller, or ``None`` if it teaches nothing (module doc)."""
    if trial.state == TrialState.FAIL:
        return None if trial.user_attrs.get(records.INTERRUPTED) else failed_reward
    if trial.state == TrialState.PRUNED:
        status = trial.user_attrs.get(records.STATUS)
        if status == records.STATUS_PRUNED:
            return failed_reward
        if status != records.STATUS_STOPPED:
            return None
    elif trial.state != TrialState.COMPLETE:
        return None
    value = trial.value
    return value if value is not None and math.isfinite(value) else None


@dataclass
class _Replay(Generic[State]):
    """A controller's state and what it is a function of: the decisions and the trials replayed, in order."""

    decisions: tuple[tuple[str, tuple], ...]
    processed: list[int]
    state: State


class ReplayedSampler(BaseSampler, Generic[State]):
    """An Optuna sampler whose state is a function of the study's finished trials, replayed in trial order.

    With a ``space``, the decisions are the space's, asked jointly even before any trial finished (what a
    campaign needs). Without one, they are inferred from the study as Optuna's relative samplers infer them
    (:func:`~nas.controllers.params.inferred_space`: the categorical parameters every COMPLETE trial holds), so the
    sampler works in any study with categorical parameters, define-by-run or ask-and-tell; parameters outside
    the decisions (all of them before the first trial completes, and any non-categorical one) are drawn
    uniformly, each seeded by ``(seed, trial.number, its name)``.

    Samples are drawn with a generator seeded by ``(seed, trial.number)``, so a trial's params do not depend on
    the process; :meth:`propose` draws with any seed, for a wrapper that redraws
    (:class:`~nas.controllers.DistinctSampler`). Only maximizing single-objective studies are accepted: the
    controllers maximize a reward.

    Subclasses give :meth:`_initial_state`, :meth:`_learn` and :meth:`_draw`.
    """

    def __init__(self, space: DecisionSpace | None, *, failed_reward: float, seed: int) -> None:
        check_real("failed_reward", failed_reward)
        check_int("seed", seed, 0)
        self._space = space
        self._failed_reward = float(failed_reward)
        self._seed = seed
        self._replay: _Replay[State] | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """Pickles without the lock (a lock cannot be pickled); the copy gets a fresh one."""
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        """The decisions: the space's, or those inferred from the study."""
        return distributions(self._decision_space(study))

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """Catches up with the study's finished trials, then draws the decisions of ``search_space``."""
        if not search_space:
            return {}
        return self.propose(study, trial, search_space, seed=attempt_seed(self._seed, trial.number, 0))

    def propose(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution], *, seed: int
    ) -> dict[str, Any]:
        """The decisions of ``search_space`` drawn from the state brought up to date, with a generator seeded by
        ``seed`` alone."""
        space = self._decision_space(study)
        with self._lock:
            replay = self._catch_up(study, space)
            # Draw every decision, even one outside ``search_space``, so each trial's stream is the same.
            indices = self._draw(replay.state, space, np.random.default_rng(seed))
        return {
            decision.name: decision.choices[index]
            for decision, index in zip(space.decisions, indices)
            if decision.name in search_space
        }

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        """A parameter outside the decisions is drawn uniformly, seeded by ``(seed, trial.number, its name)``."""
        return sample_uniform(study, trial, param_name, param_distribution, seed=self._seed)

    def update(self, study: Study) -> None:
        """Brings the state up to date with the study's finished trials, replaying them in trial-number order.

        :meth:`sample_relative` does it; call it directly to inspect a study's controller without sampling.
        """
        space = self._decision_space(study)
        with self._lock:
            self._catch_up(study, space)

    def _decision_space(self, study: Study) -> DecisionSpace:
        self._raise_error_if_multi_objective(study)
        if study.direction != StudyDirection.MAXIMIZE:
            raise ValueError(
                f"study direction must be {StudyDirection.MAXIMIZE.name} (the controller maximizes the reward), "
                f"got {study.direction.name}"
            )
        return self._space if self._space is not None else inferred_space(study)

    def _catch_up(self, study: Study, space: DecisionSpace) -> _Replay[State]:
        """The replay extended by the finished trials it has not seen; rebuilt when they do not extend it."""
        decisions = tuple((decision.name, tuple(decision.choices)) for decision in space.decisions)
        finished = sorted(study.get_trials(deepcopy=False, states=finished_states()), key=lambda trial: trial.number)
        replay = self._replay
        if (
            replay is None
            or replay.decisions != decisions
            or [trial.number for trial in finished[: len(replay.processed)]] != replay.processed
        ):
            replay = _Replay(decisions, [], self._initial_state(space))
        for trial in finished[len(replay.processed) :]:
            reward = taught_reward(trial, self._failed_reward)
            indices = choice_indices(space, trial.params)
            if reward is not None and indices is not None:
                self._learn(replay.state, indices, reward)
            replay.processed.append(trial.number)
        self._replay = replay
        return replay

    @abc.abstractmethod
    def _initial_state(self, space: DecisionSpace) -> State:
        """The state before any trial taught."""

    @abc.abstractmethod
    def _learn(self, state: State, indices: tuple[int, ...], reward: float) -> None:
        """Teaches ``state`` that the architecture of choice ``indices`` earned ``reward``."""

    @abc.abstractmethod
    def _draw(self, state: State, space: DecisionSpace, generator: np.random.Generator) -> tuple[int, ...]:
        """One choice index per decision of ``space``, drawn from ``state`` with ``generator``."""
