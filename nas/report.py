"""A campaign as people judge it: the HTML report of ``nas report``.

Everything comes from the study, the campaign's single source of truth. :func:`write_report` writes
``report.html`` with PNG figures beside it, referenced by relative paths and styled inline, so the directory can be
copied, archived or opened from disk with no network: the optimization history by controller, accuracy against
normalized step time and against parameters with the Pareto front, the decisions of the top 10% of candidates
against those of all candidates, the trials over time, the baseline and the winner as stage tables, failures by
reason, and the campaign's settings and device. A figure the study cannot support yet (nothing completed, only the
baseline) is replaced by a sentence saying why; the report itself is always written.

Matplotlib is imported only when a report is drawn, on the Agg backend: reports are written without a display.
"""

from __future__ import annotations

import functools
import html
import math
import numbers
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Container, Iterable, Mapping, Sequence

from nas import records
from nas.measure import STAGE_TABLE_HEADERS, spec_complexity, stage_rows
from nas.storage import mask_url
from nas.study import is_interrupted, trial_spec
from nas.trials import best_trials, pareto_front, trials_frame
from search_spaces.files import Content, write_file
from search_spaces.space import DECISION_FIELDS, Decision, SearchSpace

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure as PlotFigure

REPORT_FILE = "report.html"
TOP_FRACTION = 0.1  # the decisions of the best tenth of the candidates are compared with those of all of them
TOP_TABLE_COLUMNS = (
    "number", "controller", "reward", "accuracy", "step_time_ms", "parameters", "normalized_step_time",
    "normalized_parameters", "architecture",
)
DPI = 100
#: One colour per controller, the same in every report; a study's unknown controller names share the last one.
CONTROLLER_COLORS = {"evolution": "tab:green", "random": "tab:brown", "rl": "tab:blue", "tpe": "tab:purple"}
UNKNOWN_CONTROLLER_COLOR = "tab:olive"
FIELD_TITLES = {"op": "op", "num_layers": "layers", "kernel_size": "kernel", "expand_ratio": "expansion"}
OP_LABELS = {"mbconv": "MBConv", "fused_mbconv": "Fused"}


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


@dataclass(frozen=True)
class Figure:
    """One figure of the report: its file is ``NAME.png``; the caption tells how to read it."""

    name: str
    title: str
    caption: str
    draw: Callable[[StudySnapshot], PlotFigure]


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
        with pyplot.rc_context():  # Optuna's plots switch the style; no figure's style leaks into the next one
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


# --- figures --------------------------------------------------------------------------------------------------------


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
    axes.set_ylabel("reward  A·(S/S₀)^w·(P/P₀)^v")
    axes.grid(alpha=0.3)
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return figure


def _draw_tradeoffs(snapshot: StudySnapshot) -> PlotFigure:
    """Accuracy against normalized step time and against parameters, the Pareto front marked."""
    measured = [
        trial for trial in snapshot.ranked
        if {records.ACCURACY, records.NORMALIZED_STEP_TIME, records.PARAMETERS} <= set(trial.user_attrs)
    ]
    if not measured:
        raise NotDrawable("no trial has completed yet")
    figure = _pyplot().figure(figsize=(11, 4.4))
    time_axes, size_axes = figure.subplots(1, 2, sharey=True)
    _tradeoff_panel(time_axes, snapshot, measured, "normalized_step_time")
    _tradeoff_panel(size_axes, snapshot, measured, "parameters")
    time_axes.set_xlabel("training step time / baseline's  (S/S₀)")
    size_axes.set_xlabel("parameters  P")
    time_axes.set_ylabel("proxy accuracy  A")
    values = [trial.user_attrs[records.PARAMETERS] for trial in measured]
    if max(values) > 10 * min(values):
        size_axes.set_xscale("log")
    size_axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
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
    for trial in front:
        axes.annotate(str(trial.number), point(trial), textcoords="offset points", xytext=(4, 4), fontsize=7)
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


