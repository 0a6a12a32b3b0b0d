"""Successive halving for campaigns: the rung arithmetic, the promotion rule and what a trainer is handed.

This is asynchronous successive halving (ASHA; Li et al., "A System for Massively Parallel Hyperparameter Tuning",
MLSys 2020) in its early-stopping form: every trial is started for the full ``train.epochs`` and judged when it
reports a rung (:func:`rung_epochs`: ``min_epochs * reduction_factor**k`` epochs, none in the last
``1 / reduction_factor`` of the training). It goes on if its reward is
among the top ``1 / reduction_factor`` of every reward recorded at that rung so far (:func:`promotes`), else it
stops there. Nothing waits for a rung to fill and no trial is paused or checkpointed between rungs, so no worker
idles and no trial state moves between nodes; the price is that a decision depends on the order in which trials
arrive at a rung. That is why each decision is recorded in the study the moment it is taken (the trial's ``rungs``
attribute, and a stopped trial as PRUNED) and never re-taken: a campaign that resumes continues exactly, and the
re-run of an interrupted trial inherits the decisions its original got (a trial promoted before a kill is not
re-judged).

The rule is ours rather than a library's: Ray's ``AsyncHyperBandScheduler`` keeps its rungs in the driver's
memory (lost when a campaign resumes) and Optuna's ``SuccessiveHalvingPruner`` judges the re-run of an interrupted
trial again, with its rung values in its own system attributes. The rule itself is the one both apply (a trial is
promoted iff its value is at least the k-th best at the rung, ``k = max(1, n // reduction_factor)``), and each
rung's reward is reported to Optuna as the trial's intermediate value (``trial.report``), so any Optuna client sees
the learning curves.

What halving did to a campaign, the trials it stopped and the epochs it saved against training every trial in
full, is :func:`halving_summary`, computed from plain per-trial values (:class:`TrialTraining`) so that the report
and ``benchmarks/bench_asha.py`` count alike.

Imports no torch, no Ray and no Optuna (the ledger layer, DESIGN.md section 1).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from nas.records import EvalResult
from search_spaces.checks import check_choice, check_int, is_int

SCHEDULERS = ("none", "asha")
# Caps that refuse absurd values before a study exists: no proxy training runs anywhere near 1000 epochs, and a
# reduction factor above 100 would stop all but one trial in a hundred at every rung.
MAX_MIN_EPOCHS = 1000
MAX_REDUCTION_FACTOR = 100


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    """How a campaign spends its proxy-training budget: ``none`` trains every trial for all its epochs; ``asha``
    judges a trial after ``min_epochs``, ``min_epochs * reduction_factor``, ... epochs and stops the ones behind
    (module doc). A campaign's ``scheduler`` section (``{type: asha, min_epochs: 1, reduction_factor: 3}``)."""

    type: str = "none"
    min_epochs: int = 1
    reduction_factor: int = 3

    def __post_init__(self) -> None:
        check_choice("scheduler.type", self.type, SCHEDULERS)
        check_int("scheduler.min_epochs", self.min_epochs, 1, MAX_MIN_EPOCHS)
        check_int("scheduler.reduction_factor", self.reduction_factor, 2, MAX_REDUCTION_FACTOR)

    @property
    def enabled(self) -> bool:
        return self.type != "none"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def rung_epochs(min_epochs: int, reduction_factor: int, epochs: int) -> tuple[int, ...]:
    """The epochs a full-length trial of ``epochs`` is judged at: ``min_epochs * reduction_factor**k`` for
    ``k >= 0`` that leave room, at most ``epochs * (1 - 1 / reduction_factor)``: a trial stopped at a rung saves at
    least ``1 / reduction_factor`` of its training (a rung at epoch 9 of 10 would stop a candidate, perhaps the
    best, to save one epoch). ``(1, 3)`` for 1, 3 and 10: 9 is past 10 * 2/3."""
    rungs = []
    epoch = min_epochs
    while epoch * reduction_factor <= epochs * (reduction_factor - 1):
        rungs.append(epoch)
        epoch *= reduction_factor
    return tuple(rungs)


