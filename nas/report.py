"""A campaign as people judge it: the HTML report of ``nas report``, drawn from the study.

Everything comes from the study, the campaign's single source of truth, read once into a
:class:`~nas.trials.StudySnapshot`; the numbers are computed there and in :mod:`rewards` and :mod:`nas.halving`,
and this module only draws them. :func:`write_report` writes ``report.html`` with PNG figures beside it, referenced
by relative paths and styled inline, so the directory can be copied, archived or opened from disk with no network.
From the top: the verdict (the winner against the baseline, each top trial's reward as the product of its factors
with its noise, whether the lead is inside the noise of accuracy and step time, where the winner's spec is, and
what successive halving stopped and saved), the optimization history by controller, the learning curves (each
trial's reward at the rungs, where the campaign reported them), accuracy against normalized step time and against
parameters with the Pareto front, the decisions of the top 10% of candidates against those of all candidates (and
what the RL or evolution controller prefers now), every trial in a table that sorts by any column, the baseline and
the winner as stage tables, failures by reason with the trials over time, and the campaign's settings, storage,
wall time and device.
A figure the study cannot support yet (nothing completed, only the baseline) is replaced by a sentence saying why;
the report itself is always written.

The figures are drawn by :mod:`nas.figures`; this module writes them and the page. The page is rendered from the Jinja2 templates in
``nas/templates`` with autoescaping, so every string from the study is escaped; numbers are formatted here, by the
filters :func:`_environment` registers. The page's one script, inline, sorts the trials table; it fetches nothing.
Nothing here imports torch: the stage tables' parameter counts come from :mod:`nas.complexity`.

Step time is told one way throughout (:mod:`nas.trials`): S/S₀ leads; an absolute step time in ms appears only
labelled as measured at the timing settings, beside the trial's own re-timed baseline, and with that baseline's
ms next to it, never next to the baseline trial's as if the two were comparable.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import re
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import jinja2

from nas import records
from nas.complexity import STAGE_TABLE_HEADERS, count_spec, stage_rows
from nas.figures import (
    FIGURES,
    SMALL_SAMPLE,
    TOP_FRACTION,
    draw_figures,
    small_sample_warning,
)
from nas.outputs import (
    REPORT_FILE,
    best_spec_path,
    default_storage_url,
    trial_spec_name,
)
from nas.states import is_baseline, is_stopped
from nas.storage import mask_url
from nas.study import trial_spec
from nas.trials import (
    Holdout,
    StudySnapshot,
    TrialFactors,
    reference_step_time_s,
    step_time_ratio,
    trials_frame,
)
from rewards import INTERVAL_Z, IQR_PER_STANDARD_DEVIATION, NOISE_Z
from search_spaces.checks import is_int, is_real
from search_spaces.files import Content, write_file

if TYPE_CHECKING:
    import optuna

#: The verdict breaks the reward of this many of the best trials into its factors.
FACTOR_ROWS = 5
TOP_TABLE_COLUMNS = (
    "number", "controller", "reward", "accuracy", "step_time_ratio", "normalized_parameters", "parameters",
    "architecture",
)


# --- the report -----------------------------------------------------------------------------------------------------


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
        drawn, not_drawn = draw_figures(snapshot, directory, files.write)
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


# --- the page -------------------------------------------------------------------------------------------------------

_SECTIONS = (
    ("verdict", "Verdict"), ("history", "Optimization history"), ("curves", "Learning curves"),
    ("tradeoffs", "Accuracy, step time and size"),
    ("decisions", "What the controller learned, per stage"), ("trials", "All trials"),
    ("architectures", "Baseline and winner"), ("failures", "Failures"), ("settings", "Campaign settings and device"),
)
TRIALS_TABLE_HEADERS = (
    "trial", "state", "epochs", "role", "controller", "reward", "A", "S/S₀", "S/S₀ IQR", "parameters", "P/P₀",
    "S at timing settings (ms)", "its re-timed baseline (ms)", "duration (s)", "architecture", "failure reason",
)
_NUMBER = re.compile(r"[-+]?[\d,]*\.?\d+(e[-+]?\d+)?")


@functools.cache
def _environment() -> jinja2.Environment:
    """The templates of ``nas/templates``, autoescaped, with the filters that format the page's numbers."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("nas", "templates"), autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    )
    environment.filters.update(fixed=_fixed, general=lambda value: f"{value:g}", thousands=lambda value: f"{value:,}",
                               percent=lambda value: f"{value:.0%}", cell=_format, sort_key=_sort_key)
    environment.tests["numeric"] = lambda text: _NUMBER.fullmatch(text) is not None
    return environment


