"""The trials of a study as a table, its best trials and Pareto front, the ``--filter/--sort`` rule, and a study
read once for the report (:class:`StudySnapshot`).

Shared by ``nas trials``, ``nas best`` and the report, so a column means the same everywhere. Reads only trial
attributes (named in :mod:`nas.records`): no torch. Optuna and pandas are imported by the functions that use them,
not by this module: the ``nas`` command's parser offers :data:`TABLE_COLUMNS` and :data:`FILTER_FIELDS` in its
help, and ``nas --help`` or ``nas show`` should not pay the half second those two take to import. The numbers
are computed elsewhere, from plain values: a reward's factors and noise by :mod:`rewards`, what successive halving
saved by :mod:`nas.halving`; here a trial's attributes are read into those values.

One step-time story: a trial's step time is S/S₀, its ratio to the baseline's, estimated from timed windows
interleaved with a baseline re-timed beside it (:mod:`nas.timing`). The absolute step time in ms is that of those
windows, at the campaign's timing settings: it moves with the machine's load from one trial to the next, so one
trial's ms compares with its own re-timed baseline's (``reference_step_time_ms``), never with another trial's.
S/S₀ is what ranks trials, here (the Pareto front), in the report and in ``nas trials``.
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
from rewards import (
    RewardFactors,
    accuracy_standard_error,
    noise_margin,
    reward_factors,
    reward_noise,
    within_noise,
)
from search_spaces.checks import is_int, is_real
from search_spaces.space import SearchSpace

if TYPE_CHECKING:
    import optuna
    import pandas as pd

#: Every column of the trials table, as CSV and JSON give it (new columns go last: scripts read CSV by position).
#: ``step_time_ratio`` is S/S₀ (:func:`step_time_ratio`), ``step_time_ratio_iqr`` the spread of the timed pairs it
#: was estimated from. ``normalized_step_time`` is the S/S₀ the reward used: the same number wherever there is a
#: reward. ``step_time_ms`` is the trial's step time at the timing settings, measured beside its own re-timed
#: baseline's ``reference_step_time_ms``: compare the two, not one trial's ms with another's.
#: ``step_time_ratio_low``/``_high`` are S/S₀'s 95% interval and ``step_time_stopped_by`` why its measurement
#: ended (``cap`` or ``contention``: imprecise; :data:`nas.records.STOPPED_BY`).
TABLE_COLUMNS = (
    "number", "state", "role", "reward", "accuracy", "step_time_ms", "parameters", "macs", "normalized_step_time",
    "normalized_parameters", "architecture", "failure_reason", "controller", "step_time_ratio",
    "step_time_ratio_iqr", "reference_step_time_ms", "step_time_ratio_low", "step_time_ratio_high",
    "step_time_stopped_by",
)
#: The columns of the text table (:func:`text_table`): what ranks a trial, S/S₀ for its step time, so that it fits
#: a terminal (under 90 characters); the failure reason follows where some trial has one. The absolute ms, the
#: architecture and the rest are in CSV and JSON.
TEXT_COLUMNS = ("number", "state", "role", "controller", "reward", "accuracy", "step_time_ratio", "parameters")
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


def step_time_ratio(attributes: Mapping[str, Any]) -> Any:
    """A trial's S/S₀: its paired ratio to the baseline (``step_time_ratio``, also on a trial pruned over
    max_step_time_ratio), else the normalized step time its reward used (a study written before S/S₀ was timed in
    pairs, where it is the ratio of the two medians); None where neither is recorded."""
    ratio = attributes.get(records.STEP_TIME_RATIO)
    return ratio if ratio is not None else attributes.get(records.NORMALIZED_STEP_TIME)


def reference_step_time_s(attributes: Mapping[str, Any]) -> Any:
    """The baseline's step time in the windows a trial was timed beside (its re-timed baseline), as the trial
    recorded it (:attr:`nas.records.EvalResult.reference_step_time_s`); None where it records none."""
    return attributes.get(records.REFERENCE_STEP_TIME_S)


def _milliseconds(seconds: Any) -> float | None:
    return seconds * 1e3 if is_real(seconds) else None


def _interval(attributes: Mapping[str, Any], ratio: float) -> tuple[float, float] | None:
    """S/S₀'s recorded 95% interval when it is two positive numbers around the ratio the reward used, else None."""
    low, high = attributes.get(records.STEP_TIME_RATIO_LOW), attributes.get(records.STEP_TIME_RATIO_HIGH)
    if is_real(low) and is_real(high) and 0 < low <= ratio <= high:
        return float(low), float(high)
    return None


