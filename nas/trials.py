"""The trials of a study as a table, its best trials and Pareto front, the ``--filter/--sort`` rule, and a study
read once for the report (:class:`StudySnapshot`).

Shared by ``nas trials``, ``nas best`` and the report, so a column means the same everywhere. Reads only trial
attributes (named in :mod:`nas.records`): no torch. Optuna and pandas are imported by the functions that use them,
not by this module: the ``nas`` command's parser offers :data:`TABLE_COLUMNS` and :data:`FILTER_FIELDS` in its
help, and ``nas --help`` or ``nas show`` should not pay the half second those two take to import. The numbers
are computed elsewhere, from plain values: a reward's factors and noise by :mod:`rewards`, what successive halving
saved by :mod:`nas.halving`; here a trial's attributes are read into those values.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from nas import records
from nas.controller_names import CONTROLLERS
from nas.halving import HalvingSummary, TrialTraining, full_epochs, halving_summary
from nas.states import is_baseline, is_interrupted, is_stopped, stopped_at_epoch
from rewards import RewardFactors, reward_factors, step_time_noise, within_noise
from search_spaces.checks import is_int, is_real
from search_spaces.space import SearchSpace

if TYPE_CHECKING:
    import optuna
    import pandas as pd

TABLE_COLUMNS = (
    "number", "state", "role", "reward", "accuracy", "step_time_ms", "parameters", "macs", "normalized_step_time",
    "normalized_parameters", "architecture", "failure_reason", "controller",
)
INTEGER_COLUMNS = ("number", "parameters", "macs")
# PRUNED: over a campaign constraint, or stopped at a rung by successive halving (the state column says which)
TRIAL_STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
FILTER_FIELDS = {"state": TRIAL_STATES, "controller": CONTROLLERS}
#: The campaign settings (CampaignConfig's fields) that hold the reward's exponents w and v.
EXPONENT_SETTINGS = ("step_time_exponent", "params_exponent")
#: The state column's text for a trial stopped at a rung: ``stopped@3`` (after epoch 3). One word, so that the
#: table's columns still split on white space.
STOPPED_STATE = "stopped"


def trial_state(trial: optuna.trial.FrozenTrial) -> str:
    """The state column: Optuna's state name, or ``stopped@E`` for a trial successive halving stopped after epoch
    E (Optuna's state PRUNED, which ``--filter state=PRUNED`` keeps)."""
    if is_stopped(trial):
        epoch = stopped_at_epoch(trial)
        return STOPPED_STATE if epoch is None else f"{STOPPED_STATE}@{epoch}"
    return trial.state.name


def _optuna_state(state: str) -> str:
    """The Optuna state behind a state column's text (``stopped@3`` is PRUNED)."""
    return "PRUNED" if state.startswith(STOPPED_STATE) else state


def trials_frame(study: optuna.Study, trials: Iterable[optuna.trial.FrozenTrial] | None = None) -> pd.DataFrame:
    """One row per trial under :data:`TABLE_COLUMNS`, in trial order (all the study's trials by default).

    A trial successive halving stopped reads ``stopped@E`` in the state column (:func:`trial_state`); its accuracy
    and reward are those at that rung (epoch E), not after the full training of a complete trial.
    """
    import pandas as pd

    rows = []
    for trial in trials if trials is not None else study.get_trials(deepcopy=False):
        attributes = trial.user_attrs
        step_time = attributes.get(records.STEP_TIME_S)
        rows.append({
            "number": trial.number,
            "state": trial_state(trial),
            "role": attributes.get(records.ROLE, records.ROLE_CANDIDATE),
            "reward": trial.value,
            "accuracy": attributes.get(records.ACCURACY),
            "step_time_ms": None if step_time is None else step_time * 1e3,
            "parameters": attributes.get(records.PARAMETERS),
            "macs": attributes.get(records.MACS),
            "normalized_step_time": attributes.get(records.NORMALIZED_STEP_TIME),
            "normalized_parameters": attributes.get(records.NORMALIZED_PARAMETERS),
            "architecture": " ".join(attributes.get(records.BLOCK_STRINGS, [])),
            "failure_reason": attributes.get(records.FAILURE_REASON),
            "controller": attributes.get(records.CONTROLLER),
        })
    # Counts stay integers where a value is missing (pandas would make the whole column float): "-" in a table,
    # empty in CSV, null in JSON.
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS)).astype({column: "Int64" for column in INTEGER_COLUMNS})