def _page(snapshot: StudySnapshot, not_drawn: Mapping[str, str]) -> str:
    shown = {figure.name: figure for figure in FIGURES if figure.shown is None or figure.shown(snapshot)}
    names = {figure.name for figure in FIGURES}
    return _environment().get_template("report.html").render(
        name=snapshot.study.study_name, summary=_summary(snapshot), figures=shown, not_drawn=not_drawn,
        sections=[(anchor, title) for anchor, title in _SECTIONS if anchor in shown or anchor not in names],
        verdict=_verdict(snapshot), decisions=_decisions(snapshot), trials=_trials_table(snapshot),
        architectures=_architectures(snapshot), failures=_failures(snapshot), settings=_settings(snapshot),
        top_fraction=TOP_FRACTION, stage_headers=STAGE_TABLE_HEADERS,
    )


def _summary(snapshot: StudySnapshot) -> str:
    states = Counter("stopped" if is_stopped(trial) else trial.state.name for trial in snapshot.trials)
    parts = [f"space {snapshot.attributes.get(records.SPACE_NAME, '?')}",
             f"{len(snapshot.trials)} trials ({', '.join(f'{count} {state}' for state, count in states.items())})"]
    if snapshot.winner is not None:
        parts.append(f"best reward {snapshot.winner.value:.4f} (trial {snapshot.winner.number})")
    if snapshot.halving is not None:
        parts.append(snapshot.halving.line())
    span = snapshot.span
    if span is not None:
        parts.append(f"wall time {_duration(span.seconds)}" + (" so far" if span.running else ""))
    return "; ".join(parts)


# --- the verdict ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Named:
    """A trial as the verdict names it: its number, its controller ("baseline" for the baseline), A, S/S₀, P/P₀
    and reward (None where not recorded)."""

    number: int
    controller: str
    accuracy: Any
    step_time_ratio: Any
    params_ratio: Any
    reward: float | None

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial) -> _Named:
        attributes = trial.user_attrs
        return cls(trial.number, _controller(trial), attributes.get(records.ACCURACY),
                   attributes.get(records.NORMALIZED_STEP_TIME), attributes.get(records.NORMALIZED_PARAMETERS),
                   trial.value)


def _verdict(snapshot: StudySnapshot) -> dict[str, Any]:
    """Who won and by how much (``verdict.html``): the winner against the baseline, the top trials' rewards as
    products of their factors with their noise, whether the lead is inside the noise, and where the winner's spec
    is."""
    winner, baseline, candidates = snapshot.winner, snapshot.baseline_trial, snapshot.candidates
    verdict: dict[str, Any] = {"winner": None if winner is None else _Named.of(winner), "halving": snapshot.halving,
                               "baseline": None if baseline is None else _Named.of(baseline)}
    if winner is None:
        return verdict
    verdict.update(candidates=len(candidates), best=_Named.of(candidates[0]) if candidates else None,
                   versus=[], factors=_factor_table(snapshot), lead=None, export=_export(snapshot),
                   noise=_noise(snapshot))
    if baseline is not None and baseline.value is not None:
        versus = candidates[0] if winner.number == baseline.number and candidates else winner
        shown = [("baseline", baseline)] + ([("winner" if versus is winner else "best candidate", versus)]
                                            if versus.number != baseline.number else [])
        verdict["versus"] = [[label, trial.number, _controller(trial),
                              *map(_fixed, (named.accuracy, named.step_time_ratio, named.params_ratio, named.reward))]
                             for label, trial in shown for named in [_Named.of(trial)]]
    if len(snapshot.factors) >= 2:
        verdict["lead"] = _lead(*snapshot.factors[:2], snapshot.holdout)
    return verdict


