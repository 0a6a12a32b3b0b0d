"""A campaign as people judge it: the HTML report of ``nas report``.

Everything comes from the study, the campaign's single source of truth. :func:`write_report` writes
``report.html`` with PNG figures beside it, referenced by relative paths and styled inline, so the directory can be
copied, archived or opened from disk with no network. From the top: the verdict (the winner against the baseline,
each top trial's reward as the product of its factors, whether the lead is inside the step-time noise, where the
winner's spec is, and what successive halving stopped and saved), the optimization history by controller, the
learning curves (each trial's reward at the rungs, where the campaign reported them), accuracy against normalized
step time and against
parameters with the Pareto front, the decisions of the top 10% of candidates against those of all candidates (and
what the RL or evolution controller prefers now), every trial in a table that sorts by any column, the baseline and
the winner as stage tables, failures by reason with the trials over time, and the campaign's settings, storage,
wall time and device. A figure the study cannot support yet (nothing completed, only the baseline) is replaced by a
sentence saying why; the report itself is always written.

Every figure is drawn here with matplotlib in one style (:data:`FIGURE_STYLE`), on the Agg backend, imported only
when a report is drawn: reports are written without a display. The page's one script, inline, sorts the trials
table; it fetches nothing.
"""

from __future__ import annotations

import functools
import html
import math
import numbers
import os
import re
import shlex
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Container, Iterable, Mapping, Sequence

from nas import records
from nas.complexity import STAGE_TABLE_HEADERS, stage_rows
from nas.measure import spec_complexity
from nas.storage import default_storage_url, mask_url
from nas.study import is_interrupted, trial_spec
from nas.trials import best_trials, is_stopped, pareto_front, stopped_at_epoch, trials_frame
from search_spaces.files import Content, write_file
from search_spaces.space import DECISION_FIELDS, Decision, SearchSpace

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure as PlotFigure

REPORT_FILE = "report.html"
TOP_FRACTION = 0.1  # the decisions of the best tenth of the candidates are compared with those of all of them
#: Below this many trials in the top group, the per-decision bars carry a warning: shares of so few say little.
SMALL_SAMPLE = 5
#: The verdict breaks the reward of this many of the best trials into its factors.
FACTOR_ROWS = 5
TOP_TABLE_COLUMNS = (
    "number", "controller", "reward", "accuracy", "step_time_ms", "parameters", "normalized_step_time",
    "normalized_parameters", "architecture",
)
#: The campaign settings (CampaignConfig's fields) that hold the reward's exponents w and v.
EXPONENT_SETTINGS = ("step_time_exponent", "params_exponent")
DPI = 100
#: One colour per controller, the same in every report; a study's unknown controller names share the last one.
CONTROLLER_COLORS = {"evolution": "tab:green", "random": "tab:brown", "rl": "tab:blue", "tpe": "tab:purple"}
UNKNOWN_CONTROLLER_COLOR = "tab:olive"
FIELD_TITLES = {"op": "op", "num_layers": "layers", "kernel_size": "kernel", "expand_ratio": "expansion"}
OP_LABELS = {"mbconv": "MBConv", "fused_mbconv": "Fused"}
#: The one style of every figure of the report (matplotlib rc settings).
FIGURE_STYLE = {
    "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
    "legend.fontsize": 8, "legend.frameon": False, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": DPI,
}
NOISE_DEFINITION = (
    "Step-time noise: a trial's step time S is the median of several timed windows, and the windows' interquartile "
    "range (IQR) says how much they disagreed. The noise δ of a trial's reward R is the change in R that moving its "
    "step time by half its IQR implies through the factor (S/S₀)^w, to first order: δ = |w|·R·IQR/(2·median). Two "
    "trials are within the noise when their rewards differ by less than δ₁ + δ₂ (their ranges R ± δ overlap). "
    "The baseline's own spread moves every normalized S alike, so it does not reorder the candidates; accuracy "
    "noise (the proxy training's seed) comes on top and is not counted here."
)


# --- the report -----------------------------------------------------------------------------------------------------


class NotDrawable(Exception):
    """A figure the study cannot support yet; the message says why, in the report's words."""


@dataclass(frozen=True)
class StudySnapshot:
    """What the report shows, read from the study once: its trials, the complete ones by reward and the front."""

    study: optuna.Study
    attributes: Mapping[str, Any]
    trials: tuple[optuna.trial.FrozenTrial, ...]
    ranked: tuple[optuna.trial.FrozenTrial, ...]
    front: frozenset[int]

    @classmethod
    def read(cls, study: optuna.Study) -> StudySnapshot:
        trials = tuple(study.get_trials(deepcopy=False))
        return cls(study, study.user_attrs, trials, tuple(best_trials(study, len(trials))),
                   frozenset(trial.number for trial in pareto_front(study)))

    @property
    def baseline_trial(self) -> optuna.trial.FrozenTrial | None:
        """The trial that evaluated the baseline (the completed one if it was run again)."""
        measured = records.study_baseline(self.attributes)
        recorded = None if measured is None else measured.trial
        baselines = [trial for trial in self.trials if trial.user_attrs.get(records.ROLE) == records.ROLE_BASELINE]
        return next((trial for trial in baselines if trial.number == recorded), baselines[0] if baselines else None)

    @property
    def winner(self) -> optuna.trial.FrozenTrial | None:
        """The complete trial with the highest reward: the architecture ``nas export`` writes."""
        return self.ranked[0] if self.ranked else None

    @property
    def candidates(self) -> list[optuna.trial.FrozenTrial]:
        """Complete candidate trials (the baseline excluded), best reward first."""
        return [trial for trial in self.ranked if trial.user_attrs.get(records.ROLE) != records.ROLE_BASELINE]

    @property
    def top(self) -> list[optuna.trial.FrozenTrial]:
        """The top :data:`TOP_FRACTION` of the complete candidates by reward (at least one, when there is one)."""
        return self.candidates[:math.ceil(TOP_FRACTION * len(self.candidates))]

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
            if _is_real(w) and _is_real(v):
                return float(w), float(v)
        return None

    @property
    def storage(self) -> str:
        """The campaign's storage URL with any password masked; the default one spelled out where it is unset."""
        url = self.campaign.get("storage")
        if isinstance(url, str) and url:
            return mask_url(url)
        default = default_storage_url(self.campaign.get("study") or self.study.study_name)
        return f"{default} (the default, relative to the directory the search ran in)"


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Figure:
    """One figure of the report: its file is ``NAME.png``; the caption tells how to read it."""

    name: str
    title: str
    caption: str
    draw: Callable[[StudySnapshot], PlotFigure]
    #: Whether the figure belongs in this study's report at all (None: always). A figure that does not belong is
    #: neither drawn nor mentioned, and its section is left out; one that belongs but cannot be drawn yet raises
    #: :class:`NotDrawable` and gets a sentence saying why.
    shown: Callable[[StudySnapshot], bool] | None = None


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote: the HTML file, the figures drawn, and why the others were not."""

    path: Path
    figures: tuple[Path, ...]
    not_drawn: Mapping[str, str]


def write_report(study: optuna.Study, directory: Path, *, force: bool = False) -> Report:
    """Writes ``directory/report.html`` and its figures; refuses to overwrite an earlier report unless ``force``.

    Every file goes through :func:`~search_spaces.files.write_file`. A run that fails part-way (a full disk, a
    figure that cannot be drawn) removes the files and directories it created, never one that was there before,
    so a re-run is not refused; a write error is an OSError naming the file and the reason. With ``force`` the
    earlier report's files are replaced one by one, and figures it had that this run does not draw are removed
    once the new report is complete.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} exists and is not a directory; give a directory for the report")
    outputs = [directory / REPORT_FILE, *(directory / f"{figure.name}.png" for figure in FIGURES)]
    existing = [path for path in outputs if os.path.lexists(path)]
    if existing and not force:
        raise FileExistsError(
            f"{directory} already holds a report ({', '.join(path.name for path in existing)}); "
            "pass --force to overwrite it"
        )
    snapshot = StudySnapshot.read(study)
    files = _NewFiles(existing)
    try:
        files.make_directory(directory)
        drawn, not_drawn = _draw_figures(snapshot, directory, files)
        path = files.write(directory / REPORT_FILE, _page(snapshot, not_drawn))
    except BaseException:
        files.remove()
        raise
    for stale in set(existing) - set(files.written):  # with --force: no figure of the earlier report is left
        stale.unlink(missing_ok=True)
    return Report(path, drawn, not_drawn)