def _draw_decisions(snapshot: StudySnapshot) -> PlotFigure:
    """Per stage and decision, the share of each choice among all candidates and among the top 10%."""
    space, top = snapshot.space, snapshot.top
    if space is None:
        raise NotDrawable("the study does not record its search space")
    if not top:
        raise NotDrawable("no candidate has completed yet")
    proposed = [
        trial for trial in snapshot.trials
        if trial.user_attrs.get(records.ROLE) != records.ROLE_BASELINE and not is_interrupted(trial)
        and all(decision.name in trial.params for decision in space.decisions)
    ]
    figure = _pyplot().figure(figsize=(3.0 * len(DECISION_FIELDS), 1.9 * len(space.stages) + 0.8))
    grid = figure.subplots(len(space.stages), len(DECISION_FIELDS), squeeze=False)
    for decision in space.decisions:
        axes = grid[decision.stage - 1][DECISION_FIELDS.index(decision.field)]
        positions = range(len(decision.choices))
        axes.bar([x - 0.2 for x in positions], _shares(proposed, decision), width=0.4, color="lightgrey",
                 label=f"all candidates ({len(proposed)})")
        axes.bar([x + 0.2 for x in positions], _shares(top, decision), width=0.4, color="tab:blue",
                 label=f"top {TOP_FRACTION:.0%} by reward ({len(top)})")
        axes.set_xticks(list(positions), [OP_LABELS.get(choice, str(choice)) for choice in decision.choices])
        axes.set_ylim(0, 1)
        axes.set_title(f"stage {decision.stage}: {FIELD_TITLES[decision.field]}", fontsize=9)
        axes.tick_params(labelsize=8)
    figure.legend(*grid[0][0].get_legend_handles_labels(), loc="upper center", ncol=2, fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.5 / figure.get_figheight()))
    return figure


def _shares(trials: Sequence[optuna.trial.FrozenTrial], decision: Decision) -> list[float]:
    counts = Counter(trial.params[decision.name] for trial in trials)
    return [counts[choice] / len(trials) if trials else 0.0 for choice in decision.choices]


def _draw_timeline(snapshot: StudySnapshot) -> PlotFigure:
    """Optuna's timeline: when each trial ran, on how many workers at once, and how it ended."""
    if not any(trial.datetime_start is not None for trial in snapshot.trials):
        raise NotDrawable("no trial has started yet")
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization.matplotlib import plot_timeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        axes = plot_timeline(snapshot.study)
    axes.figure.set_size_inches(9, min(12, 2 + 0.18 * len(snapshot.trials)))
    return axes.figure


FIGURES = (
    Figure("history", "Optimization history",
           "Each dot is a complete candidate's reward, coloured by the controller that proposed it; the step line is "
           "that controller's best so far. The dashed line is the baseline's reward (its accuracy, since its S and "
           "P normalize everyone else's): a controller is worth its cost once its line stays above it. Crosses on "
           "the trial axis are failed trials.",
           _draw_history),
    Figure("tradeoffs", "Accuracy, step time and size",
           "Every complete trial by proxy accuracy against training step time (relative to the baseline's) and "
           "against parameters. Orange points are the Pareto front over all three (no other trial is at least as "
           "accurate, as fast and as small; nas best --pareto lists them); the dotted line is the front of the "
           "two quantities of each panel. The star is the baseline, the red ring the winner by reward: up and to "
           "the left is better.",
           _draw_tradeoffs),
    Figure("decisions", "What the controller learned, per stage",
           "For each stage and decision, how often each choice occurs among all candidates the controller "
           "proposed (grey) and among the top 10% by reward (blue). A choice that the top trials share far more "
           "often than the rest is one the reward favours on this data and device.",
           _draw_decisions),
    Figure("timeline", "Trials over time",
           "Optuna's timeline: one bar per trial from start to end, coloured by how it ended; overlapping bars are "
           "trials that ran at once on different workers.",
           _draw_timeline),
)


