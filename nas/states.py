"""What a trial's state means to a campaign: finished, interrupted, stopped by successive halving, the baseline.

A leaf of the ledger, asked by the controllers, the study, the trials table, the report and the benchmarks, so
each fact is written once. It reads only a trial's Optuna state name and user attributes (named in
:mod:`nas.records`) and imports no Optuna at import time: ``nas --help`` and ``nas show`` import the trials table's
column names without paying for Optuna.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from nas import records

if TYPE_CHECKING:
    import optuna

#: Optuna states whose outcome is final: such a trial counts toward the budget (unless interrupted) and teaches
#: the controllers. PRUNED is a constraint's refusal or a successive-halving stop, both the candidate's own result.
FINISHED_STATE_NAMES = ("COMPLETE", "PRUNED", "FAIL")


def finished_states() -> tuple[optuna.trial.TrialState, ...]:
    """:data:`FINISHED_STATE_NAMES` as Optuna states, for ``study.get_trials(states=...)``."""
    import optuna

    return tuple(optuna.trial.TrialState[name] for name in FINISHED_STATE_NAMES)


def is_baseline(trial: optuna.trial.FrozenTrial | Mapping[str, Any]) -> bool:
    """Whether ``trial`` (or a trial's user attributes) is the campaign's baseline, the reference of S and P."""
    attributes = trial if isinstance(trial, Mapping) else trial.user_attrs
    return attributes.get(records.ROLE) == records.ROLE_BASELINE


def is_interrupted(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether ``trial`` failed through no fault of its candidate (a stopped driver, a machinery fault): it does
    not count toward the budget and is run once more on resume."""
    return trial.state.name == "FAIL" and bool(trial.user_attrs.get(records.INTERRUPTED))


def is_finished(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether ``trial`` counts toward the budget: finished (:data:`FINISHED_STATE_NAMES`) and not interrupted."""
    return trial.state.name in FINISHED_STATE_NAMES and not is_interrupted(trial)


def is_stopped(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether successive halving stopped ``trial`` at a rung (a PRUNED trial that a constraint did not prune)."""
    return trial.state.name == "PRUNED" and trial.user_attrs.get(records.STATUS) == records.STATUS_STOPPED


def stopped_at_epoch(trial: optuna.trial.FrozenTrial) -> int | None:
    """The epoch of the rung a stopped trial ended at: as recorded, else its last reported rung."""
    epoch = trial.user_attrs.get(records.STOPPED_AT_EPOCH)
    if isinstance(epoch, int) and not isinstance(epoch, bool):
        return epoch
    return max(trial.intermediate_values, default=None)