def promotion_cutoff(rung_rewards: Sequence[float], reduction_factor: int) -> tuple[float, int]:
    """``(cutoff, k)``: a reward at this rung goes on iff it is at least ``cutoff``, the ``k``-th best of
    ``rung_rewards`` (every reward recorded at the rung, the one judged included), ``k = max(1, n //
    reduction_factor)``."""
    if not rung_rewards:
        raise ValueError("rung_rewards must hold at least the reward being judged, got none")
    k = max(1, len(rung_rewards) // reduction_factor)
    return sorted(rung_rewards, reverse=True)[k - 1], k


def promotes(reward: float, rung_rewards: Sequence[float], reduction_factor: int) -> bool:
    """Whether ``reward`` goes on past its rung: at least the k-th best of ``rung_rewards`` (which includes it)
    (:func:`promotion_cutoff`). The first trial at a rung always goes on."""
    return reward >= promotion_cutoff(rung_rewards, reduction_factor)[0]


@dataclass(frozen=True)
class Rungs:
    """What a trainer is handed: the epochs to stop at (each below its ``epochs``) and the judge to ask there.

    After each epoch of ``epochs`` the trainer evaluates the current weights as its final evaluation would and
    calls ``judge`` with that result (status ok, ``epochs_completed`` the rung); True means train on, False means
    stop and return that result as ``stopped``."""

    epochs: tuple[int, ...]
    judge: Callable[[EvalResult], bool]


# --- what halving did to a campaign ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialTraining:
    """One trial as successive halving left it: complete (trained in full), or stopped at a rung, or neither
    (failed, pruned by a constraint, still running); the epochs it recorded it trained (None where it did not)
    and, for a stopped trial, the epoch of its rung (None where unknown)."""

    complete: bool
    stopped: bool
    epochs_completed: int | None = None
    stopped_at_epoch: int | None = None

    def epochs_trained(self, full_epochs: int | None) -> int | None:
        """The epochs this trial trained: as recorded, else what its state implies (its rung when stopped, the
        full training's ``full_epochs`` otherwise)."""
        if is_int(self.epochs_completed):
            return self.epochs_completed
        return self.stopped_at_epoch if self.stopped else full_epochs


def full_epochs(configured: Any, trials: Iterable[TrialTraining]) -> int | None:
    """The epochs of a full proxy training: ``configured`` (the campaign's ``train.epochs``) when it is a positive
    integer, else the most epochs a complete trial recorded; None when there is neither."""
    if is_int(configured, 1):
        return configured
    return max((trial.epochs_completed for trial in trials if trial.complete and is_int(trial.epochs_completed)),
               default=None)


@dataclass(frozen=True)
class HalvingSummary:
    """What successive halving did to a campaign: of the trials that finished training (complete or stopped at a
    rung), how many it stopped and where, and the epochs they trained against the epochs of training every one
    in full."""

    trained: int
    stopped: int
    stopped_at: Mapping[int | None, int]  # rung epoch -> trials stopped there, by epoch (an unknown rung last)
    epochs_trained: int
    full_budget_epochs: int | None  # trained x the full epochs; None when they are unknown
    epochs: int | None
    rungs: tuple[int, ...]
    reduction_factor: float | None

    @property
    def saving(self) -> float | None:
        """How many times fewer epochs than the full budget were trained."""
        if not self.full_budget_epochs or not self.epochs_trained:
            return None
        return self.full_budget_epochs / self.epochs_trained

    def line(self) -> str:
        """``successive halving: 14 of 20 stopped early; 96 of 200 epochs trained, 2.1x less than full budget``"""
        text = f"successive halving: {self.stopped} of {self.trained} stopped early; {self.epochs_trained:,}"
        if self.full_budget_epochs is None:
            return f"{text} epochs trained"
        text += f" of {self.full_budget_epochs:,} epochs trained"
        return text + ("" if self.saving is None else f", {self.saving:.1f}x less than full budget")

    def settings(self) -> str:
        """``rungs at epochs 1, 3, 9 of 10, reduction factor 3`` (what is known of them)."""
        parts = []
        if self.rungs:
            parts.append(f"rungs at epoch{'s' if len(self.rungs) > 1 else ''} {', '.join(map(str, self.rungs))}"
                         + ("" if self.epochs is None else f" of {self.epochs}"))
        if self.reduction_factor is not None:
            parts.append(f"reduction factor {self.reduction_factor:g}")
        return ", ".join(parts)


def halving_summary(
    trials: Iterable[TrialTraining], *, epochs: int | None, rungs: Sequence[int] = (),
    reduction_factor: float | None = None,
) -> HalvingSummary:
    """The :class:`HalvingSummary` of a campaign's ``trials`` (every trial: those that did not finish training
    are not counted), ``epochs`` being a full training's (:func:`full_epochs`), ``rungs`` the epochs trials were
    judged at and ``reduction_factor`` the scheduler's, as far as they are known."""
    trained = [trial for trial in trials if trial.complete or trial.stopped]
    stopped = Counter(trial.stopped_at_epoch for trial in trained if trial.stopped)
    return HalvingSummary(
        trained=len(trained), stopped=sum(stopped.values()),
        stopped_at=dict(sorted(stopped.items(), key=lambda item: (item[0] is None, item[0] or 0))),
        epochs_trained=sum(trial.epochs_trained(epochs) or 0 for trial in trained),
        full_budget_epochs=None if epochs is None else epochs * len(trained), epochs=epochs,
        rungs=tuple(sorted(rungs)), reduction_factor=reduction_factor,
    )
