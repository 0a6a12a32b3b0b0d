"""The trials of a study as a table, its best trials and Pareto front, and the ``--filter/--sort`` rule.

Shared by ``nas trials``, ``nas best`` and the report, so a column means the same everywhere. Reads only trial
attributes (named in :mod:`nas.records`): no torch. Optuna and pandas are imported by the functions that use them,
not by this module: the ``nas`` command's parser offers :data:`TABLE_COLUMNS` and :data:`FILTER_FIELDS` in its
help, and ``nas --help`` or ``nas show`` should not pay the half second those two take to import.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from nas import records
from nas.controller_names import CONTROLLERS

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
#: The state column's text for a trial stopped at a rung: ``stopped@3`` (after epoch 3). One word, so that the
#: table's columns still split on white space.
STOPPED_STATE = "stopped"


def is_stopped(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether successive halving stopped ``trial`` at a rung (a PRUNED trial that a constraint did not prune)."""
    return trial.state.name == "PRUNED" and trial.user_attrs.get(records.STATUS) == records.STATUS_STOPPED


def stopped_at_epoch(trial: optuna.trial.FrozenTrial) -> int | None:
    """The epoch of the rung a stopped trial ended at: as recorded, else its last reported rung."""
    epoch = trial.user_attrs.get(records.STOPPED_AT_EPOCH)
    if isinstance(epoch, int) and not isinstance(epoch, bool):
        return epoch
    return max(trial.intermediate_values, default=None)


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


def best_trials(study: optuna.Study, k: int = 1) -> list[optuna.trial.FrozenTrial]:
    """The ``k`` complete trials with the highest reward (ties by trial order)."""
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