def _factor_table(snapshot: StudySnapshot) -> dict[str, Any] | None:
    """The top :data:`FACTOR_ROWS` trials' rewards as products of their factors (the baseline's row added when it
    is not among them), with the inputs of each reward's noise (A's standard error, the IQR of S/S₀'s timed pairs)
    and the noise δ they imply; None when the study records no exponents."""
    if snapshot.exponents is None:
        return None
    factors = snapshot.factors
    baseline = snapshot.baseline_trial
    shown = factors[:FACTOR_ROWS] + [factor for factor in factors[FACTOR_ROWS:]
                                     if baseline is not None and factor.trial is baseline]
    w, v = snapshot.exponents
    rank = {trial.number: index + 1 for index, trial in enumerate(snapshot.ranked)}
    headers = ("rank", "trial", "role", "controller", "A", "±σ(A)", "S/S₀", "S/S₀ 95% interval", "S/S₀ IQR",
               f"(S/S₀)^{w:g}", "P/P₀", f"(P/P₀)^{v:g}", "reward = product", "noise ±δ")
    rows = [
        [rank[factor.trial.number], factor.trial.number,
         factor.trial.user_attrs.get(records.ROLE, records.ROLE_CANDIDATE), _controller(factor.trial),
         *map(_fixed, (factor.factors.accuracy, factor.accuracy_error, factor.factors.step_time_ratio)),
         _interval_text(factor.step_time_ratio_interval),
         *map(_fixed, (factor.step_time_ratio_iqr, factor.factors.step_time_factor, factor.factors.params_ratio,
                       factor.factors.params_factor, factor.factors.product, factor.noise))]
        for factor in shown
    ]
    return {"headers": headers, "rows": rows, "best": len(factors[:FACTOR_ROWS]), "w": w, "v": v}


def _noise(snapshot: StudySnapshot) -> dict[str, Any]:
    """What the noise rule is computed from (``verdict.html`` states it): the hold-out split the accuracies were
    counted on (None when it cannot be counted, with the data source the study records), the rule's z and how an
    IQR becomes a standard deviation."""
    settings = snapshot.data_settings
    return {"holdout": snapshot.holdout, "data": None if settings is None else settings[0], "z": NOISE_Z,
            "iqr_per_sd": IQR_PER_STANDARD_DEVIATION, "interval_z": INTERVAL_Z}


def _lead(first: TrialFactors, second: TrialFactors, holdout: Holdout | None) -> dict[str, Any]:
    """What separates the best two trials (which factor gives the leader its lead, when every factor is
    positive) and whether the lead is outside their noise (:meth:`~nas.trials.TrialFactors.within_noise`); when
    that cannot be judged, why (``missing``: what is not recorded)."""
    ours, theirs = first.factors, second.factors
    pairs = {"accuracy A": (ours.accuracy, theirs.accuracy),
             "the step-time factor (S/S₀)^w": (ours.step_time_factor, theirs.step_time_factor),
             "the parameter factor (P/P₀)^v": (ours.params_factor, theirs.params_factor)}
    ratios = ({name: a / b for name, (a, b) in pairs.items()}
              if all(a > 0 and b > 0 for a, b in pairs.values()) else None)
    untimed = [f"trial {factor.trial.number}" for factor in (first, second) if factor.step_time_ratio_iqr is None]
    missing = [] if holdout is not None else ["the number of hold-out images is unknown (see below)"]
    if untimed:
        missing.append(f"{' and '.join(untimed)} record{'s' if len(untimed) == 1 else ''} no spread of the timed "
                       "pairs of S/S₀ (step_time_ratio_iqr: timed before S/S₀ was timed in pairs)")
    return {
        "first": first, "second": second, "gap": first.reward - second.reward,
        "ratios": None if ratios is None else ", ".join(f"{name} ×{ratio:.4f}" for name, ratio in ratios.items()),
        "decisive": None if ratios is None else max(ratios, key=lambda name: ratios[name]),
        "reward_ratio": first.reward / second.reward, "within": first.within_noise(second),
        "margin": first.noise_margin(second), "missing": "; ".join(missing),
    }