class _NewFiles:
    """What one run of :func:`write_report` writes, so that a failed run can remove exactly what it created."""

    def __init__(self, existing: Iterable[Path]) -> None:
        self.existing = frozenset(existing)
        self.written: list[Path] = []
        self.directories: list[Path] = []

    def make_directory(self, directory: Path) -> None:
        """Creates ``directory`` and its missing parents, remembering each one this run created."""
        missing = [path for path in (directory, *directory.parents) if not path.exists()]
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                continue  # made by someone else meanwhile: not ours to remove
            except OSError as error:
                raise OSError(f"cannot create {path}: {_reason(error)}") from error
            self.directories.append(path)

    def write(self, path: Path, content: Content) -> Path:
        """Writes ``path`` through :func:`~search_spaces.files.write_file`; errors name the file and the reason."""
        try:
            write_file(path, content)
        except OSError as error:
            if error.errno is None:
                raise  # write_file's own one-line message, which names the file ("... is a directory")
            raise OSError(f"cannot write {path}: {_reason(error)}") from error
        self.written.append(path)
        return path

    def remove(self) -> None:
        """Removes the files and (empty) directories this run created; files that were there before stay."""
        for path in self.written:
            if path not in self.existing:
                path.unlink(missing_ok=True)
        for directory in reversed(self.directories):
            try:
                directory.rmdir()
            except OSError:
                pass  # something else was put there meanwhile: keep it


def _reason(error: OSError) -> str:
    """The OS's reason alone (``no space left on device``), for a one-line message that names the file itself."""
    if error.errno is None:
        return str(error)
    reason = os.strerror(error.errno)
    return reason[:1].lower() + reason[1:]


def _draw_figures(
    snapshot: StudySnapshot, directory: Path, files: _NewFiles
) -> tuple[tuple[Path, ...], dict[str, str]]:
    pyplot = _pyplot()
    drawn, not_drawn = [], {}
    for figure in FIGURES:
        if figure.shown is not None and not figure.shown(snapshot):
            continue
        with pyplot.rc_context(FIGURE_STYLE):  # one style for every figure; none leaks into the caller's
            try:
                plot = figure.draw(snapshot)
            except NotDrawable as reason:
                not_drawn[figure.name] = str(reason)
                continue
            try:
                save = functools.partial(plot.savefig, format="png", dpi=DPI, bbox_inches="tight")
                drawn.append(files.write(directory / f"{figure.name}.png", save))
            finally:
                pyplot.close(plot)
    return tuple(drawn), not_drawn


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


# --- the reward's factors and the step-time noise -------------------------------------------------------------------


def step_time_noise(reward: float, step_time_exponent: float, median_s: float, iqr_s: float) -> float:
    """The noise δ of a reward from its step time's spread (:data:`NOISE_DEFINITION`): the change in ``reward``
    that moving the step time by half its interquartile range implies through ``(S/S₀)^w``, to first order,
    ``|w|·R·IQR/(2·median)``."""
    return abs(step_time_exponent) * reward * iqr_s / (2 * median_s)


@dataclass(frozen=True)
class RewardFactors:
    """A complete trial's reward as the product of its factors, ``A · (S/S₀)^w · (P/P₀)^v``, with the spread of
    the step time it was measured with and the noise that spread puts on the reward (None where not recorded)."""

    trial: optuna.trial.FrozenTrial
    accuracy: float
    step_time_ratio: float
    params_ratio: float
    step_time_factor: float
    params_factor: float
    step_time_s: float | None
    step_time_iqr_s: float | None
    noise: float | None

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial, exponents: tuple[float, float]) -> RewardFactors | None:
        """The factors of a complete ``trial`` under the reward's exponents ``(w, v)``; None if it lacks A, S/S₀
        or P/P₀."""
        attributes = trial.user_attrs
        accuracy, step_time_ratio, params_ratio = (
            attributes.get(key) for key in (records.ACCURACY, records.NORMALIZED_STEP_TIME,
                                            records.NORMALIZED_PARAMETERS)
        )
        if trial.value is None or not all(map(_is_real, (accuracy, step_time_ratio, params_ratio))):
            return None
        w, v = exponents
        median, iqr = attributes.get(records.STEP_TIME_S), attributes.get(records.STEP_TIME_IQR_S)
        noise = (step_time_noise(trial.value, w, median, iqr)
                 if _is_real(median) and median > 0 and _is_real(iqr) else None)
        return cls(trial, accuracy, step_time_ratio, params_ratio, step_time_ratio**w, params_ratio**v,
                   median if _is_real(median) else None, iqr if _is_real(iqr) else None, noise)

    @property
    def reward(self) -> float:
        return self.trial.value

    @property
    def product(self) -> float:
        """``A · (S/S₀)^w · (P/P₀)^v``: the reward, recomputed from the factors shown."""
        return self.accuracy * self.step_time_factor * self.params_factor


def within_noise(first: RewardFactors, second: RewardFactors) -> bool | None:
    """Whether two trials' rewards differ by less than their summed step-time noise (their ranges R ± δ overlap);
    None when either trial's step-time spread is not recorded."""
    if first.noise is None or second.noise is None:
        return None
    return abs(first.reward - second.reward) < first.noise + second.noise


def _factors(snapshot: StudySnapshot) -> list[RewardFactors]:
    """The factors of every complete trial that has them, best reward first."""
    if snapshot.exponents is None:
        return []
    found = (RewardFactors.of(trial, snapshot.exponents) for trial in snapshot.ranked)
    return [factors for factors in found if factors is not None]


# --- successive halving ---------------------------------------------------------------------------------------------


def has_curves(snapshot: StudySnapshot) -> bool:
    """Whether any trial reported a reward at a rung (``trial.report``): a campaign with successive halving."""
    return any(trial.intermediate_values for trial in snapshot.trials)


def full_epochs(snapshot: StudySnapshot) -> int | None:
    """The epochs of a full proxy training: the campaign's ``train.epochs``, else the most a complete trial
    trained; None when the study records neither."""
    epochs = (snapshot.campaign.get("train") or {}).get("epochs")
    if isinstance(epochs, int) and not isinstance(epochs, bool) and epochs > 0:
        return epochs
    return max((value for trial in snapshot.ranked
                if isinstance(value := trial.user_attrs.get(records.EPOCHS_COMPLETED), int)), default=None)


def _epochs_trained(trial: optuna.trial.FrozenTrial, full: int | None) -> int | None:
    """The epochs ``trial`` trained, as it recorded (``epochs_completed``), else what its state implies."""
    epochs = trial.user_attrs.get(records.EPOCHS_COMPLETED)
    if isinstance(epochs, int) and not isinstance(epochs, bool):
        return epochs
    return stopped_at_epoch(trial) if is_stopped(trial) else full


@dataclass(frozen=True)
class HalvingSummary:
    """What successive halving did to a campaign: of the trials that finished training (complete or stopped at a
    rung), how many it stopped, and the epochs they trained against the epochs of training every one in full."""

    trained: int
    stopped: int
    epochs_trained: int
    full_budget_epochs: int | None  # trained x the campaign's epochs; None when the study does not record them
    epochs: int | None
    rungs: tuple[int, ...]
    reduction_factor: Any

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
        """``rungs at epochs 1, 3, 9 of 10, reduction factor 3`` (what the study records of them)."""
        parts = []
        if self.rungs:
            parts.append(f"rungs at epoch{'s' if len(self.rungs) > 1 else ''} {', '.join(map(str, self.rungs))}"
                         + ("" if self.epochs is None else f" of {self.epochs}"))
        if _is_real(self.reduction_factor):
            parts.append(f"reduction factor {self.reduction_factor:g}")
        return ", ".join(parts)


def halving_summary(snapshot: StudySnapshot) -> HalvingSummary | None:
    """The campaign's :class:`HalvingSummary`; None when no trial reported a rung or was stopped at one."""
    stopped = [trial for trial in snapshot.trials if is_stopped(trial)]
    if not stopped and not has_curves(snapshot):
        return None
    full = full_epochs(snapshot)
    trained = [trial for trial in snapshot.trials if trial.state.name == "COMPLETE" or is_stopped(trial)]
    epochs = [_epochs_trained(trial, full) for trial in trained]
    scheduler = snapshot.campaign.get("scheduler")
    return HalvingSummary(
        trained=len(trained), stopped=len(stopped), epochs_trained=sum(epoch or 0 for epoch in epochs),
        full_budget_epochs=None if full is None else full * len(trained), epochs=full,
        rungs=tuple(sorted({epoch for trial in snapshot.trials for epoch in trial.intermediate_values})),
        reduction_factor=scheduler.get("reduction_factor") if isinstance(scheduler, Mapping) else None,
    )