def trials_frame(study: optuna.Study, trials: Iterable[optuna.trial.FrozenTrial] | None = None) -> pd.DataFrame:
    """One row per trial under :data:`TABLE_COLUMNS`, in trial order (all the study's trials by default).

    A trial successive halving stopped reads ``stopped@E`` in the state column (:func:`trial_state`); its accuracy
    and reward are those at that rung (epoch E), not after the full training of a complete trial.
    """
    import pandas as pd

    rows = []
    for trial in trials if trials is not None else study.get_trials(deepcopy=False):
        attributes = trial.user_attrs
        rows.append({
            "number": trial.number,
            "state": trial_state(trial),
            "role": attributes.get(records.ROLE, records.ROLE_CANDIDATE),
            "reward": trial.value,
            "accuracy": attributes.get(records.ACCURACY),
            "step_time_ms": _milliseconds(attributes.get(records.STEP_TIME_S)),
            "parameters": attributes.get(records.PARAMETERS),
            "macs": attributes.get(records.MACS),
            "normalized_step_time": attributes.get(records.NORMALIZED_STEP_TIME),
            "normalized_parameters": attributes.get(records.NORMALIZED_PARAMETERS),
            "architecture": " ".join(attributes.get(records.BLOCK_STRINGS, [])),
            "failure_reason": attributes.get(records.FAILURE_REASON),
            "controller": attributes.get(records.CONTROLLER),
            "step_time_ratio": step_time_ratio(attributes),
            "step_time_ratio_iqr": attributes.get(records.STEP_TIME_RATIO_IQR),
            "reference_step_time_ms": _milliseconds(reference_step_time_s(attributes)),
            "step_time_ratio_low": attributes.get(records.STEP_TIME_RATIO_LOW),
            "step_time_ratio_high": attributes.get(records.STEP_TIME_RATIO_HIGH),
            "step_time_stopped_by": attributes.get(records.STEP_TIME_STOPPED_BY),
        })
    # Counts stay integers where a value is missing (pandas would make the whole column float): "-" in a table,
    # empty in CSV, null in JSON.
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS)).astype({column: "Int64" for column in INTEGER_COLUMNS})


def text_table(frame: pd.DataFrame) -> str:
    """The rows of ``frame`` (:func:`trials_frame`) as the text table of ``nas trials`` and ``nas best``: the
    :data:`TEXT_COLUMNS`, numbers to 4 significant digits, missing values as ``-``; where some trial has a failure
    reason, each row's follows it, left-aligned (a column of None on every row says nothing, and a long reason
    right-aligned would push every row as wide as the longest)."""
    shown = frame[list(TEXT_COLUMNS)]
    # pandas prints a missing integer as <NA> whatever na_rep says: such cells become "-" here.
    integers = [column for column in shown.columns if str(shown[column].dtype) == "Int64"]
    shown = shown.astype({column: object for column in integers}).fillna({column: "-" for column in integers})
    lines = shown.to_string(index=False, na_rep="-", float_format=lambda value: f"{value:.4g}").splitlines()
    reasons = frame["failure_reason"]
    if reasons.notna().any():
        lines = [f"{line}  {reason}" for line, reason in zip(lines, ["failure_reason", *reasons.fillna("-")])]
    return "\n".join(lines)


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
    """Complete trials that no other beats on accuracy (higher), step time S/S₀ and parameters (lower) at once.

    The step time is the normalized one the reward used: each trial's absolute step time was measured under the
    load of its own moment, so only its ratio to the baseline timed beside it compares across trials."""
    import optuna

    measured = (records.ACCURACY, records.NORMALIZED_STEP_TIME, records.PARAMETERS)
    complete = [
        trial for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if all(is_real(trial.user_attrs.get(key)) for key in measured)
    ]

    def objectives(trial: optuna.trial.FrozenTrial) -> tuple[float, float, float]:
        accuracy, ratio, parameters = (trial.user_attrs[key] for key in measured)
        return -accuracy, ratio, parameters

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
    """A complete trial's reward as the product of its factors (:func:`rewards.reward_factors`), with what its
    noise is made of: S/S₀'s 95% interval (``step_time_ratio_interval``; None for trials timed before S/S₀ had one)
    or else the interquartile range of the timed pairs it was estimated from, the binomial standard error of its
    accuracy A on the campaign's hold-out images, and the reward's standard error δ they imply
    (:func:`rewards.reward_noise`); None where the trial or the study does not record them."""

    trial: optuna.trial.FrozenTrial
    factors: RewardFactors
    step_time_ratio_iqr: float | None
    accuracy_error: float | None
    noise: float | None
    step_time_ratio_interval: tuple[float, float] | None = None

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial, exponents: tuple[float, float],
           holdout_images: int | None = None) -> TrialFactors | None:
        """The factors of a complete ``trial`` under the reward's exponents ``(w, v)``, its accuracy counted on
        ``holdout_images`` (None: unknown); None if it has no reward or lacks a valid A, S/S₀ or P/P₀."""
        attributes = trial.user_attrs
        accuracy, ratio, params_ratio = (attributes.get(key) for key in (
            records.ACCURACY, records.NORMALIZED_STEP_TIME, records.NORMALIZED_PARAMETERS))
        if trial.value is None or not all(map(is_real, (accuracy, ratio, params_ratio))):
            return None
        w, v = exponents
        try:
            factors = reward_factors(accuracy, ratio, params_ratio, w=w, v=v)
        except ValueError:  # numbers no reward comes from (a hand-edited study): shown without factors
            return None
        iqr = attributes.get(records.STEP_TIME_RATIO_IQR)
        iqr = float(iqr) if is_real(iqr, 0) else None
        interval = _interval(attributes, ratio)
        accuracy_error = None if holdout_images is None else accuracy_standard_error(accuracy, holdout_images)
        noise = None
        if (iqr is not None or interval is not None) and holdout_images is not None:
            noise = reward_noise(accuracy, ratio, params_ratio, holdout_images=holdout_images,
                                 step_time_ratio_interval=interval, step_time_ratio_iqr=iqr, w=w, v=v)
        return cls(trial, factors, iqr, accuracy_error, noise, interval)

    @property
    def reward(self) -> float:
        return self.trial.value

    def noise_margin(self, other: TrialFactors) -> float | None:
        """The least reward difference from ``other`` outside their noise (:func:`rewards.noise_margin`); None when
        either noise is unknown."""
        if self.noise is None or other.noise is None:
            return None
        return noise_margin(self.noise, other.noise)

    def within_noise(self, other: TrialFactors) -> bool | None:
        """Whether the two rewards differ by less than their noise margin (:func:`rewards.within_noise`); None
        when either noise is unknown."""
        if self.noise is None or other.noise is None:
            return None
        return within_noise(self.reward, self.noise, other.reward, other.noise)