def _export(snapshot: StudySnapshot) -> dict[str, Any] | None:
    """Where the winner's spec is: the file ``nas search`` last wrote it to, as the study records it
    (:data:`~nas.records.EXPORTED_SPEC`, an absolute path), else the default path it writes; and the ``nas export``
    command that writes the spec again (the storage's password masked)."""
    winner = snapshot.winner
    if winner is None or records.SPEC not in winner.user_attrs:
        return None
    name = snapshot.study.study_name
    command = ["nas", "export", "--study", name]
    storage = snapshot.campaign.get("storage")
    masked = mask_url(storage) if isinstance(storage, str) and storage else None
    if masked is not None:
        command += ["--storage", masked]
    command += ["--trial", str(winner.number), "-o", f"{trial_spec_name(name, winner.number)}.yaml"]
    exported = snapshot.attributes.get(records.EXPORTED_SPEC)
    return {"exported": exported if isinstance(exported, str) and exported else None,
            "default": best_spec_path(name).as_posix(), "number": winner.number, "command": shlex.join(command),
            "masked": masked is not None and masked != storage}


def _controller(trial: optuna.trial.FrozenTrial) -> str:
    return "baseline" if is_baseline(trial) else str(trial.user_attrs.get(records.CONTROLLER, "?"))


# --- the other sections ---------------------------------------------------------------------------------------------


def _decisions(snapshot: StudySnapshot) -> dict[str, Any]:
    """The sample sizes behind the per-decision bars, a warning when the top group is small, what the hatched bars
    are, and the top trials' table."""
    space, top, candidates = snapshot.space, snapshot.top(TOP_FRACTION), snapshot.candidates
    decisions: dict[str, Any] = {"top": len(top), "candidates": len(candidates), "sizes": None, "rows": []}
    if top:
        frame = trials_frame(snapshot.study, top)
        decisions.update(columns=TOP_TABLE_COLUMNS, rows=list(frame[list(TOP_TABLE_COLUMNS)].itertuples(index=False)))
    if space is None or not top:
        return decisions
    controller = snapshot.campaign.get("controller")
    decisions.update(
        sizes=len(snapshot.proposed(space)),
        warning=small_sample_warning(len(top)) if len(top) < SMALL_SAMPLE else None,
        preferences={"rl": "the RL policy's probabilities now, rebuilt from the study: what it proposes next",
                     "evolution": "the shares of each choice in the evolution controller's population now, from "
                                  "which it draws its next parents"}.get(controller),
    )
    return decisions


def _trials_table(snapshot: StudySnapshot) -> dict[str, Any]:
    """Every trial, one row each in trial order, sortable in the page by any column (click its header); the rows
    of trials successive halving stopped carry the class ``stopped``."""
    if not snapshot.trials:
        return {"rows": []}
    from pandas import isna

    frame = trials_frame(snapshot.study, snapshot.trials)
    rows = []
    for trial, row in zip(snapshot.trials, frame.to_dict("records")):
        row = {key: None if not isinstance(value, (list, tuple)) and isna(value) else value
               for key, value in row.items()}
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        epochs = trial.user_attrs.get(records.EPOCHS_COMPLETED)
        rows.append([
            row["number"], row["state"], epochs if is_real(epochs) else None, row["role"], row["controller"],
            row["reward"], row["accuracy"], row["step_time_ratio"], row["step_time_ratio_iqr"], row["parameters"],
            row["normalized_parameters"], row["step_time_ms"], row["reference_step_time_ms"], duration,
            row["architecture"] or None, row["failure_reason"],
        ])
    return {"headers": TRIALS_TABLE_HEADERS, "rows": rows,
            "classes": ["stopped" if is_stopped(trial) else None for trial in snapshot.trials]}