# --- figures --------------------------------------------------------------------------------------------------------


def _reward_formula(exponents: tuple[float, float] | None) -> str:
    """The reward in matplotlib's mathtext, with the study's exponents (``w`` and ``v`` when it has none)."""
    w, v = ("w", "v") if exponents is None else (f"{exponents[0]:g}", f"{exponents[1]:g}")
    return rf"$A\cdot(S/S_0)^{{{w}}}\cdot(P/P_0)^{{{v}}}$"


def _draw_history(snapshot: StudySnapshot) -> PlotFigure:
    """Reward per trial and best so far, one colour per controller; the baseline's reward as a line; failures
    as crosses on the trial axis."""
    if not snapshot.ranked:
        raise NotDrawable("no trial has completed yet")
    figure = _pyplot().figure(figsize=(9, 4.2))
    axes = figure.subplots()
    baseline = snapshot.baseline_trial
    if baseline is not None and baseline.value is not None:
        axes.axhline(baseline.value, color="black", linestyle="--", linewidth=1, label="baseline's reward")
        axes.plot([baseline.number], [baseline.value], "*", color="black", markersize=12, label="baseline")
    by_controller: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for trial in sorted(snapshot.candidates, key=lambda trial: trial.number):
        by_controller.setdefault(trial.user_attrs.get(records.CONTROLLER, "unknown"), []).append(trial)
    for controller, trials in by_controller.items():
        color = CONTROLLER_COLORS.get(controller, UNKNOWN_CONTROLLER_COLOR)
        numbers, rewards = [trial.number for trial in trials], [trial.value for trial in trials]
        axes.scatter(numbers, rewards, color=color, alpha=0.55, s=22, label=f"{controller}: reward")
        best = [max(rewards[:index + 1]) for index in range(len(rewards))]
        axes.step(numbers, best, where="post", color=color, linewidth=2, label=f"{controller}: best so far")
    failed = [trial.number for trial in snapshot.trials if trial.state.name == "FAIL"]
    if failed:
        axes.plot(failed, [0.03] * len(failed), "x", color="crimson", transform=axes.get_xaxis_transform(),
                  label="failed")
    axes.set_xlabel("trial")
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.set_ylabel(f"reward  {_reward_formula(snapshot.exponents)}")
    axes.grid(alpha=0.3)
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return figure


def _curve(trial: optuna.trial.FrozenTrial, full: int | None) -> tuple[list[int], list[float]]:
    """A trial's rewards at its rungs by epoch; a complete trial's line goes on to its final reward at the last
    epoch it trained (the rungs stop short of it), a stopped one's ends at the rung it stopped at."""
    points = sorted(trial.intermediate_values.items())
    if trial.state.name == "COMPLETE" and trial.value is not None:
        last = _epochs_trained(trial, full)
        if last is not None and (not points or last > points[-1][0]):
            points.append((last, trial.value))
    return [epoch for epoch, _ in points], [reward for _, reward in points]


def _draw_curves(snapshot: StudySnapshot) -> PlotFigure:
    """Each trial's reward at the rungs against the epoch, one line per trial: stopped trials' lines end at their
    rung with a cross, complete ones' reach their final reward; the winner and the baseline drawn and labelled
    apart. Every trial's line has the gid ``trial-N``."""
    if not has_curves(snapshot):
        raise NotDrawable("no trial has reported its reward at a rung")
    full = full_epochs(snapshot)
    winner, baseline = snapshot.winner, snapshot.baseline_trial
    special = {trial.number for trial in (winner, baseline) if trial is not None}
    figure = _pyplot().figure(figsize=(9, 4.2))
    axes = figure.subplots()
    labelled: set[str] = set()

    def draw(trial: optuna.trial.FrozenTrial, label: str, end_marker: str, **style: Any) -> None:
        epochs, rewards = _curve(trial, full)
        if not epochs:
            return
        axes.plot(epochs, rewards, label=label if label not in labelled else "_nolegend_",
                          marker=end_marker, markevery=[len(epochs) - 1], gid=f"trial-{trial.number}", **style)
        labelled.add(label)

    # the crowd first, the baseline and the winner on top
    for trial in snapshot.trials:
        if not trial.intermediate_values or trial.number in special:
            continue
        if is_stopped(trial):
            draw(trial, "stopped at a rung (×)", "x", color="grey", alpha=0.55, linewidth=0.9, markersize=6)
        elif trial.state.name == "COMPLETE":
            draw(trial, "complete", "o", color="tab:blue", alpha=0.6, linewidth=1.1, markersize=4)
        else:
            draw(trial, trial.state.name.lower(), "", color="tab:orange", alpha=0.6, linewidth=0.9, linestyle=":")
    if baseline is not None:
        if baseline.intermediate_values:
            draw(baseline, f"baseline (trial {baseline.number})", "*", color="black", linestyle="--",
                 linewidth=1.5, markersize=11, zorder=3)
        elif baseline.value is not None:
            axes.axhline(baseline.value, color="black", linestyle="--", linewidth=1, gid="baseline",
                         label=f"baseline's reward (trial {baseline.number})")
    if winner is not None and (baseline is None or winner.number != baseline.number):
        draw(winner, f"winner (trial {winner.number})", "o", color="crimson", linewidth=2.4, markersize=7,
             zorder=4)
    rungs = sorted({epoch for trial in snapshot.trials for epoch in trial.intermediate_values})
    for epoch in rungs:
        axes.axvline(epoch, color="0.6", linestyle=":", linewidth=0.8, zorder=0)
    axes.set_xticks(sorted(set(rungs) | ({full} if full is not None else set())))
    axes.set_xlabel("epoch of proxy training (dotted lines: the rungs, where successive halving compares trials)")
    axes.set_ylabel(f"reward at the epoch  {_reward_formula(snapshot.exponents)}")
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return figure


def _draw_tradeoffs(snapshot: StudySnapshot) -> PlotFigure:
    """Accuracy against normalized step time and against parameters, the Pareto front marked; the winner, the
    baseline and the front labelled with their trial numbers where a label fits without covering another."""
    measured = [
        trial for trial in snapshot.ranked
        if {records.ACCURACY, records.NORMALIZED_STEP_TIME, records.PARAMETERS} <= set(trial.user_attrs)
    ]
    if not measured:
        raise NotDrawable("no trial has completed yet")
    figure = _pyplot().figure(figsize=(11, 4.4))
    time_axes, size_axes = figure.subplots(1, 2, sharey=True)
    _tradeoff_panel(time_axes, snapshot, measured, records.NORMALIZED_STEP_TIME)
    _tradeoff_panel(size_axes, snapshot, measured, records.PARAMETERS)
    w, v = ("w", "v") if snapshot.exponents is None else (f"{snapshot.exponents[0]:g}", f"{snapshot.exponents[1]:g}")
    time_axes.set_xlabel(rf"training step time / baseline's  $S/S_0$   (reward factor $(S/S_0)^{{{w}}}$)")
    size_axes.set_xlabel(rf"parameters  $P$   (reward factor $(P/P_0)^{{{v}}}$)")
    time_axes.set_ylabel("proxy accuracy  A")
    values = [trial.user_attrs[records.PARAMETERS] for trial in measured]
    if max(values) > 10 * min(values):
        size_axes.set_xscale("log")
    size_axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    figure.suptitle(f"reward = {_reward_formula(snapshot.exponents)}", fontsize=9)
    for axes, key in ((time_axes, records.NORMALIZED_STEP_TIME), (size_axes, records.PARAMETERS)):
        _label_points(axes, _labelled(snapshot, measured, key))
    return figure