def best_trials(study: optuna.Study, k: int | None = 1) -> list[optuna.trial.FrozenTrial]:
    """The ``k`` complete trials with the highest reward (ties by trial order); all of them, ranked, when None."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return sorted(complete, key=lambda trial: (-trial.value, trial.number))[:k]


def trial_to_export(study: optuna.Study, number: int | None = None) -> optuna.trial.FrozenTrial:
    """Trial ``number`` of the study, or its best when None; refused unless it is complete (it has a reward)."""
    import optuna

    if number is None:
        best = best_trials(study, 1)
        if not best:
            raise ValueError(f"study {study.study_name!r} has no complete trial to export")
        return best[0]
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise ValueError(f"study {study.study_name!r} has no trial {number}; trials are 0..{len(trials) - 1}")
    trial = trials[number]
    if trial.state != optuna.trial.TrialState.COMPLETE:
        state = (f"{trial.state.name} (successive halving stopped it after epoch {stopped_at_epoch(trial)})"
                 if is_stopped(trial) else trial.state.name)
        raise ValueError(f"trial {number} is {state}, not COMPLETE; export a complete trial")
    return trial


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Complete trials that no other beats on accuracy (higher), step time and parameters (lower) at once."""
    import optuna

    complete = [
        trial for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if {records.ACCURACY, records.STEP_TIME_S, records.PARAMETERS} <= set(trial.user_attrs)
    ]

    def objectives(trial: optuna.trial.FrozenTrial) -> tuple[float, float, float]:
        attributes = trial.user_attrs
        return (-attributes[records.ACCURACY], attributes[records.STEP_TIME_S], attributes[records.PARAMETERS])

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    points = {trial.number: objectives(trial) for trial in complete}
    return [
        trial for trial in complete
        if not any(dominates(points[other.number], points[trial.number]) for other in complete)
    ]


def trial_training(trial: optuna.trial.FrozenTrial) -> TrialTraining:
    """What successive halving needs of ``trial`` (:func:`nas.halving.halving_summary`)."""
    epochs = trial.user_attrs.get(records.EPOCHS_COMPLETED)
    stopped = is_stopped(trial)
    return TrialTraining(complete=trial.state.name == "COMPLETE", stopped=stopped,
                         epochs_completed=epochs if is_int(epochs) else None,
                         stopped_at_epoch=stopped_at_epoch(trial) if stopped else None)


@dataclass(frozen=True)
class TrialFactors:
    """A complete trial's reward as the product of its factors (:func:`rewards.reward_factors`), with the median
    and interquartile range of the step time it was measured with and the reward noise that spread implies
    (:func:`rewards.step_time_noise`); None where the trial does not record them."""

    trial: optuna.trial.FrozenTrial
    factors: RewardFactors
    step_time_s: float | None
    step_time_iqr_s: float | None
    noise: float | None

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial, exponents: tuple[float, float]) -> TrialFactors | None:
        """The factors of a complete ``trial`` under the reward's exponents ``(w, v)``; None if it has no reward
        or lacks a valid A, S/S₀ or P/P₀."""
        attributes = trial.user_attrs
        accuracy, step_time_ratio, params_ratio = (attributes.get(key) for key in (
            records.ACCURACY, records.NORMALIZED_STEP_TIME, records.NORMALIZED_PARAMETERS))
        if trial.value is None or not all(map(is_real, (accuracy, step_time_ratio, params_ratio))):
            return None
        w, v = exponents
        try:
            factors = reward_factors(accuracy, step_time_ratio, params_ratio, w=w, v=v)
        except ValueError:  # numbers no reward comes from (a hand-edited study): shown without factors
            return None
        median, iqr = attributes.get(records.STEP_TIME_S), attributes.get(records.STEP_TIME_IQR_S)
        median, iqr = (median if is_real(median) else None), (iqr if is_real(iqr) else None)
        noise = (step_time_noise(trial.value, median, iqr, w=w)
                 if median is not None and median > 0 and iqr is not None and iqr >= 0 else None)
        return cls(trial, factors, median, iqr, noise)

    @property
    def reward(self) -> float:
        return self.trial.value

    def within_noise(self, other: TrialFactors) -> bool | None:
        """Whether the two rewards differ by less than their summed step-time noise (:func:`rewards.within_noise`);
        None when either trial's step-time spread is not recorded."""
        if self.noise is None or other.noise is None:
            return None
        return within_noise(self.reward, self.noise, other.reward, other.noise)


@dataclass(frozen=True)
class CampaignSpan:
    """When a campaign ran: its first trial's start, its last recorded end (while trials run, the last recorded
    start or end; pauses between runs of the search included), the trials' own time summed, and how many run."""

    start: datetime
    end: datetime
    trial_seconds: float
    running: int

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    @classmethod
    def of(cls, trials: Iterable[optuna.trial.FrozenTrial]) -> CampaignSpan | None:
        """The span of ``trials`` from their datetimes; None before any trial started."""
        started = [trial for trial in trials if trial.datetime_start is not None]
        if not started:
            return None
        return cls(
            start=min(trial.datetime_start for trial in started),
            end=max(trial.datetime_complete or trial.datetime_start for trial in started),
            trial_seconds=sum(trial.duration.total_seconds() for trial in started if trial.duration is not None),
            running=sum(trial.state.name == "RUNNING" for trial in started),
        )


