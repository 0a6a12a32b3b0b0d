"""The figures of the report, drawn with matplotlib from a :class:`~nas.trials.StudySnapshot`.

One function per figure (:data:`FIGURES`), all in one style (:data:`FIGURE_STYLE`) on the Agg backend, imported
only when a report is drawn: reports are written without a display. A figure the study cannot support yet raises
:class:`NotDrawable` with the sentence the page shows instead. The numbers come from :mod:`nas.trials`,
:mod:`nas.halving` and :mod:`rewards`; this module only draws them, and :mod:`nas.report` puts them on the page.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from nas import records
from nas.states import is_baseline, is_interrupted, is_stopped
from nas.trials import Preferences, StudySnapshot, trial_training
from search_spaces.files import Content
from search_spaces.space import DECISION_FIELDS, Decision

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure as PlotFigure

TOP_FRACTION = 0.1  # the decisions of the best tenth of the candidates are compared with those of all of them
#: Below this many trials in the top group, the per-decision bars carry a warning: shares of so few say little.
SMALL_SAMPLE = 5
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


class NotDrawable(Exception):
    """A figure the study cannot support yet; the message says why, in the report's words."""


@dataclass(frozen=True)
class Figure:
    """One figure of the report: its file is ``NAME.png``; its caption, which tells how to read it, is in the
    template ``macros.html``."""

    name: str
    title: str
    draw: Callable[[StudySnapshot], PlotFigure]
    #: Whether the figure belongs in this study's report at all (None: always). A figure that does not belong is
    #: neither drawn nor mentioned, and its section is left out; one that belongs but cannot be drawn yet raises
    #: :class:`NotDrawable` and gets a sentence saying why.
    shown: Callable[[StudySnapshot], bool] | None = None


def draw_figures(
    snapshot: StudySnapshot, directory: Path, write: Callable[[Path, Content], Path]
) -> tuple[tuple[Path, ...], dict[str, str]]:
    """Draws every figure that belongs in ``snapshot``'s report as ``directory/NAME.png`` through ``write`` (the
    report's writer, which removes what it wrote if the report fails); returns the files written and, by figure
    name, why each figure that belongs could not be drawn yet."""
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
                drawn.append(write(directory / f"{figure.name}.png", save))
            finally:
                pyplot.close(plot)
    return tuple(drawn), not_drawn


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


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
        last = trial_training(trial).epochs_trained(full)
        if last is not None and (not points or last > points[-1][0]):
            points.append((last, trial.value))
    return [epoch for epoch, _ in points], [reward for _, reward in points]


def _draw_curves(snapshot: StudySnapshot) -> PlotFigure:
    """Each trial's reward at the rungs against the epoch, one line per trial: stopped trials' lines end at their
    rung with a cross, complete ones' reach their final reward; the winner and the baseline drawn and labelled
    apart. Every trial's line has the gid ``trial-N``."""
    if not snapshot.has_curves:
        raise NotDrawable("no trial has reported its reward at a rung")
    full = snapshot.full_epochs
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
    rungs = snapshot.rungs
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
    space, top = snapshot.space, snapshot.top(TOP_FRACTION)
    if space is None:
        raise NotDrawable("the study does not record its search space")
    if not top:
        raise NotDrawable("no candidate has completed yet")
    proposed = snapshot.proposed(space)
    preferences = snapshot.preferences(space)
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
            hatched = {"facecolor": "white", "edgecolor": "black", "hatch": "///"}
            series.append((preferences.shares[decision.name], hatched, _preferences_label(preferences)))
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
        figure.text(0.5, 1 - 0.42 / figure.get_figheight(), small_sample_warning(len(top)), ha="center",
                    va="top", color="crimson", fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.7 / figure.get_figheight()))
    return figure


def _preferences_label(preferences: Preferences) -> str:
    if preferences.controller == "rl":
        return "RL policy now (what it proposes next)"
    return f"evolution's population now (n = {preferences.population})"


def small_sample_warning(size: int) -> str:
    """The warning over the per-decision bars (and in the page) when the top group is too small to say much."""
    return (f"The top group holds only {size} candidate{'s' if size != 1 else ''} (fewer than {SMALL_SAMPLE}): "
            f"its shares can only be multiples of 1/{size} and say little about what the reward favours.")


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
        if is_baseline(trial):
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
    Figure("history", "Optimization history", _draw_history),
    Figure("curves", "Learning curves", _draw_curves, shown=lambda snapshot: snapshot.has_curves),
    Figure("tradeoffs", "Accuracy, step time and size", _draw_tradeoffs),
    Figure("decisions", "What the controller learned, per stage", _draw_decisions),
    Figure("timeline", "Trials over time", _draw_timeline),
)