def _tradeoff_panel(axes: Any, snapshot: StudySnapshot, measured: list[optuna.trial.FrozenTrial], key: str) -> None:
    def point(trial: optuna.trial.FrozenTrial) -> tuple[float, float]:
        return trial.user_attrs[key], trial.user_attrs[records.ACCURACY]

    front = [trial for trial in measured if trial.number in snapshot.front]
    others = [trial for trial in measured if trial.number not in snapshot.front]
    if others:
        axes.scatter(*zip(*map(point, others)), facecolors="none", edgecolors="grey", s=28, label="other trials")
    axes.scatter(*zip(*map(point, front)), color="tab:orange", s=36, zorder=3,
                 label="Pareto front over A, S and P")
    staircase, best = [], -math.inf
    for x, accuracy in sorted(map(point, measured), key=lambda xy: (xy[0], -xy[1])):
        if accuracy > best:
            staircase.append((x, accuracy))
            best = accuracy
    axes.step(*zip(*staircase), where="post", color="tab:orange", linestyle=":", alpha=0.8,
              label="front of the two plotted")
    baseline, winner = snapshot.baseline_trial, snapshot.winner
    if baseline is not None and baseline.number in {trial.number for trial in measured}:
        axes.plot(*point(baseline), "*", color="black", markersize=13, zorder=4, label="baseline")
    if winner is not None:
        axes.plot(*point(winner), "o", markerfacecolor="none", markeredgecolor="crimson", markersize=14,
                  markeredgewidth=2, zorder=4, label=f"winner (trial {winner.number})")
    axes.grid(alpha=0.3)


@dataclass(frozen=True)
class _Label:
    x: float
    y: float
    text: str
    color: str = "black"
    weight: str = "normal"


def _labelled(snapshot: StudySnapshot, measured: list[optuna.trial.FrozenTrial], key: str) -> list[_Label]:
    """The points that get a label, most important first: the winner, the baseline, then the front by reward."""
    baseline, winner = snapshot.baseline_trial, snapshot.winner
    first = [trial.number for trial in (winner, baseline) if trial is not None]
    order = {number: index for index, number in enumerate(first)}
    chosen = sorted((trial for trial in measured if trial.number in order or trial.number in snapshot.front),
                    key=lambda trial: order.get(trial.number, len(order)))  # measured is by reward already
    labels = []
    for trial in chosen:
        is_winner = winner is not None and trial.number == winner.number
        labels.append(_Label(trial.user_attrs[key], trial.user_attrs[records.ACCURACY], str(trial.number),
                             "crimson" if is_winner else "black", "bold" if is_winner else "normal"))
    return labels


# Where a label may go around its point, in points: nearest first, then further out.
_LABEL_OFFSETS = tuple(
    (dx * distance, dy * distance)
    for distance in (7, 14, 22)
    for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
)
_POINT_RADIUS = 5  # points: the area around a labelled point that no other label may cover


def _label_points(axes: Any, labels: Sequence[_Label]) -> None:
    """Annotates each point with its text at the first offset of :data:`_LABEL_OFFSETS` where the label stays
    inside the axes and covers no label placed before it nor another labelled point; a label that fits nowhere is
    left out (the tables list every trial). Call it once the axes' scales are set."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    axes.set_xlim(axes.get_xlim())  # freeze the autoscaled limits: the placement is computed in display space
    axes.set_ylim(axes.get_ylim())
    figure = axes.figure
    renderer = figure.canvas.get_renderer()
    radius = _POINT_RADIUS * figure.dpi / 72
    points = [axes.transData.transform((label.x, label.y)) for label in labels]
    taken = [Bbox.from_extents(x - radius, y - radius, x + radius, y + radius) for x, y in points]
    area = axes.get_window_extent(renderer)
    for index, label in enumerate(labels):
        others = taken[:index] + taken[index + 1:]
        for dx, dy in _LABEL_OFFSETS:
            near = max(abs(dx), abs(dy)) <= _LABEL_OFFSETS[0][0]  # further away, a thin line leads to the point
            annotation = axes.annotate(
                label.text, (label.x, label.y), xytext=(dx, dy), textcoords="offset points", fontsize=7,
                color=label.color, fontweight=label.weight, ha="left" if dx > 0 else "right" if dx < 0 else "center",
                va="bottom" if dy > 0 else "top" if dy < 0 else "center", annotation_clip=False,
                arrowprops=None if near else {"arrowstyle": "-", "color": "0.55", "linewidth": 0.6, "shrinkA": 1,
                                              "shrinkB": 4},
            )
            annotation.update_positions(renderer)
            box = Text.get_window_extent(annotation, renderer)  # the text alone, without its leader line
            inside = area.x0 <= box.x0 and box.x1 <= area.x1 and area.y0 <= box.y0 and box.y1 <= area.y1
            if inside and not any(box.overlaps(other) for other in others):
                taken.append(box)
                break
            annotation.remove()


def _draw_decisions(snapshot: StudySnapshot) -> PlotFigure:
    """Per stage and decision, the share of each choice among all candidates and among the top 10%, and what the
    controller prefers now (RL: its policy's probabilities; evolution: its population's shares)."""
    space, top = snapshot.space, snapshot.top
    if space is None:
        raise NotDrawable("the study does not record its search space")
    if not top:
        raise NotDrawable("no candidate has completed yet")
    proposed = _proposed(snapshot, space)
    preferences = _preferences(snapshot, space)
    width = 0.8 / (2 if preferences is None else 3)
    figure = _pyplot().figure(figsize=(3.0 * len(DECISION_FIELDS), 1.9 * len(space.stages) + 1.0))
    grid = figure.subplots(len(space.stages), len(DECISION_FIELDS), squeeze=False)
    for decision in space.decisions:
        axes = grid[decision.stage - 1][DECISION_FIELDS.index(decision.field)]
        series = [
            (_shares(proposed, decision), {"color": "lightgrey"}, f"all candidates (n = {len(proposed)})"),
            (_shares(top, decision), {"color": "tab:blue"}, f"top {TOP_FRACTION:.0%} by reward (n = {len(top)})"),
        ]
        if preferences is not None:
            label, shares = preferences
            series.append((shares[decision.name], {"facecolor": "white", "edgecolor": "black", "hatch": "///"},
                           label))
        positions = range(len(decision.choices))
        for index, (heights, style, label) in enumerate(series):
            offset = (index - (len(series) - 1) / 2) * width
            axes.bar([x + offset for x in positions], heights, width=width, label=label, **style)
        axes.set_xticks(list(positions), [OP_LABELS.get(choice, str(choice)) for choice in decision.choices])
        axes.set_ylim(0, 1)
        axes.set_title(f"stage {decision.stage}: {FIELD_TITLES[decision.field]}", fontsize=9)
        axes.tick_params(labelsize=8)
    figure.legend(*grid[0][0].get_legend_handles_labels(), loc="upper center", ncol=len(series), fontsize=9)
    if len(top) < SMALL_SAMPLE:
        figure.text(0.5, 1 - 0.42 / figure.get_figheight(), _small_sample_warning(len(top)), ha="center",
                    va="top", color="crimson", fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.7 / figure.get_figheight()))
    return figure


def _proposed(snapshot: StudySnapshot, space: SearchSpace) -> list[optuna.trial.FrozenTrial]:
    """The candidates the controllers proposed: every candidate trial with all its decisions, interrupted ones
    (whose re-run is the same architecture) excluded."""
    return [
        trial for trial in snapshot.trials
        if trial.user_attrs.get(records.ROLE) != records.ROLE_BASELINE and not is_interrupted(trial)
        and all(decision.name in trial.params for decision in space.decisions)
    ]


def _small_sample_warning(size: int) -> str:
    return (f"The top group holds only {size} candidate{'s' if size != 1 else ''} (fewer than {SMALL_SAMPLE}): "
            f"its shares can only be multiples of 1/{size} and say little about what the reward favours.")


def _preferences(snapshot: StudySnapshot, space: SearchSpace) -> tuple[str, dict[str, list[float]]] | None:
    """What the campaign's controller prefers now, per decision and choice, with a legend label: the RL policy's
    probabilities, or the shares of each choice in the evolution controller's current population; rebuilt from
    the study as the controller itself rebuilds them. None for other controllers (they keep no preferences)."""
    controller = snapshot.campaign.get("controller")
    if controller == "rl":
        from nas.controllers import PolicyGradientSampler

        policy = PolicyGradientSampler(space)
        policy.update(snapshot.study)
        probabilities = policy.policy_probabilities()
        return ("RL policy now (what it proposes next)",
                {decision.name: [probabilities[decision.name][choice] for choice in decision.choices]
                 for decision in space.decisions})
    if controller == "evolution":
        from nas.controllers import RegularizedEvolutionSampler

        budget = snapshot.campaign.get("trials")
        evolution = RegularizedEvolutionSampler(space, budget=budget if isinstance(budget, int) else None)
        evolution.update(snapshot.study)
        members = [indices for indices, _ in evolution.population()]
        if not members:
            return None
        return (f"evolution's population now (n = {len(members)})",
                {decision.name: [sum(indices[position] == index for indices in members) / len(members)
                                 for index in range(len(decision.choices))]
                 for position, decision in enumerate(space.decisions)})
    return None


def _shares(trials: Sequence[optuna.trial.FrozenTrial], decision: Decision) -> list[float]:
    counts = Counter(trial.params[decision.name] for trial in trials)
    return [counts[choice] / len(trials) if trials else 0.0 for choice in decision.choices]


def _draw_timeline(snapshot: StudySnapshot) -> PlotFigure:
    """One bar per trial from its start to its end, coloured by controller when it completed, by how it ended
    otherwise; a trial still running is drawn up to the study's last recorded time, hatched."""
    started = [trial for trial in snapshot.trials if trial.datetime_start is not None]
    if not started:
        raise NotDrawable("no trial has started yet")
    origin = min(trial.datetime_start for trial in started)
    last = max(trial.datetime_complete or trial.datetime_start for trial in started)
    span_s = (last - origin).total_seconds()
    unit, scale = ("s", 1) if span_s < 120 else ("min", 60) if span_s < 2 * 3600 else ("h", 3600)
    figure = _pyplot().figure(figsize=(9, min(12, 1.6 + 0.2 * len(started))))
    axes = figure.subplots()
    handles: dict[str, Any] = {}
    for trial in started:
        begin = (trial.datetime_start - origin).total_seconds() / scale
        end = ((trial.datetime_complete or last) - origin).total_seconds() / scale
        label, style = _timeline_style(trial)
        handles[label] = axes.barh(trial.number, max(end - begin, span_s / scale / 400), left=begin, height=0.7,
                                   **style)
    axes.invert_yaxis()  # trial 0 on top, as in the tables
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.set_xlabel(f"time since the first trial started ({unit})")
    axes.set_ylabel("trial")
    axes.grid(alpha=0.3)
    axes.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return figure