def _architectures(snapshot: StudySnapshot) -> dict[str, Any]:
    """The baseline's and the winner's stage tables, the winner's cells that differ from the baseline's marked."""
    baseline, winner = snapshot.baseline_trial, snapshot.winner
    baseline_rows, winner_rows = _stage_rows(baseline), _stage_rows(winner)
    changed = set()
    if baseline_rows is not None and winner_rows is not None and len(baseline_rows) == len(winner_rows):
        changed = {(row, column) for row, (new, old) in enumerate(zip(winner_rows, baseline_rows))
                   for column, (a, b) in enumerate(zip(new, old)) if a != b}
    tables = [
        {"role": role, "title": title, "number": None if trial is None else trial.number, "rows": rows,
         "measurements": None if rows is None else _measurements(trial), "changed": marked}
        for role, title, trial, rows, marked in (("baseline", "Baseline", baseline, baseline_rows, set()),
                                                 ("winner", "Winner by reward", winner, winner_rows, changed))
    ]
    return {"tables": tables, "baseline_best": winner is not None and baseline is not None
            and winner.number == baseline.number}


def _stage_rows(trial: optuna.trial.FrozenTrial | None) -> list[list[Any]] | None:
    if trial is None or records.SPEC not in trial.user_attrs:
        return None
    spec = trial_spec(trial)
    return stage_rows(spec, count_spec(spec).stage_parameters)


def _measurements(trial: optuna.trial.FrozenTrial) -> str:
    """A stage table's line of measurements: A, S/S₀ (with the ms it came from, labelled), P, P/P₀, the reward."""
    attributes = trial.user_attrs
    if trial.state.name != "COMPLETE":
        return f"{trial.state.name}: {attributes.get(records.FAILURE_REASON, 'no result')}"
    measured = (records.ACCURACY, records.NORMALIZED_STEP_TIME, records.PARAMETERS, records.NORMALIZED_PARAMETERS)
    if not all(is_real(attributes.get(key)) for key in measured):  # a study written by another client
        return f"reward {trial.value:.4f}; its measurements are not recorded"
    return (f"accuracy {attributes[records.ACCURACY]:.4f}, step time S/S₀ "
            f"{attributes[records.NORMALIZED_STEP_TIME]:.3f}{_step_time_source(trial)}, "
            f"{attributes[records.PARAMETERS]:,} parameters "
            f"(P/P₀ {attributes[records.NORMALIZED_PARAMETERS]:.3f}), reward {trial.value:.4f}, "
            f"on {attributes.get(records.DEVICE, '?')}")


def _step_time_source(trial: optuna.trial.FrozenTrial) -> str:
    """Where a trial's S/S₀ comes from, its step times in ms labelled as what they are: the baseline's own, timed
    alone, or a candidate's beside its re-timed baseline, at the timing settings; empty when not recorded."""
    attributes = trial.user_attrs
    step_time, reference = attributes.get(records.STEP_TIME_S), reference_step_time_s(attributes)
    if not is_real(step_time):
        return ""
    settings = _timing_settings(attributes.get(records.TIMING))
    if is_baseline(trial):
        return f" (by definition: S₀ is {step_time * 1e3:.2f} ms a step at the timing settings{settings}, timed alone)"
    if not is_real(reference) or not is_real(step_time_ratio(attributes)):
        return ""
    cached = ", from the step-time cache" if attributes.get(records.TIMING_CACHED) is True else ""
    return (f" ({step_time * 1e3:.2f} ms a step at the timing settings{settings}, against {reference * 1e3:.2f} ms "
            f"for the baseline re-timed beside it{cached})")