# --- HTML -----------------------------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; } .summary { color: #555; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.changed { font-weight: bold; background: #fff6e0; }
figure { margin: 0.5em 0; } figure img { max-width: 100%; } figcaption, .note { color: #555; max-width: 80em; }
.missing { color: #a33; font-style: italic; }
"""
_NUMBER = re.compile(r"[-+]?[\d,]*\.?\d+(e[-+]?\d+)?")


def _page(snapshot: StudySnapshot, not_drawn: Mapping[str, str]) -> str:
    figures = {figure.name: _figure_html(figure, not_drawn.get(figure.name)) for figure in FIGURES}
    name = _text(snapshot.study.study_name)
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>nas report: {name}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Search report: {name}</h1>",
        f'<p class="summary">{_text(_summary(snapshot))}</p>',
        _section("history", "Optimization history", figures["history"]),
        _section("tradeoffs", "Accuracy, step time and size", figures["tradeoffs"]),
        _section("decisions", "What the controller learned, per stage", figures["decisions"] + _top_table(snapshot)),
        _section("architectures", "Baseline and winner", _architectures(snapshot)),
        _section("failures", "Failures", _failures(snapshot) + figures["timeline"]),
        _section("settings", "Campaign settings and device", _settings(snapshot)),
        "</body></html>",
        "",
    ])


def _summary(snapshot: StudySnapshot) -> str:
    states = Counter(trial.state.name for trial in snapshot.trials)
    parts = [f"space {snapshot.attributes.get(records.SPACE_NAME, '?')}",
             f"{len(snapshot.trials)} trials ({', '.join(f'{count} {state}' for state, count in states.items())})"]
    if snapshot.winner is not None:
        parts.append(f"best reward {snapshot.winner.value:.4f} (trial {snapshot.winner.number})")
    return "; ".join(parts)


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_text(title)}</h2>\n{body}\n</section>'


def _figure_html(figure: Figure, reason: str | None) -> str:
    if reason is not None:
        return f'<p class="missing" id="missing-{figure.name}">{_text(figure.title)}: not drawn, {_text(reason)}.</p>'
    return (f'<figure id="figure-{figure.name}"><img src="{figure.name}.png" alt="{_text(figure.title)}">'
            f"<figcaption>{_text(figure.caption)}</figcaption></figure>")


def _top_table(snapshot: StudySnapshot) -> str:
    if not snapshot.top:
        return ""
    frame = trials_frame(snapshot.study, snapshot.top)
    rows = frame[list(TOP_TABLE_COLUMNS)].itertuples(index=False)
    return (f"<h3>The top {TOP_FRACTION:.0%} of {len(snapshot.candidates)} complete candidates</h3>"
            + _table("top-trials", TOP_TABLE_COLUMNS, rows))


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


def _settings(snapshot: StudySnapshot) -> str:
    """Where the numbers come from (study, space, devices), then the campaign's settings as the study holds them."""
    attributes = snapshot.attributes
    space, baseline = snapshot.space, records.study_baseline(attributes)
    devices = sorted({trial.user_attrs[records.DEVICE] for trial in snapshot.trials
                      if records.DEVICE in trial.user_attrs})
    device_rows = [
        ["study", snapshot.study.study_name],
        ["search space", f"{attributes.get(records.SPACE_NAME, '?')} "
                         f"(fingerprint {attributes.get(records.SPACE_FINGERPRINT, '?')}"
                         + (f", {space.size:,} architectures)" if space is not None else ")")],
        ["baseline's device", (baseline.device if baseline is not None else None) or "-"],
        ["devices of the trials", "; ".join(devices) or "-"],
        ["trials recorded", len(snapshot.trials)],
    ]
    setting_rows = [
        [key, mask_url(value) if isinstance(value, str) else value]  # any URL: reports get shared
        for key, value in _flatten(attributes.get(records.CAMPAIGN) or {})
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
    highlight: Container[tuple[int, int]] = frozenset(),
) -> str:
    head = "".join(f"<th>{_text(header)}</th>" for header in headers)
    body = "\n".join(
        "<tr>" + "".join(_cell(value, (row, column) in highlight) for column, value in enumerate(values)) + "</tr>"
        for row, values in enumerate(rows)
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


def _cell(value: Any, changed: bool) -> str:
    text = _format(value)
    classes = (["num"] if _NUMBER.fullmatch(text) else []) + (["changed"] if changed else [])
    return f'<td class="{" ".join(classes)}">{_text(text)}</td>' if classes else f"<td>{_text(text)}</td>"


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