def _timeline_style(trial: optuna.trial.FrozenTrial) -> tuple[str, dict[str, Any]]:
    state = trial.state.name
    if state == "COMPLETE":
        if trial.user_attrs.get(records.ROLE) == records.ROLE_BASELINE:
            return "baseline", {"color": "black"}
        controller = trial.user_attrs.get(records.CONTROLLER, "unknown")
        return f"{controller}: complete", {"color": CONTROLLER_COLORS.get(controller, UNKNOWN_CONTROLLER_COLOR)}
    if state == "FAIL":
        if is_interrupted(trial):
            return "interrupted", {"color": "orange"}
        return "failed", {"color": "crimson"}
    if state == "PRUNED":
        if is_stopped(trial):
            return "stopped at a rung", {"color": "darkgrey"}
        return "pruned by a constraint", {"color": "tan"}
    return f"{state.lower()} (no end yet)", {"facecolor": "white", "edgecolor": "grey", "hatch": "///"}


FIGURES = (
    Figure("history", "Optimization history",
           "Each dot is a complete candidate's reward, coloured by the controller that proposed it; the step line is "
           "that controller's best so far. The dashed line is the baseline's reward (its accuracy, since its S and "
           "P normalize everyone else's): a controller is worth its cost once its line stays above it. Crosses on "
           "the trial axis are failed trials.",
           _draw_history),
    Figure("curves", "Learning curves",
           "Each line is one trial's reward at the rungs (the epochs where successive halving compares the trials "
           "that reached them, dotted) against the epoch of its proxy training. A grey line that ends in a cross "
           "is a trial stopped at that rung: its reward there was below the cutoff of the trials it was compared "
           "with, and it trained no further. Blue lines are trials that trained in full; they reach their final "
           "reward at the last epoch. The red line is the winner, the dashed black one the baseline. Only complete "
           "trials can win: a stopped trial's reward is that of a shorter training.",
           _draw_curves, shown=has_curves),
    Figure("tradeoffs", "Accuracy, step time and size",
           "Every complete trial by proxy accuracy against training step time (relative to the baseline's) and "
           "against parameters. Orange points are the Pareto front over all three (no other trial is at least as "
           "accurate, as fast and as small; nas best --pareto lists them); the dotted line is the front of the "
           "two quantities of each panel. The star is the baseline, the red ring the winner by reward: up and to "
           "the left is better. Numbers are trial numbers of the winner (red), the baseline and the front, where a "
           "label fits without covering another.",
           _draw_tradeoffs),
    Figure("decisions", "What the controller learned, per stage",
           "For each stage and decision, how often each choice occurs among all candidates the controllers "
           "proposed (grey) and among the top 10% by reward (blue); n is the number of candidates in each group. "
           "A choice that the top trials share far more often than the rest is one the reward favours on this "
           "data and device. These bars show what was sampled; where the campaign's controller is RL (or "
           "evolution), the hatched bars show what it prefers now: the policy's probabilities (or the current "
           "population's shares), rebuilt from the study.",
           _draw_decisions),
    Figure("timeline", "Trials over time",
           "One bar per trial from its start to its end: coloured by controller when it completed, black for the "
           "baseline, red when it failed, orange when it was interrupted (it runs once more), grey when successive "
           "halving stopped it at a rung, tan when a constraint pruned it; hatched bars are trials still running. "
           "Overlapping bars are trials that ran at once on different workers.",
           _draw_timeline),
)