def _timing_settings(timing: Any) -> str:
    """``, 32 px and batch 32`` from a trial's recorded timing settings; empty where they are not recorded."""
    if not isinstance(timing, Mapping):
        return ""
    image_size, batch_size = timing.get("image_size"), timing.get("batch_size")
    parts = ([f"{image_size} px"] if is_int(image_size, 1) else []) + (
        [f"batch {batch_size}"] if is_int(batch_size, 1) else [])
    return f", {' and '.join(parts)}" if parts else ""


def _failures(snapshot: StudySnapshot) -> list[list[Any]]:
    """One row per kind of failure reason (:meth:`~nas.trials.StudySnapshot.failures`), the largest first."""
    return [[kind, len(trials), ", ".join(str(trial.number) for trial in trials),
             trials[0].user_attrs.get(records.FAILURE_REASON, "")] for kind, trials in snapshot.failures()]


def _wall_time(snapshot: StudySnapshot) -> str:
    span = snapshot.span
    if span is None:
        return "- (no trial has started)"
    text = (f"{_duration(span.seconds)}, from the first trial's start ({span.start:%Y-%m-%d %H:%M:%S}) to the "
            f"last trial's end ({span.end:%Y-%m-%d %H:%M:%S}), pauses between runs of the search included; "
            f"{_duration(span.trial_seconds)} of trial time in all")
    if span.running:
        text += f"; {span.running} trial{'s' if span.running != 1 else ''} still running, so the time so far"
    return text


def _storage(snapshot: StudySnapshot) -> str:
    """The campaign's storage URL with any password masked; the default one spelled out where it is unset."""
    url = snapshot.campaign.get("storage")
    if isinstance(url, str) and url:
        return mask_url(url)
    default = default_storage_url(snapshot.campaign.get("study") or snapshot.study.study_name)
    return f"{default} (the default, relative to the directory the search ran in)"


def _settings(snapshot: StudySnapshot) -> dict[str, list[list[Any]]]:
    """Where the numbers come from (study, storage, space, devices, time), then the campaign's settings as the
    study holds them."""
    attributes = snapshot.attributes
    space, baseline, exponents = snapshot.space, records.study_baseline(attributes), snapshot.exponents
    devices = sorted({trial.user_attrs[records.DEVICE] for trial in snapshot.trials
                      if records.DEVICE in trial.user_attrs})
    storage = _storage(snapshot)
    device_rows = [
        ["study", snapshot.study.study_name],
        ["storage", storage],
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
    setting_rows = [  # any URL is masked (reports get shared); an unset storage is the default one, spelled out
        [key, storage if key == "storage" and value is None else mask_url(value) if isinstance(value, str) else value]
        for key, value in _flatten(snapshot.campaign)
    ]
    return {"device": device_rows, "settings": setting_rows}


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            items.extend(_flatten(value, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", value))
    return items


# --- formatting (the templates' filters) ----------------------------------------------------------------------------


def _interval_text(interval: tuple[float, float] | None) -> str:
    """``0.4012–0.4110``; ``-`` for a trial timed before S/S₀ had an interval (and for the baseline)."""
    return "-" if interval is None else f"{interval[0]:.4f}–{interval[1]:.4f}"


def _fixed(value: Any, digits: int = 4) -> str:
    """``0.7716`` (``digits`` decimals); ``-`` where there is no number."""
    return f"{value:.{digits}f}" if is_real(value) else "-"


def _duration(seconds: float) -> str:
    """``42.0 s``, ``12 min 05 s``, ``3 h 07 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


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
    """A table cell's text: integers with thousands separators, other numbers to 4 significant digits, ``-`` for
    a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, numbers.Integral):  # numpy's integers too, as pandas hands them out
        return f"{value:,}"
    if isinstance(value, numbers.Real):
        return f"{value:.4g}"
    return str(value)