@dataclass(frozen=True)
class Preferences:
    """What a campaign's controller prefers now, per decision name and choice: the RL policy's probabilities, or
    the shares of each choice in the evolution controller's current population of ``population`` members."""

    controller: str
    shares: Mapping[str, list[float]]
    population: int | None = None


@dataclass(frozen=True)
class StudySnapshot:
    """A study read once (for the report): its trials, the complete ones by reward (best first), the numbers of
    its Pareto front, and what its attributes record of the campaign."""

    study: optuna.Study
    attributes: Mapping[str, Any]
    trials: tuple[optuna.trial.FrozenTrial, ...]
    ranked: tuple[optuna.trial.FrozenTrial, ...]
    front: frozenset[int]

    @classmethod
    def read(cls, study: optuna.Study) -> StudySnapshot:
        trials = tuple(study.get_trials(deepcopy=False))
        return cls(study, study.user_attrs, trials, tuple(best_trials(study, None)),
                   frozenset(trial.number for trial in pareto_front(study)))

    @property
    def baseline_trial(self) -> optuna.trial.FrozenTrial | None:
        """The trial that evaluated the baseline (the completed one if it was run again)."""
        measured = records.study_baseline(self.attributes)
        recorded = None if measured is None else measured.trial
        baselines = [trial for trial in self.trials if is_baseline(trial)]
        return next((trial for trial in baselines if trial.number == recorded), baselines[0] if baselines else None)

    @property
    def winner(self) -> optuna.trial.FrozenTrial | None:
        """The complete trial with the highest reward: the architecture ``nas export`` writes."""
        return self.ranked[0] if self.ranked else None

    @property
    def candidates(self) -> list[optuna.trial.FrozenTrial]:
        """Complete candidate trials (the baseline excluded), best reward first."""
        return [trial for trial in self.ranked if not is_baseline(trial)]

    def top(self, fraction: float) -> list[optuna.trial.FrozenTrial]:
        """The best ``fraction`` of the complete candidates by reward, rounded up (at least one, when there is
        one)."""
        candidates = self.candidates
        return candidates[:math.ceil(fraction * len(candidates))]

    def proposed(self, space: SearchSpace) -> list[optuna.trial.FrozenTrial]:
        """The candidates the controllers proposed: every candidate trial with all its decisions of ``space``,
        interrupted ones (whose re-run is the same architecture) excluded."""
        return [trial for trial in self.trials if not is_baseline(trial) and not is_interrupted(trial)
                and all(decision.name in trial.params for decision in space.decisions)]

    @property
    def space(self) -> SearchSpace | None:
        data = self.attributes.get(records.SPACE)
        return None if data is None else SearchSpace.from_dict(data)

    @property
    def campaign(self) -> Mapping[str, Any]:
        """The campaign's settings as the study recorded them (its last run's), empty if it records none."""
        return self.attributes.get(records.CAMPAIGN) or {}

    @property
    def exponents(self) -> tuple[float, float] | None:
        """The reward's exponents ``(w, v)`` on S/S₀ and P/P₀: the proxy settings' (fixed for the study's life),
        else the campaign's; None when the study records neither."""
        for settings in (self.attributes.get(records.PROXY) or {}, self.campaign):
            w, v = (settings.get(name) for name in EXPONENT_SETTINGS)
            if is_real(w) and is_real(v):
                return float(w), float(v)
        return None

    @functools.cached_property
    def factors(self) -> list[TrialFactors]:
        """The factors of every complete trial that has them, best reward first (none without exponents)."""
        exponents = self.exponents
        if exponents is None:
            return []
        found = (TrialFactors.of(trial, exponents) for trial in self.ranked)
        return [factors for factors in found if factors is not None]

    @property
    def rungs(self) -> tuple[int, ...]:
        """The epochs any trial reported its reward at (``trial.report``): the rungs of successive halving."""
        return tuple(sorted({epoch for trial in self.trials for epoch in trial.intermediate_values}))

    @property
    def has_curves(self) -> bool:
        """Whether any trial reported a reward at a rung: a campaign with successive halving."""
        return bool(self.rungs)

    @property
    def full_epochs(self) -> int | None:
        """The epochs of a full proxy training (:func:`nas.halving.full_epochs`)."""
        configured = (self.campaign.get("train") or {}).get("epochs")
        return full_epochs(configured, map(trial_training, self.ranked))

    @functools.cached_property
    def halving(self) -> HalvingSummary | None:
        """What successive halving stopped and saved; None when no trial reported a rung or was stopped at one."""
        if not self.has_curves and not any(map(is_stopped, self.trials)):
            return None
        scheduler = self.campaign.get("scheduler")
        reduction_factor = scheduler.get("reduction_factor") if isinstance(scheduler, Mapping) else None
        return halving_summary(map(trial_training, self.trials), epochs=self.full_epochs, rungs=self.rungs,
                               reduction_factor=reduction_factor if is_real(reduction_factor) else None)

    def preferences(self, space: SearchSpace) -> Preferences | None:
        """What the campaign's controller prefers now over the decisions of ``space``, rebuilt from the study as
        the controller itself rebuilds it; None for other controllers (they keep no preferences) and for an
        evolution with no population yet."""
        controller = self.campaign.get("controller")
        if controller == "rl":
            from nas.controllers import PolicyGradientSampler

            policy = PolicyGradientSampler(space)
            policy.update(self.study)
            probabilities = policy.policy_probabilities()
            return Preferences(controller, {decision.name: [probabilities[decision.name][choice]
                                                            for choice in decision.choices]
                                            for decision in space.decisions})
        if controller == "evolution":
            from nas.controllers import RegularizedEvolutionSampler

            budget = self.campaign.get("trials")
            evolution = RegularizedEvolutionSampler(space, budget=budget if is_int(budget) else None)
            evolution.update(self.study)
            members = [indices for indices, _ in evolution.population()]
            if not members:
                return None
            return Preferences(controller, {
                decision.name: [sum(indices[position] == index for indices in members) / len(members)
                                for index in range(len(decision.choices))]
                for position, decision in enumerate(space.decisions)}, len(members))
        return None

    @property
    def span(self) -> CampaignSpan | None:
        return CampaignSpan.of(self.trials)

    def failures(self) -> list[tuple[str, list[optuna.trial.FrozenTrial]]]:
        """Failed trials grouped by the kind of their reason (the text before the first colon: ``out of
        memory``, ...), the largest group first."""
        groups: dict[str, list[optuna.trial.FrozenTrial]] = {}
        for trial in self.trials:
            if trial.state.name == "FAIL":
                reason = trial.user_attrs.get(records.FAILURE_REASON) or "no reason recorded"
                groups.setdefault(reason.split(":", 1)[0], []).append(trial)
        return sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))