# --- HTML -----------------------------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; } .summary { color: #555; }
nav { font-size: 0.9em; margin: 0.5em 0 1em; } nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.changed { font-weight: bold; background: #fff6e0; }
tr.stopped td { color: #777; font-style: italic; }
figure { margin: 0.5em 0; } figure img { max-width: 100%; } figcaption, .note { color: #555; max-width: 80em; }
.missing { color: #a33; font-style: italic; }
.verdict { font-size: 1.15em; max-width: 60em; }
.warning { background: #fff3cd; border-left: 4px solid #e0a800; padding: 0.4em 0.8em; max-width: 80em; }
code { background: #f4f4f4; padding: 0.1em 0.3em; }
.scroll { max-height: 40em; overflow: auto; border: 1px solid #eee; margin: 0.5em 0 1em; }
.scroll table { margin: 0; } .scroll th { position: sticky; top: 0; } #all-trials td { white-space: nowrap; }
table.sortable th { cursor: pointer; user-select: none; white-space: nowrap; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; }
"""
# Sorts a table.sortable by the column whose header is clicked (or focused and given Enter): ascending first, then
# descending; each cell's data-sort holds its raw value (numbers compare as numbers, text as text) and empty ones
# (missing values) stay last either way. Array.prototype.sort is stable, so ties keep their order.
_SCRIPT = """
function compareCells(a, b, ascending) {
  if (a === "" || b === "") return (a === "") - (b === "");
  const x = Number(a), y = Number(b);
  const order = !isNaN(x) && !isNaN(y) ? x - y : a.localeCompare(b);
  return ascending ? order : -order;
}
function sortTable(table, column) {
  const header = table.tHead.rows[0].cells[column];
  const ascending = header.getAttribute("aria-sort") !== "ascending";
  for (const cell of table.tHead.rows[0].cells) cell.removeAttribute("aria-sort");
  header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => compareCells(a.cells[column].dataset.sort, b.cells[column].dataset.sort, ascending));
  body.append(...rows);
}
for (const table of document.querySelectorAll("table.sortable")) {
  Array.from(table.tHead.rows[0].cells).forEach((header, column) => {
    header.tabIndex = 0;
    header.addEventListener("click", () => sortTable(table, column));
    header.addEventListener("keydown", event => {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortTable(table, column); }
    });
  });
}
"""
_NUMBER = re.compile(r"[-+]?[\d,]*\.?\d+(e[-+]?\d+)?")
_SECTIONS = (
    ("verdict", "Verdict"), ("history", "Optimization history"), ("curves", "Learning curves"),
    ("tradeoffs", "Accuracy, step time and size"),
    ("decisions", "What the controller learned, per stage"), ("trials", "All trials"),
    ("architectures", "Baseline and winner"), ("failures", "Failures"), ("settings", "Campaign settings and device"),
)
TRIALS_TABLE_HEADERS = (
    "trial", "state", "epochs", "role", "controller", "reward", "A", "S/S₀", "step time (ms)", "step time IQR (ms)",
    "parameters", "P/P₀", "duration (s)", "architecture", "failure reason",
)


def _page(snapshot: StudySnapshot, not_drawn: Mapping[str, str]) -> str:
    figures = {figure.name: None if figure.shown is not None and not figure.shown(snapshot)
               else _figure_html(figure, not_drawn.get(figure.name)) for figure in FIGURES}
    name = _text(snapshot.study.study_name)
    bodies = {  # a section whose body is None does not belong in this study's report
        "verdict": _verdict(snapshot),
        "history": figures["history"],
        "curves": figures["curves"],
        "tradeoffs": figures["tradeoffs"],
        "decisions": figures["decisions"] + _decisions_note(snapshot) + _top_table(snapshot),
        "trials": _trials_table(snapshot),
        "architectures": _architectures(snapshot),
        "failures": _failures(snapshot) + figures["timeline"],
        "settings": _settings(snapshot),
    }
    sections = [(anchor, title) for anchor, title in _SECTIONS if bodies[anchor] is not None]
    navigation = " ".join(f'<a href="#{anchor}">{_text(title)}</a>' for anchor, title in sections)
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>nas report: {name}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Search report: {name}</h1>",
        f'<p class="summary">{_text(_summary(snapshot))}</p>',
        f"<nav>{navigation}</nav>",
        *(_section(anchor, title, bodies[anchor]) for anchor, title in sections),
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
        "",
    ])


def _summary(snapshot: StudySnapshot) -> str:
    states = Counter("stopped" if is_stopped(trial) else trial.state.name for trial in snapshot.trials)
    parts = [f"space {snapshot.attributes.get(records.SPACE_NAME, '?')}",
             f"{len(snapshot.trials)} trials ({', '.join(f'{count} {state}' for state, count in states.items())})"]
    if snapshot.winner is not None:
        parts.append(f"best reward {snapshot.winner.value:.4f} (trial {snapshot.winner.number})")
    halving = halving_summary(snapshot)
    if halving is not None:
        parts.append(halving.line())
    span = _campaign_span(snapshot.trials)
    if span is not None:
        parts.append(f"wall time {_duration(span.seconds)}" + (" so far" if span.running else ""))
    return "; ".join(parts)


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_text(title)}</h2>\n{body}\n</section>'


def _figure_html(figure: Figure, reason: str | None) -> str:
    if reason is not None:
        return f'<p class="missing" id="missing-{figure.name}">{_text(figure.title)}: not drawn, {_text(reason)}.</p>'
    return (f'<figure id="figure-{figure.name}"><img src="{figure.name}.png" alt="{_text(figure.title)}">'
            f"<figcaption>{_text(figure.caption)}</figcaption></figure>")


# --- the verdict ----------------------------------------------------------------------------------------------------


def _verdict(snapshot: StudySnapshot) -> str:
    """Who won and by how much: the winner against the baseline, the top trials' rewards as products of their
    factors, whether the lead is inside the step-time noise, and where the winner's spec is."""
    winner, baseline = snapshot.winner, snapshot.baseline_trial
    if winner is None:
        return "\n".join(['<p class="missing verdict" id="verdict-line">No trial has completed yet: no verdict.</p>',
                          _halving(snapshot)])
    parts = [_verdict_line(snapshot), _halving(snapshot)]
    if baseline is not None and baseline.value is not None:
        versus = snapshot.candidates[0] if winner.number == baseline.number and snapshot.candidates else winner
        rows = [["baseline", *_versus_row(baseline)]]
        if versus.number != baseline.number:
            rows.append(["winner" if versus is winner else "best candidate", *_versus_row(versus)])
        parts.append(_table("verdict-table", ("", "trial", "controller", "A", "S/S₀", "P/P₀", "reward"), rows))
    parts.append(_factor_table(snapshot))
    factors = _factors(snapshot)
    if len(factors) >= 2:
        parts.append(_lead(factors[0], factors[1]))
    parts.append(f'<p class="note" id="noise-definition">{_text(NOISE_DEFINITION)}</p>')
    parts.append(_export(snapshot))
    return "\n".join(parts)


def _verdict_line(snapshot: StudySnapshot) -> str:
    winner, baseline = snapshot.winner, snapshot.baseline_trial
    if baseline is not None and winner.number == baseline.number:
        if not snapshot.candidates:
            return (f'<p class="verdict" id="baseline-wins">Only the baseline (trial {baseline.number}, reward '
                    f"{baseline.value:.4f}) has completed: no candidate to compare with yet.</p>")
        best = snapshot.candidates[0]
        return (f'<p class="verdict warning" id="baseline-wins"><strong>No candidate beat the baseline.</strong> '
                f"The baseline (trial {baseline.number}) keeps the highest reward, {baseline.value:.4f} (its "
                f"accuracy); the best of {len(snapshot.candidates)} complete candidates, trial {best.number} "
                f"({_text(_controller(best))}), reached {best.value:.4f}. Search longer, or reconsider the space "
                "or the reward's exponents.</p>")
    attributes = winner.user_attrs
    text = (f"<strong>Trial {winner.number} ({_text(_controller(winner))}) wins</strong> with reward "
            f"{winner.value:.4f}")
    if baseline is not None and baseline.value is not None:
        text += (f" against the baseline's {baseline.value:.4f} (trial {baseline.number}): proxy accuracy A "
                 f"{_number(attributes.get(records.ACCURACY))} against "
                 f"{_number(baseline.user_attrs.get(records.ACCURACY))}, step time "
                 f"S/S₀ {_number(attributes.get(records.NORMALIZED_STEP_TIME), 3)} and parameters "
                 f"P/P₀ {_number(attributes.get(records.NORMALIZED_PARAMETERS), 3)} of the baseline's")
    return f'<p class="verdict" id="verdict-line">{text}.</p>'


def _halving(snapshot: StudySnapshot) -> str:
    """What successive halving stopped and saved, in a sentence (empty when the campaign ran without it)."""
    halving = halving_summary(snapshot)
    if halving is None:
        return ""
    settings = halving.settings()
    text = (f"<strong>{_text(halving.line()[:1].upper() + halving.line()[1:])}</strong>"
            + (f" ({_text(settings)})" if settings else "") + ". ")
    if halving.stopped:
        text += ("A stopped trial's accuracy and reward are those at the rung it stopped at (state "
                 "<code>stopped@E</code> in the tables), and it is never the winner: only trials that trained in "
                 "full compete on reward.")
    else:
        text += "No trial has been stopped at a rung yet."
    if halving.full_budget_epochs is None:
        text += " The study does not record the campaign's epochs, so the full budget is unknown."
    return f'<p class="note" id="halving">{text}</p>'


def _versus_row(trial: optuna.trial.FrozenTrial) -> list[Any]:
    attributes = trial.user_attrs
    return [trial.number, _controller(trial), _number(attributes.get(records.ACCURACY)),
            _number(attributes.get(records.NORMALIZED_STEP_TIME)),
            _number(attributes.get(records.NORMALIZED_PARAMETERS)), _number(trial.value)]


def _factor_table(snapshot: StudySnapshot) -> str:
    """The top :data:`FACTOR_ROWS` trials' rewards as products of their factors (the baseline's row added when it
    is not among them), with each step time's median, spread and the reward noise it implies."""
    if snapshot.exponents is None:
        return ('<p class="missing" id="missing-factors">The study records no reward exponents (w, v), so the '
                "rewards cannot be broken into their factors.</p>")
    factors = _factors(snapshot)
    shown = factors[:FACTOR_ROWS]
    baseline = snapshot.baseline_trial
    shown += [factor for factor in factors[FACTOR_ROWS:] if baseline is not None and factor.trial is baseline]
    if not shown:
        return ""
    w, v = snapshot.exponents
    rank = {trial.number: index + 1 for index, trial in enumerate(snapshot.ranked)}
    headers = ("rank", "trial", "role", "controller", "A", "S/S₀", "step time (ms)", "step time IQR (ms)",
               f"(S/S₀)^{w:g}", "P/P₀", f"(P/P₀)^{v:g}", "reward = product", "noise ±δ")
    rows = [
        [rank[factor.trial.number], factor.trial.number,
         factor.trial.user_attrs.get(records.ROLE, records.ROLE_CANDIDATE), _controller(factor.trial),
         f"{factor.accuracy:.4f}", f"{factor.step_time_ratio:.4f}", _milliseconds(factor.step_time_s),
         _milliseconds(factor.step_time_iqr_s), f"{factor.step_time_factor:.4f}", f"{factor.params_ratio:.4f}",
         f"{factor.params_factor:.4f}", f"{factor.product:.4f}",
         None if factor.noise is None else f"{factor.noise:.4f}"]
        for factor in shown
    ]
    return (f"<h3>Why: each reward as the product of its factors, the best {len(factors[:FACTOR_ROWS])}</h3>"
            + _table("factors", headers, rows)
            + f'<p class="note">reward = A · (S/S₀)<sup>w</sup> · (P/P₀)<sup>v</sup> with w = {w:g} and v = {v:g} '
              "(the campaign's settings): a factor above 1 raises the reward (faster or smaller than the "
              "baseline), below 1 lowers it. The step time is the median of the timed windows, its IQR their "
              "interquartile range; δ is the reward's step-time noise defined below.</p>")


def _lead(first: RewardFactors, second: RewardFactors) -> str:
    """What separates the best two trials (which factor gives the leader its lead) and whether the lead is
    larger than their step-time noise."""
    a, b, gap = first.trial.number, second.trial.number, first.reward - second.reward
    parts = []
    factors = {"accuracy A": (first.accuracy, second.accuracy),
               "the step-time factor (S/S₀)^w": (first.step_time_factor, second.step_time_factor),
               "the parameter factor (P/P₀)^v": (first.params_factor, second.params_factor)}
    if all(theirs > 0 and ours > 0 for ours, theirs in factors.values()):
        ratios = {name: ours / theirs for name, (ours, theirs) in factors.items()}
        decisive = max(ratios, key=lambda name: ratios[name])
        listed = ", ".join(f"{name} ×{ratio:.4f}" for name, ratio in ratios.items())
        parts.append(f'<p id="why">Trial {a} against the runner-up, trial {b}: {_text(listed)} (the ratios of its '
                     f"factors to trial {b}'s), so its reward is ×{first.reward / second.reward:.4f} "
                     f"(+{gap:.4f}). The largest gain is in {_text(decisive)}.</p>")
    verdict = within_noise(first, second)
    if verdict is None:
        unknown = " and ".join(f"trial {factor.trial.number}" for factor in (first, second) if factor.noise is None)
        parts.append(f'<p class="note" id="noise-unknown">The step-time spread of {unknown} is not recorded, so '
                     "whether the lead is inside the timing noise cannot be judged.</p>")
    elif verdict:
        parts.append(
            f'<p class="warning" id="noise-note"><strong>Within the noise:</strong> trial {a} leads trial {b} by '
            f"{gap:.4f} in reward, less than their step-time noise δ = {first.noise:.4f} + {second.noise:.4f} = "
            f"{first.noise + second.noise:.4f}. Timing the two again could swap them: treat them as tied, and "
            "choose on accuracy, size or a longer timing (nas bench) rather than on this ranking.</p>")
    else:
        parts.append(
            f'<p class="note" id="noise-clear">Trial {a} leads trial {b} by {gap:.4f} in reward, more than their '
            f"step-time noise δ = {first.noise:.4f} + {second.noise:.4f} = {first.noise + second.noise:.4f}: the "
            "order holds against the timing noise.</p>")
    return "\n".join(parts)


def _export(snapshot: StudySnapshot) -> str:
    """Where the winner's spec is: the file ``nas search`` last wrote it to, as the study records it
    (:data:`~nas.records.EXPORTED_SPEC`, an absolute path), else the default path it writes; and the ``nas export``
    command that writes the spec again."""
    winner = snapshot.winner
    if winner is None or records.SPEC not in winner.user_attrs:
        return ""
    name = snapshot.study.study_name
    command = ["nas", "export", "--study", name]
    storage = snapshot.campaign.get("storage")
    masked = mask_url(storage) if isinstance(storage, str) and storage else None
    if masked is not None:
        command += ["--storage", masked]
    command += ["--trial", str(winner.number), "-o", f"{name}-trial{winner.number}.yaml"]
    password = " (with the storage's password in place of ***)" if masked is not None and masked != storage else ""
    exported = snapshot.attributes.get(records.EXPORTED_SPEC)
    if isinstance(exported, str) and exported:
        where = (f"<code>nas search</code> wrote the best trial's spec, as of the end of its last run, to "
                 f"<code>{_text(exported)}</code> (the path the study records; the file may have moved since).")
    else:
        where = (f"<code>nas search</code> writes the best trial's spec to <code>{_text(f'runs/{name}-best.yaml')}"
                 "</code> when its run ends (relative to the directory it ran in; <code>--export PATH</code> names "
                 "another file); this study does not record the path (it was written before the path was "
                 "recorded, or no search has ended on it).")
    return (f'<p class="note" id="export">The winner\'s spec: {where} To write trial {winner.number}\'s spec '
            f"again{password}: <code>{_text(shlex.join(command))}</code></p>")


def _controller(trial: optuna.trial.FrozenTrial) -> str:
    if trial.user_attrs.get(records.ROLE) == records.ROLE_BASELINE:
        return "baseline"
    return str(trial.user_attrs.get(records.CONTROLLER, "?"))


def _number(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if _is_real(value) else "-"


def _milliseconds(seconds: float | None) -> str | None:
    return None if seconds is None else f"{seconds * 1e3:.2f}"


# --- the other sections ---------------------------------------------------------------------------------------------


def _decisions_note(snapshot: StudySnapshot) -> str:
    """The sample sizes behind the per-decision bars, a warning when the top group is small, and what the
    hatched bars are."""
    space, top = snapshot.space, snapshot.top
    if space is None or not top:
        return ""
    proposed = _proposed(snapshot, space)
    parts = [(f'<p class="note" id="decisions-sample">Sample sizes: all candidates n = {len(proposed)}; the top '
              f"{TOP_FRACTION:.0%} by reward n = {len(top)} (of {len(snapshot.candidates)} complete candidates, "
              "rounded up).</p>")]
    if len(top) < SMALL_SAMPLE:
        parts.append(f'<p class="warning" id="decisions-small-sample">{_text(_small_sample_warning(len(top)))}</p>')
    controller = snapshot.campaign.get("controller")
    if controller in ("rl", "evolution"):
        what = ("the RL policy's probabilities now, rebuilt from the study: what it proposes next"
                if controller == "rl" else "the shares of each choice in the evolution controller's population now, "
                                           "from which it draws its next parents")
        parts.append(f'<p class="note" id="decisions-preferences">Grey and blue bars show what was sampled; the '
                     f"hatched bars show {what}.</p>")
    return "\n".join(parts)


def _top_table(snapshot: StudySnapshot) -> str:
    if not snapshot.top:
        return ""
    frame = trials_frame(snapshot.study, snapshot.top)
    rows = frame[list(TOP_TABLE_COLUMNS)].itertuples(index=False)
    return (f"<h3>The top {TOP_FRACTION:.0%} of {len(snapshot.candidates)} complete candidates</h3>"
            + _table("top-trials", TOP_TABLE_COLUMNS, rows))


def _trials_table(snapshot: StudySnapshot) -> str:
    """Every trial, one row each in trial order, sortable in the page by any column (click its header)."""
    if not snapshot.trials:
        return '<p class="missing" id="missing-trials">The study has no trials yet.</p>'
    from pandas import isna

    frame = trials_frame(snapshot.study, snapshot.trials)
    rows = []
    for trial, row in zip(snapshot.trials, frame.to_dict("records")):
        row = {key: None if not isinstance(value, (list, tuple)) and isna(value) else value
               for key, value in row.items()}
        iqr = trial.user_attrs.get(records.STEP_TIME_IQR_S)
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        epochs = trial.user_attrs.get(records.EPOCHS_COMPLETED)
        rows.append([
            row["number"], row["state"], epochs if _is_real(epochs) else None, row["role"], row["controller"],
            row["reward"], row["accuracy"],
            row["normalized_step_time"], row["step_time_ms"], iqr * 1e3 if _is_real(iqr) else None,
            row["parameters"], row["normalized_parameters"], duration, row["architecture"] or None,
            row["failure_reason"],
        ])
    stopped = ["stopped" if is_stopped(trial) else None for trial in snapshot.trials]
    note = ""
    if any(stopped):
        note = (' Rows in grey italics are trials successive halving stopped at a rung (state <code>stopped@E</code>, '
                "after epoch E): their A and reward are those at that rung, not after a full training, and they "
                "never win.")
    table = _table("all-trials", TRIALS_TABLE_HEADERS, rows, sortable=True, row_classes=stopped)
    return ('<p class="note" id="trials-note">Click a column\'s header to sort by it (again for the reverse order); '
            f'missing values stay last.{note}</p><div class="scroll">{table}</div>')


def _architectures(snapshot: StudySnapshot) -> str:
    baseline, winner = snapshot.baseline_trial, snapshot.winner
    baseline_rows = _stage_rows(baseline)
    parts = [_architecture("baseline", "Baseline", baseline, baseline_rows, None)]
    if winner is not None and baseline is not None and winner.number == baseline.number:
        parts.append('<p class="note">The baseline is still the best trial by reward.</p>')
    parts.append(_architecture("winner", "Winner by reward", winner, _stage_rows(winner), baseline_rows))
    return "\n".join(parts)


def _stage_rows(trial: optuna.trial.FrozenTrial | None) -> list[list[Any]] | None:
    if trial is None or records.SPEC not in trial.user_attrs:
        return None
    spec = trial_spec(trial)
    return stage_rows(spec, spec_complexity(spec).stage_parameters)


def _architecture(
    role: str, title: str, trial: optuna.trial.FrozenTrial | None, rows: list[list[Any]] | None,
    reference: list[list[Any]] | None,
) -> str:
    """A stage table, the cells that differ from ``reference`` (the baseline's) highlighted."""
    if trial is None or rows is None:
        return f'<h3>{title}</h3><p class="missing" id="missing-stages-{role}">No {role} trial with a spec yet.</p>'
    changed = set()
    if reference is not None and len(reference) == len(rows):
        changed = {(row, column) for row, (new, old) in enumerate(zip(rows, reference))
                   for column, (a, b) in enumerate(zip(new, old)) if a != b}
    return (f"<h3>{title}: trial {trial.number}</h3>"
            f'<p class="note">{_text(_measurements(trial))}</p>'
            + _table(f"stages-{role}", STAGE_TABLE_HEADERS, rows, changed))


def _measurements(trial: optuna.trial.FrozenTrial) -> str:
    attributes = trial.user_attrs
    if trial.state.name != "COMPLETE":
        return f"{trial.state.name}: {attributes.get(records.FAILURE_REASON, 'no result')}"
    return (f"accuracy {attributes[records.ACCURACY]:.4f}, step time {attributes[records.STEP_TIME_S] * 1e3:.2f} ms "
            f"({attributes[records.NORMALIZED_STEP_TIME]:.2f}x the baseline's), "
            f"{attributes[records.PARAMETERS]:,} parameters "
            f"({attributes[records.NORMALIZED_PARAMETERS]:.2f}x), reward {trial.value:.4f}, "
            f"on {attributes.get(records.DEVICE, '?')}")


def _failures(snapshot: StudySnapshot) -> str:
    """Failed trials grouped by the kind of reason (the text before the first colon: ``out of memory``, ...)."""
    groups: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for trial in snapshot.trials:
        if trial.state.name == "FAIL":
            reason = trial.user_attrs.get(records.FAILURE_REASON) or "no reason recorded"
            groups.setdefault(reason.split(":", 1)[0], []).append(trial)
    if not groups:
        return '<p class="note" id="no-failures">No trial failed.</p>'
    rows = [
        [kind, len(trials), ", ".join(str(trial.number) for trial in trials),
         trials[0].user_attrs.get(records.FAILURE_REASON, "")]
        for kind, trials in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    ]
    return (_table("failures", ("reason", "trials", "trial numbers", "first message"), rows)
            + '<p class="note">Failures are data: the campaign goes on and the RL controller learns a reward of 0 '
              "from them. Interrupted trials (a worker or the driver stopped) are not the candidate's fault: they "
              "do not count toward the budget and run once more.</p>")


@dataclass(frozen=True)
class _Span:
    """When a campaign ran: its first trial's start, its last recorded end, and the trials' own time summed."""

    start: datetime
    end: datetime
    trial_seconds: float
    running: int

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


def _campaign_span(trials: Sequence[optuna.trial.FrozenTrial]) -> _Span | None:
    """The campaign's wall time from its trials' datetimes (pauses between runs of the search included); while
    trials run, up to the last recorded start or end. None before any trial started."""
    started = [trial for trial in trials if trial.datetime_start is not None]
    if not started:
        return None
    return _Span(
        start=min(trial.datetime_start for trial in started),
        end=max(trial.datetime_complete or trial.datetime_start for trial in started),
        trial_seconds=sum(trial.duration.total_seconds() for trial in started if trial.duration is not None),
        running=sum(trial.state.name == "RUNNING" for trial in started),
    )


def _duration(seconds: float) -> str:
    """``42.0 s``, ``12 min 05 s``, ``3 h 07 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def _wall_time(snapshot: StudySnapshot) -> str:
    span = _campaign_span(snapshot.trials)
    if span is None:
        return "- (no trial has started)"
    text = (f"{_duration(span.seconds)}, from the first trial's start ({span.start:%Y-%m-%d %H:%M:%S}) to the "
            f"last trial's end ({span.end:%Y-%m-%d %H:%M:%S}), pauses between runs of the search included; "
            f"{_duration(span.trial_seconds)} of trial time in all")
    if span.running:
        text += f"; {span.running} trial{'s' if span.running != 1 else ''} still running, so the time so far"
    return text


def _settings(snapshot: StudySnapshot) -> str:
    """Where the numbers come from (study, storage, space, devices, time), then the campaign's settings as the
    study holds them."""
    attributes = snapshot.attributes
    space, baseline = snapshot.space, records.study_baseline(attributes)
    devices = sorted({trial.user_attrs[records.DEVICE] for trial in snapshot.trials
                      if records.DEVICE in trial.user_attrs})
    exponents = snapshot.exponents
    device_rows = [
        ["study", snapshot.study.study_name],
        ["storage", snapshot.storage],
        ["search space", f"{attributes.get(records.SPACE_NAME, '?')} "
                         f"(fingerprint {attributes.get(records.SPACE_FINGERPRINT, '?')}"
                         + (f", {space.size:,} architectures)" if space is not None else ")")],
        ["reward", "A·(S/S₀)^w·(P/P₀)^v, exponents not recorded" if exponents is None
         else f"A·(S/S₀)^{exponents[0]:g}·(P/P₀)^{exponents[1]:g}"],
        ["baseline's device", (baseline.device if baseline is not None else None) or "-"],
        ["devices of the trials", "; ".join(devices) or "-"],
        ["trials recorded", len(snapshot.trials)],
        ["campaign wall time", _wall_time(snapshot)],
    ]
    setting_rows = [
        # any URL is masked (reports get shared); an unset storage is the default one, spelled out
        [key, snapshot.storage if key == "storage" and value is None
         else mask_url(value) if isinstance(value, str) else value]
        for key, value in _flatten(snapshot.campaign)
    ]
    settings = (_table("settings", ("setting", "value"), setting_rows) if setting_rows else
                '<p class="missing" id="missing-settings">The study records no campaign settings.</p>')
    return (_table("device", ("", "value"), device_rows)
            + "<h3>Campaign settings (budget, controller, workers, proxy training)</h3>" + settings)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            items.extend(_flatten(value, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", value))
    return items


def _table(
    table_id: str, headers: Sequence[str], rows: Iterable[Sequence[Any]],
    highlight: Container[tuple[int, int]] = frozenset(), *, sortable: bool = False,
    row_classes: Sequence[str | None] = (),
) -> str:
    """An HTML table; ``sortable`` gives every cell its raw value as ``data-sort``, for the page's sort script;
    ``row_classes`` gives row i the class ``row_classes[i]`` where it is not None."""

    def row_tag(row: int) -> str:
        name = row_classes[row] if row < len(row_classes) else None
        return "<tr>" if name is None else f'<tr class="{_text(name)}">'

    head = "".join(f'<th scope="col">{_text(header)}</th>' for header in headers)
    body = "\n".join(
        row_tag(row) + "".join(_cell(value, (row, column) in highlight, sortable)
                               for column, value in enumerate(values))
        + "</tr>"
        for row, values in enumerate(rows)
    )
    classes = ' class="sortable"' if sortable else ""
    return f'<table id="{table_id}"{classes}><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


def _cell(value: Any, changed: bool, sortable: bool = False) -> str:
    text = _format(value)
    classes = (["num"] if _NUMBER.fullmatch(text) else []) + (["changed"] if changed else [])
    attributes = f' class="{" ".join(classes)}"' if classes else ""
    if sortable:
        attributes += f' data-sort="{_text(_sort_key(value))}"'
    return f"<td{attributes}>{_text(text)}</td>"


def _sort_key(value: Any) -> str:
    """A cell's raw value for the sort script: numbers in full (no thousands separator), missing values empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    return str(value)


def _format(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, numbers.Integral):  # numpy's integers too, as pandas hands them out
        return f"{value:,}"
    if isinstance(value, numbers.Real):
        return f"{value:.4g}"
    return str(value)


def _text(value: Any) -> str:
    return html.escape(str(value), quote=True)