@dataclass(frozen=True)
class Holdout:
    """The hold-out split a campaign counted every accuracy on: ``images`` of its data source ``data``, as the study
    records it (``source_images`` None), else counted now: ``val_fraction`` of the ``source_images`` of the source
    (:func:`nas.sources.holdout_count`)."""

    images: int
    source_images: int | None
    val_fraction: float
    data: str


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

    @property
    def data_settings(self) -> tuple[str, float, int | None] | None:
        """The campaign's data source, val_fraction and training image size (None: the data's own): the proxy
        settings' (fixed for the study's life), else the campaign's; None when the study records neither."""
        for settings in (self.attributes.get(records.PROXY) or {}, self.campaign):
            data, val_fraction = settings.get("data"), settings.get("val_fraction")
            if isinstance(data, str) and is_real(val_fraction, 0, 1, low_open=True):
                train = settings.get("train")
                image_size = train.get("image_size") if isinstance(train, Mapping) else None
                return data, float(val_fraction), image_size if is_int(image_size, 1) else None
        return None

    @functools.cached_property
    def holdout(self) -> Holdout | None:
        """The hold-out split every trial's accuracy was counted on: as the study records it
        (:data:`~nas.records.HOLDOUT_IMAGES`, from the campaign's data as it loaded), else, for a study made before
        that was recorded, counted from the data source by its name where that says it (``synthetic:num_images=
        5000``), else from its files' headers as they are now, without decoding an image
        (:func:`nas.sources.check_source`; a relative path from the directory this runs in). None when neither is
        known (no data source recorded, or its files moved)."""
        from nas.sources import DataError, check_source, holdout_count

        settings = self.data_settings
        if settings is None:
            return None
        data, val_fraction, image_size = settings
        recorded = self.attributes.get(records.HOLDOUT_IMAGES)
        if is_int(recorded, 1):
            return Holdout(recorded, None, val_fraction, data)
        try:
            count = check_source(data, image_size=image_size, files=False).num_images
            if count is None:
                count = check_source(data, image_size=image_size).num_images
        except (DataError, OSError):  # a source that is gone or no longer valid: its size is unknown
            return None
        if count is None:
            return None
        return Holdout(holdout_count(count, val_fraction), count, val_fraction, data)

    @functools.cached_property
    def factors(self) -> list[TrialFactors]:
        """The factors of every complete trial that has them, best reward first (none without exponents), their
        noise counted on the campaign's hold-out split (:attr:`holdout`)."""
        exponents = self.exponents
        if exponents is None:
            return []
        holdout = self.holdout
        images = None if holdout is None else holdout.images
        found = (TrialFactors.of(trial, exponents, images) for trial in self.ranked)
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