@dataclass(frozen=True)
class TrialQuery:
    """Which rows of a trials table to show, in which order; validated on construction.

    ``filters`` maps a field of :data:`FILTER_FIELDS` to the values it may take: filters on different fields must
    all hold, values of one field are alternatives. ``sort`` is a column of :data:`TABLE_COLUMNS`; sorting
    is stable (ties keep their order) and puts missing values last, also with ``descending``.
    """

    filters: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    sort: str | None = None
    descending: bool = False

    def __post_init__(self) -> None:
        for name, values in self.filters.items():
            if name not in FILTER_FIELDS:
                raise ValueError(f"--filter: unknown field {name!r}; allowed fields are {', '.join(FILTER_FIELDS)}")
            unknown = sorted(set(values) - set(FILTER_FIELDS[name]))
            if unknown:
                allowed = ", ".join(FILTER_FIELDS[name])
                raise ValueError(f"--filter {name}: must be one of {allowed}, got {unknown[0]!r}")
        if self.sort is not None and self.sort not in TABLE_COLUMNS:
            raise ValueError(f"--sort: unknown column {self.sort!r}; columns are {', '.join(TABLE_COLUMNS)}")
        if self.descending and self.sort is None:
            raise ValueError("--descending orders by a column: give --sort COLUMN as well")

    @classmethod
    def parse(cls, filters: Sequence[str] = (), sort: str | None = None, descending: bool = False) -> TrialQuery:
        """From ``FIELD=VALUE`` texts as typed on the command line; states and controllers in any case."""
        chosen: dict[str, set[str]] = {}
        for text in filters:
            name, separator, value = (part.strip() for part in text.partition("="))
            if not separator or not name or not value:
                raise ValueError(f"--filter must be FIELD=VALUE with FIELD one of {', '.join(FILTER_FIELDS)} "
                                 f"(e.g. state=COMPLETE), got {text!r}")
            chosen.setdefault(name.lower(), set()).add(value.upper() if name.lower() == "state" else value.lower())
        return cls({name: frozenset(values) for name, values in chosen.items()}, sort, descending)

    def apply(self, frame: pd.DataFrame, limit: int | None = None) -> pd.DataFrame:
        """The rows of ``frame`` that pass every filter, the first ``limit`` of them, then sorted."""
        for name, values in self.filters.items():
            column = frame[name].map(_optuna_state) if name == "state" else frame[name]
            frame = frame[column.isin(values)]
        if limit is not None:
            frame = frame.head(limit)
        if self.sort is not None:
            frame = frame.sort_values(self.sort, ascending=not self.descending, kind="stable", na_position="last")
        return frame.reset_index(drop=True)
