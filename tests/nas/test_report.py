"""``nas report`` and the trials table's ``--filter``/``--sort``, on studies written through the campaign's own calls.

The studies are real Optuna studies in SQLite, filled the way the runner fills them (``open_study``, the trial
attributes the Searcher sets, ``record_result`` with ``EvalResult``s, ``mark_interrupted``), without Ray or training.
"""

from __future__ import annotations

import dataclasses
import errno
import html
import itertools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.colors
import numpy
import optuna
import pytest
from matplotlib import pyplot
from matplotlib.text import Text
from PIL import Image

from nas import figures as report_figures
from nas import records
from nas import report as reports
from nas import study as studies
from nas import trials as trial_tables
from nas.campaign import CampaignConfig
from nas.cli import EXIT_USAGE, main
from nas.controllers import (
    CONTROLLERS,
    PolicyGradientSampler,
    RegularizedEvolutionSampler,
    distributions,
    make_sampler,
)
from nas.figures import FIGURES
from nas.outputs import REPORT_FILE
from nas.records import EvalResult
from nas.report import write_report
from nas.trials import StudySnapshot
from search_spaces import files, presets
from search_spaces.space import DECISION_FIELDS

SPACE = presets.get_space("tiny")
DEVICE = "cpu Test CPU (1 threads), torch 2.x"
ESCAPE_PROBE = "<script>alert('x')</script>"
# (controller, accuracy, step time s, parameters) of the candidates after the baseline (0.6, 0.02 s, 2000)
CANDIDATES = [
    ("random", 0.50, 0.030, 3000), ("rl", 0.70, 0.040, 2000), ("random", 0.65, 0.015, 2500),
    ("rl", 0.62, 0.020, 1000), ("random", 0.40, 0.010, 1500), ("rl", 0.72, 0.018, 1800),
    ("random", 0.55, 0.025, 2200), ("rl", 0.68, 0.022, 2100), ("rl", 0.45, 0.050, 4000),
    ("random", 0.58, 0.012, 1200),
]
#: The figures of a campaign without successive halving (the learning curves are shown only where trials reported
#: their reward at rungs).
PLAIN_FIGURES = tuple(figure for figure in FIGURES if figure.shown is None)
TABLES = ("verdict-table", "factors", "top-trials", "all-trials", "stages-baseline", "stages-winner", "failures",
          "device", "settings")


BASELINE_STEP_TIME = 0.020
#: The timing settings every trial records (TimingConfig.to_dict(), resolved).
TIMING = {"image_size": 32, "batch_size": 32, "amp": "none", "channels_last": True, "compile": False, "warmup": 5,
          "pairs": 5, "window_s": 0.1}
#: How much slower the machine ran while a candidate was timed than while the baseline was: a candidate's ms and
#: its re-timed baseline's both carry it, their ratio does not.
LOAD = 1.5


def measured(accuracy: float, step_time: float, parameters: int, epochs: int = 1, *,
             ratio_iqr: float | None = None, load: float = LOAD) -> EvalResult:
    """A candidate's result as a campaign records it: S/S0 (``step_time`` over the baseline's 0.02 s) from pairs
    timed beside a re-timed baseline, under a ``load`` that slows both, the pairs' IQR a twentieth of the ratio
    unless ``ratio_iqr`` is given. :func:`as_baseline` makes it the baseline's."""
    ratio = step_time / BASELINE_STEP_TIME
    return EvalResult(status="ok", accuracy=accuracy, step_time_s=step_time * load, step_time_ratio=ratio,
                      step_time_ratio_iqr=ratio / 20 if ratio_iqr is None else ratio_iqr,
                      reference_step_time_s=BASELINE_STEP_TIME * load, timing=TIMING, timing_cached=False,
                      parameters=parameters, macs=parameters * 100, device=DEVICE, wall_time_s=1.0,
                      epochs_completed=epochs)


def as_baseline(result: EvalResult) -> EvalResult:
    """The baseline's result as nas.evaluate records it: timed alone, S/S0 1 by definition with no spread."""
    if not result.ok:
        return result
    return dataclasses.replace(result, step_time_s=result.step_time_s / LOAD, step_time_iqr_s=result.step_time_s / 20,
                               step_time_ratio=1.0, step_time_ratio_iqr=0.0,
                               reference_step_time_s=result.step_time_s / LOAD)


class Recorder:
    """Writes trials to a fresh study the way the runner's Searcher does."""

    def __init__(self, tmp_path: Path, **settings: object) -> None:
        settings = {"controller": "rl", **settings}  # the campaign's controller, whatever CampaignConfig's default
        self.config = CampaignConfig(storage=f"sqlite:///{tmp_path}/study.db", study="demo", **settings)
        self.study = studies.open_study(self.config.study_settings(), SPACE, make_sampler("random", SPACE, seed=0))

    def ask(self, controller: str = "random", *, baseline: bool = False) -> tuple[optuna.trial.Trial, object]:
        if baseline:
            self.study.enqueue_trial(SPACE.to_params(SPACE.baseline), user_attrs={"role": records.ROLE_BASELINE})
        trial = self.study.ask(fixed_distributions=distributions(SPACE))
        spec = SPACE.from_params(trial.params)
        trial.set_user_attr("role", trial.user_attrs.get("role", records.ROLE_CANDIDATE))
        trial.set_user_attr("spec", spec.to_dict())
        trial.set_user_attr("block_strings", list(spec.block_strings))
        trial.set_user_attr("controller", controller)
        return trial, spec

    def record(self, result: EvalResult, controller: str = "random", *, baseline: bool = False) -> int:
        trial, spec = self.ask(controller, baseline=baseline)
        studies.record_result(self.study, trial, spec, as_baseline(result) if baseline else result,
                              self.config.reward_exponents)
        return trial.number

    def interrupt(self) -> int:
        trial, _ = self.ask()
        frozen = self.study.get_trials(deepcopy=False)[trial.number]
        studies.mark_interrupted(self.study, frozen, reason="the trial's worker failed")
        studies.enqueue_rerun(self.study, frozen)  # as the campaign does just before it asks for the re-run
        return trial.number


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Recorder:
    """Baseline, ten candidates of two controllers, an out-of-memory failure whose message holds HTML, a non-finite
    loss, one trial still RUNNING and an interrupted one (its re-run WAITING). The tests only read it."""
    recorder = Recorder(tmp_path_factory.mktemp("campaign"))
    recorder.record(measured(0.6, 0.020, 2000), baseline=True)
    for controller, accuracy, step_time, parameters in CANDIDATES[:5]:
        recorder.record(measured(accuracy, step_time, parameters), controller)
    recorder.record(EvalResult(status="failed", failure_reason=f"out of memory: {ESCAPE_PROBE}", device=DEVICE), "rl")
    for controller, accuracy, step_time, parameters in CANDIDATES[5:]:
        recorder.record(measured(accuracy, step_time, parameters), controller)
    recorder.record(EvalResult(status="failed", failure_reason="non-finite loss: nan at step 3"), "random")
    recorder.ask("rl")
    recorder.interrupt()
    return recorder


class Page(HTMLParser):
    """The parts of report.html the tests read: every table's header, rows (cell texts), cells' sort keys and class
    by id, the images, the ids and the text of every paragraph with an id."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.headers: dict[str, list[str]] = {}
        self.sort_keys: dict[str, list[list[str | None]]] = {}
        self.table_classes: dict[str, str] = {}
        self.paragraphs: dict[str, str] = {}
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.images: list[str] = []
        self.ids: set[str] = set()
        self._table: str | None = None
        self._header: list[str] | None = None
        self._paragraph: tuple[str, list[str]] | None = None
        self._script: list[str] | None = None
        self._in_body = False
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if "id" in attributes:
            self.ids.add(attributes["id"])
        if tag == "table":
            self._table = attributes["id"]
            self.tables[self._table], self.headers[self._table], self.sort_keys[self._table] = [], [], []
            self.table_classes[self._table] = attributes.get("class") or ""
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.tables[self._table].append([])
            self.sort_keys[self._table].append([])
        elif tag == "td" and self._in_body:
            self._cell = []
            self.sort_keys[self._table][-1].append(attributes.get("data-sort"))
        elif tag == "th" and not self._in_body:
            self._header = []
        elif tag == "p" and "id" in attributes:
            self._paragraph = (attributes["id"], [])
        elif tag == "script":
            self._script = []
            self.scripts.append((attributes, ""))
        elif tag == "img":
            self.images.append(attributes["src"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_body = False
        elif tag == "td" and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "th" and self._header is not None:
            self.headers[self._table].append("".join(self._header))
            self._header = None
        elif tag == "p" and self._paragraph is not None:
            self.paragraphs[self._paragraph[0]] = "".join(self._paragraph[1])
            self._paragraph = None
        elif tag == "script" and self._script is not None:
            self.scripts[-1] = (self.scripts[-1][0], "".join(self._script))
            self._script = None

    def handle_data(self, data: str) -> None:
        paragraph = None if self._paragraph is None else self._paragraph[1]
        for collecting in (self._cell, self._header, paragraph, self._script):
            if collecting is not None:
                collecting.append(data)


def assert_png(path: Path) -> None:
    """A valid PNG with content: Pillow reads it, it has a size, and it is not a single colour."""
    assert path.stat().st_size > 1000, path
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100, path
        image.verify()
    with Image.open(path) as image:
        low, high = image.convert("L").getextrema()
        assert low < high, f"{path} is blank"


def column(page: Page, table: str, index: int) -> list[str]:
    return [row[index] for row in page.tables[table]]


# --- the report -----------------------------------------------------------------------------------------------------


def test_the_report_has_every_figure_and_table(campaign, tmp_path):
    study = campaign.study
    report = write_report(study, tmp_path / "report")
    assert report.not_drawn == {} and report.path == tmp_path / "report" / REPORT_FILE
    assert sorted(path.name for path in report.figures) == sorted(f"{figure.name}.png" for figure in PLAIN_FIGURES)
    for path in report.figures:
        assert_png(path)
    text = report.path.read_text()
    page = Page(text)
    assert page.images == [f"{figure.name}.png" for figure in PLAIN_FIGURES]  # relative paths, beside the HTML
    # No trial reported a rung: no learning curves, not even a sentence about them, and no word of halving.
    assert {"curves", "figure-curves", "missing-curves", "halving"}.isdisjoint(page.ids)
    assert 'href="#curves"' not in text and "curves.png" not in text
    for table in TABLES:
        assert page.tables.get(table), f"table {table} missing or empty"
    # The winner is the best trial by reward, the baseline trial 0; both tables show their stages' block strings.
    winner = trial_tables.best_trials(study, 1)[0]
    assert column(page, "stages-winner", 1)[1:-1] == winner.user_attrs["block_strings"]
    assert column(page, "stages-baseline", 1)[1:-1] == list(SPACE.baseline.block_strings)
    # The top 10% of the ten complete candidates is the best one.
    assert column(page, "top-trials", 0) == [str(winner.number)]
    failures = {row[0]: row for row in page.tables["failures"]}
    assert set(failures) == {"out of memory", "non-finite loss", "interrupted"}
    assert failures["out of memory"][1] == "1" and failures["out of memory"][3] == f"out of memory: {ESCAPE_PROBE}"
    assert ["baseline's device", DEVICE] in page.tables["device"]
    assert ["controller", "rl"] in page.tables["settings"] and ["train.epochs", "10"] in page.tables["settings"]
    assert ESCAPE_PROBE not in text and "&lt;script&gt;" in text  # every string from the study is escaped
    assert "http://" not in text and "https://" not in text  # nothing to fetch when it is viewed


def test_history_is_by_controller_and_the_front_is_marked(campaign):
    figures = {figure.name: figure for figure in FIGURES}
    data = StudySnapshot.read(campaign.study)
    history = figures["history"].draw(data)
    labels = set(history.axes[0].get_legend_handles_labels()[1])
    assert {"random: reward", "random: best so far", "rl: reward", "rl: best so far", "baseline", "failed"} <= labels
    tradeoffs = figures["tradeoffs"].draw(data)
    for axes in tradeoffs.axes:
        front = [collection for collection in axes.collections if collection.get_label().startswith("Pareto front")]
        assert len(front) == 1 and len(front[0].get_offsets()) == len(trial_tables.pareto_front(campaign.study))
    pyplot.close(history)
    pyplot.close(tradeoffs)


def test_every_controller_has_its_own_colour_in_every_report(campaign):
    assert set(report_figures.CONTROLLER_COLORS) == set(CONTROLLERS)
    assert len(set(report_figures.CONTROLLER_COLORS.values()) | {report_figures.UNKNOWN_CONTROLLER_COLOR}) == len(CONTROLLERS) + 1
    history = {figure.name: figure for figure in FIGURES}["history"].draw(StudySnapshot.read(campaign.study))
    points = {collection.get_label(): collection for collection in history.axes[0].collections}
    for controller in ("random", "rl"):
        expected = matplotlib.colors.to_rgba(report_figures.CONTROLLER_COLORS[controller], alpha=0.55)
        assert tuple(points[f"{controller}: reward"].get_facecolor()[0]) == pytest.approx(expected)
    pyplot.close(history)


def test_the_decisions_compare_the_top_tenth_with_all_candidates(campaign):
    data = StudySnapshot.read(campaign.study)
    best = trial_tables.best_trials(campaign.study, 1)[0]
    assert [trial.number for trial in data.top(report_figures.TOP_FRACTION)] == [best.number]
    figure = {figure.name: figure for figure in FIGURES}["decisions"].draw(data)
    assert len(figure.axes) == len(SPACE.decisions)
    proposed = 10 + 2 + 1  # complete, failed by themselves, running; not the interrupted one nor its waiting re-run
    assert figure.legends[0].get_texts()[0].get_text() == f"all candidates (n = {proposed})"
    pyplot.close(figure)


# --- the verdict, the trials table and what the figures say ---------------------------------------------------------


@pytest.fixture(scope="module")
def campaign_page(campaign: Recorder, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Page]:
    """The campaign's report, written once: its HTML and the parsed page."""
    text = write_report(campaign.study, tmp_path_factory.mktemp("campaign-report") / "report").path.read_text()
    return text, Page(text)


def record_all(recorder: Recorder, candidates: list[tuple[float, float, int]], controller: str = "rl") -> list[int]:
    """The baseline (0.6, 0.02 s, 2000 parameters), then candidates as (accuracy, step time, parameters); the
    candidates' trial numbers."""
    recorder.record(measured(0.6, 0.020, 2000), baseline=True)
    return [recorder.record(measured(*candidate), controller) for candidate in candidates]


def test_the_verdict_comes_first_and_names_the_winner_and_the_baseline_with_a_s_and_p(campaign, campaign_page):
    text, page = campaign_page
    winner = trial_tables.best_trials(campaign.study, 1)[0]
    attributes = winner.user_attrs
    assert text.index('<section id="verdict">') < min(text.index(f'<section id="{name}">') for name in
                                                      ("history", "tradeoffs", "decisions", "trials"))
    assert page.headers["verdict-table"] == ["", "trial", "controller", "A", "S/S₀", "P/P₀", "reward"]
    assert page.tables["verdict-table"] == [
        ["baseline", "0", "baseline", "0.6000", "1.0000", "1.0000", "0.6000"],
        ["winner", str(winner.number), attributes["controller"], f"{attributes['accuracy']:.4f}",
         f"{attributes['normalized_step_time']:.4f}", f"{attributes['normalized_parameters']:.4f}",
         f"{winner.value:.4f}"],
    ]
    line = page.paragraphs["verdict-line"]
    assert line.startswith(f"Trial {winner.number} ({attributes['controller']}) wins with reward {winner.value:.4f}")
    assert "against the baseline's 0.6000 (trial 0)" in line
    assert f"S/S₀ {attributes['normalized_step_time']:.3f}" in line
    assert f"P/P₀ {attributes['normalized_parameters']:.3f}" in line
    assert "baseline-wins" not in page.ids
    storage = campaign.config.storage_url
    assert (f"nas export --study demo --storage {storage} --trial {winner.number} -o demo-trial{winner.number}.yaml"
            in page.paragraphs["export"])


def test_each_row_of_the_factor_table_multiplies_to_its_reward(campaign, campaign_page):
    _, page = campaign_page
    headers = page.headers["factors"]
    step_factor, params_factor = "(S/S₀)^-0.07", "(P/P₀)^-0.05"  # the campaign's exponents, in the headers
    assert {step_factor, params_factor, "A", "±σ(A)", "S/S₀", "S/S₀ IQR", "P/P₀", "noise ±δ"} <= set(headers)
    assert not any("ms" in header for header in headers)  # S/S₀ leads: no absolute step time beside the ratios
    ranked = trial_tables.best_trials(campaign.study, len(campaign.study.trials))
    top = [trial.number for trial in ranked[:reports.FACTOR_ROWS]]
    rows = [dict(zip(headers, row)) for row in page.tables["factors"]]
    assert [int(row["trial"]) for row in rows] == top + ([] if 0 in top else [0])  # the baseline's row is added
    rewards = {trial.number: trial.value for trial in ranked}
    for row in rows:
        accuracy, step, params, reward = (float(row[key]) for key in ("A", step_factor, params_factor,
                                                                      "reward = product"))
        assert row["reward = product"] == f"{rewards[int(row['trial'])]:.4f}"
        assert accuracy * step * params == pytest.approx(reward, abs=3e-4)  # four decimals each
        assert step == pytest.approx(float(row["S/S₀"]) ** -0.07, abs=1e-4)
        assert params == pytest.approx(float(row["P/P₀"]) ** -0.05, abs=1e-4)
        # The default synthetic source: 10,000 images, 1,000 held out (val_fraction 0.1).
        assert row["±σ(A)"] == f"{math.sqrt(accuracy * (1 - accuracy) / 1000):.4f}"
    baseline = next(row for row in rows if row["role"] == "baseline")
    assert baseline["S/S₀ IQR"] == "0.0000"  # 1 by definition: its δ is its accuracy's noise alone
    assert baseline["noise ±δ"] == baseline["±σ(A)"]
    factors = StudySnapshot.read(campaign.study).factors
    assert len(factors) == len(ranked)
    for factor in factors:
        assert factor.factors.product == pytest.approx(factor.reward, rel=1e-12)


def expected_noise(accuracy: float, ratio: float, params_ratio: float, iqr: float, images: int) -> tuple[float, float]:
    """(reward, δ) by the rule the page states, computed here independently of rewards.reward_noise."""
    reward = accuracy * ratio ** -0.07 * params_ratio ** -0.05
    accuracy_part = ratio ** -0.07 * params_ratio ** -0.05 * math.sqrt(accuracy * (1 - accuracy) / images)
    step_time_part = 0.07 * reward / ratio * iqr / 1.349
    return reward, math.sqrt(accuracy_part ** 2 + step_time_part ** 2)


@pytest.mark.parametrize("num_images, runner_up_iqr, within", [
    (5_000, 0.04, True),  # the demo: 500 hold-out images, the lead is about one standard error
    (500_000, 0.04, False),  # 50,000 hold-out images: the same lead is far outside the noise
    (500_000, 0.5, True),  # ... unless the runner-up's timed pairs disagree this much
], ids=["demo-holdout", "large-holdout", "noisy-timing"])
def test_the_verdict_judges_the_lead_against_accuracy_and_step_time_noise(tmp_path, num_images, runner_up_iqr,
                                                                          within):
    """The demo's two best (A 0.746 against 0.714 on 500 hold-out images, S/S₀ 0.42 and 0.472, P/P₀ 0.5 and 0.55),
    recorded through the campaign's calls with the IQR of their timed pairs: inside or outside the noise as the
    numbers require."""
    recorder = Recorder(tmp_path, data=f"synthetic:num_images={num_images}")
    recorder.record(measured(0.6, BASELINE_STEP_TIME, 2000), baseline=True)
    leader = recorder.record(measured(0.746, 0.42 * BASELINE_STEP_TIME, 1000, ratio_iqr=0.05), "rl")
    runner_up = recorder.record(measured(0.714, 0.472 * BASELINE_STEP_TIME, 1100, ratio_iqr=runner_up_iqr), "rl")
    page = Page(write_report(recorder.study, tmp_path / "report").path.read_text())
    images = num_images // 10
    first = expected_noise(0.746, 0.42, 0.5, 0.05, images)
    second = expected_noise(0.714, 0.472, 0.55, runner_up_iqr, images)
    margin = 2 * math.hypot(first[1], second[1])
    assert (first[0] - second[0] < margin) is within  # the cases lie on either side of the rule
    assert ("noise-note" in page.ids) is within and ("noise-clear" in page.ids) is not within
    judged = page.paragraphs["noise-note" if within else "noise-clear"]
    assert f"rial {leader} leads trial {runner_up} by {first[0] - second[0]:.4f} in reward" in judged
    assert f"2 × √({first[1]:.4f}² + {second[1]:.4f}²) = {margin:.4f}" in judged
    rows = {row[1]: row for row in page.tables["factors"]}
    assert [rows[str(number)][-1] for number in (leader, runner_up)] == [f"{first[1]:.4f}", f"{second[1]:.4f}"]
    definition = page.paragraphs["noise-definition"]
    assert f"n = {images:,} here, val_fraction 0.1 of the {num_images:,} images" in definition
    assert "σ(A) = √(A(1−A)/n)" in definition and "σ(S/S₀) = IQR/1.349" in definition
    assert "less than z·√(δ₁² + δ₂²) with z = 2" in definition


def test_the_hold_out_of_a_file_source_is_counted_from_its_headers_and_unknown_when_it_is_gone(tmp_path):
    data = tmp_path / "digits.npz"
    numpy.savez(data, images=numpy.zeros((120, 8, 8, 1), numpy.uint8), labels=numpy.arange(120) % 3)
    recorder = Recorder(tmp_path, data=f"npz:{data}")
    record_all(recorder, [(0.70, 0.010, 2000), (0.65, 0.012, 2000)])
    page = Page(write_report(recorder.study, tmp_path / "report").path.read_text())
    assert f"n = 12 here, val_fraction 0.1 of the 120 images of npz:{data}" in page.paragraphs["noise-definition"]
    assert "noise-unknown" not in page.ids
    data.unlink()  # moved since the search: the count of hold-out images is unknown, and so is the noise
    page = Page(write_report(recorder.study, tmp_path / "again").path.read_text())
    assert page.paragraphs["noise-unknown"] == ("Whether the lead is inside the noise cannot be judged: the number "
                                                "of hold-out images is unknown (see below).")
    assert f"the study records the data source npz:{data} but not the count" in page.paragraphs["noise-definition"]
    assert {row[-1] for row in page.tables["factors"]} == {"-"} and {row[5] for row in page.tables["factors"]} == {"-"}


def test_a_trial_timed_before_paired_timing_has_no_step_time_noise_and_the_verdict_says_so(tmp_path):
    recorder = Recorder(tmp_path)
    recorder.record(measured(0.6, 0.020, 2000), baseline=True)
    leader = recorder.record(measured(0.70, 0.010, 2000))
    older = recorder.record(dataclasses.replace(measured(0.65, 0.012, 2000), step_time_ratio=None,
                                                step_time_ratio_iqr=None, reference_step_time_s=None))
    page = Page(write_report(recorder.study, tmp_path / "report").path.read_text())
    assert page.paragraphs["noise-unknown"] == (
        f"Whether the lead is inside the noise cannot be judged: trial {older} records no spread of the timed pairs "
        "of S/S₀ (step_time_ratio_iqr: timed before S/S₀ was timed in pairs).")
    rows = {row[1]: row for row in page.tables["factors"]}
    assert rows[str(older)][-1] == "-" and rows[str(leader)][-1] != "-"


def test_when_the_baseline_wins_the_verdict_says_no_candidate_beat_it(tmp_path):
    recorder = Recorder(tmp_path)
    best, _ = record_all(recorder, [(0.55, 0.020, 2000), (0.50, 0.020, 2000)])
    page = Page(write_report(recorder.study, tmp_path / "report").path.read_text())
    assert "verdict-line" not in page.ids
    message = page.paragraphs["baseline-wins"]
    assert message.startswith("No candidate beat the baseline.")
    assert f"trial {best} (rl), reached 0.5500" in message and "highest reward, 0.6000" in message
    assert [row[:2] for row in page.tables["verdict-table"]] == [["baseline", "0"], ["best candidate", str(best)]]


def test_the_verdict_shows_the_exported_spec_s_path_that_the_study_records(tmp_path):
    """nas search records where it wrote the best spec (records.EXPORTED_SPEC); the report shows that path, and
    still the command that writes the spec again. A study without the record gets the default path, said to be
    the default."""
    recorder = Recorder(tmp_path)
    best, _ = record_all(recorder, [(0.70, 0.020, 2000), (0.65, 0.020, 2000)])
    before = Page(write_report(recorder.study, tmp_path / "before").path.read_text()).paragraphs["export"]
    assert "runs/demo-best.yaml" in before and "does not record the path" in before
    exported = tmp_path / "specs & more" / "<winner>.yaml"  # escaped in the page, shown as typed
    recorder.study.set_user_attr(records.EXPORTED_SPEC, str(exported))
    text = write_report(recorder.study, tmp_path / "after").path.read_text()
    after = Page(text).paragraphs["export"]
    assert f"wrote the best trial's spec, as of the end of its last run, to {exported}" in after
    assert "runs/demo-best.yaml" not in after and "does not record" not in after
    assert html.escape(str(exported), quote=False) in text
    assert f"nas export --study demo --storage {recorder.config.storage_url} --trial {best}" in after


def test_the_trials_table_has_a_row_per_trial_and_raw_sort_keys(campaign, campaign_page):
    _, page = campaign_page
    trials = campaign.study.get_trials(deepcopy=False)
    headers, rows, keys = page.headers["all-trials"], page.tables["all-trials"], page.sort_keys["all-trials"]
    assert [row[0] for row in rows] == [str(trial.number) for trial in trials]
    assert all(len(row) == len(key_row) == len(headers) and None not in key_row for row, key_row in zip(rows, keys))
    assert "sortable" in page.table_classes["all-trials"].split()
    # The sort runs in the page, from one inline script (no src: nothing is fetched) ...
    assert [attributes for attributes, _ in page.scripts] == [{}] and "sortTable" in page.scripts[0][1]
    # ... on raw keys: by reward, highest first and missing last, they give the best trials, then the others.
    reward = headers.index("reward")
    order = sorted(range(len(rows)), key=lambda row: (keys[row][reward] == "", -float(keys[row][reward] or 0)))
    ranked = trial_tables.best_trials(campaign.study, len(trials))
    assert [int(keys[row][0]) for row in order] == ([trial.number for trial in ranked]
                                                    + [trial.number for trial in trials if trial.value is None])
    parameters = headers.index("parameters")
    assert {(row[parameters], key[parameters]) for row, key in zip(rows, keys)} >= {("1,000", "1000"), ("-", "")}


def test_step_times_in_ms_are_labelled_and_only_beside_the_baseline_they_were_timed_with(campaign, campaign_page):
    """S/S₀ leads; a candidate's ms stand beside its own re-timed baseline's, never beside the baseline trial's."""
    text, page = campaign_page
    headers = page.headers["all-trials"]
    assert headers.index("S/S₀") < headers.index("S at timing settings (ms)")
    assert headers.index("its re-timed baseline (ms)") == headers.index("S at timing settings (ms)") + 1
    for trial, row in zip(campaign.study.get_trials(deepcopy=False), page.tables["all-trials"]):
        cells = dict(zip(headers, row))
        if trial.state.name != "COMPLETE":
            continue
        ratio = float(cells["S at timing settings (ms)"]) / float(cells["its re-timed baseline (ms)"])
        assert ratio == pytest.approx(float(cells["S/S₀"]), rel=1e-3)  # a row's two ms give its S/S₀
    assert "never one row's ms with another's" in page.paragraphs["trials-note"]
    winner = trial_tables.best_trials(campaign.study, 1)[0]
    ratio = winner.user_attrs["step_time_ratio"]
    lines = re.findall(r'<h3>(Baseline|Winner by reward)[^<]*</h3><p class="note">(.*?)</p>', text)
    measurements = {title: html.unescape(line) for title, line in lines}
    assert ("step time S/S₀ 1.000 (by definition: S₀ is 20.00 ms a step at the timing settings, 32 px and batch 32, "
            "timed alone)") in measurements["Baseline"]
    assert (f"step time S/S₀ {ratio:.3f} ({ratio * BASELINE_STEP_TIME * LOAD * 1e3:.2f} ms a step at the timing "
            f"settings, 32 px and batch 32, against {BASELINE_STEP_TIME * LOAD * 1e3:.2f} ms for the baseline "
            "re-timed beside it)") in measurements["Winner by reward"]
    assert "the baseline's)" not in measurements["Winner by reward"]


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js runs the page's comparator outside a browser")
def test_the_page_s_comparator_sorts_numbers_as_numbers_and_missing_values_last(campaign_page):
    script = campaign_page[1].scripts[0][1]
    comparator = re.search(r"function compareCells\(.*?\n}\n", script, re.DOTALL).group(0)
    keys = ["10", "", "9.5", "1e-3", "", "100", "-2"]
    program = (comparator + f"const keys = {json.dumps(keys)};\n"
               "for (const ascending of [true, false]) console.log(JSON.stringify("
               "[...keys].sort((a, b) => compareCells(a, b, ascending))));")
    lines = subprocess.run(["node", "-e", program], capture_output=True, text=True, check=True,
                           timeout=60).stdout.splitlines()
    assert [json.loads(line) for line in lines] == [["-2", "1e-3", "9.5", "10", "100", "", ""],
                                                    ["100", "10", "9.5", "1e-3", "-2", "", ""]]


def test_wall_time_comes_from_the_trial_datetimes_and_an_unset_storage_is_the_default_one(tmp_path):
    study = optuna.create_study(direction="maximize", study_name="demo", storage=f"sqlite:///{tmp_path}/s.db")
    study.set_user_attr("campaign", {"study": "demo", "storage": None, "controller": "rl"})
    start = datetime(2025, 1, 1, 10, 0)
    for number, (begin, minutes) in enumerate([(0, 50), (40, 50)]):  # overlapping: 90 min of wall time, 100 of trials
        study.add_trial(optuna.trial.FrozenTrial(
            number=number, state=optuna.trial.TrialState.FAIL, value=None,
            datetime_start=start + timedelta(minutes=begin),
            datetime_complete=start + timedelta(minutes=begin + minutes), params={}, distributions={},
            user_attrs={"failure_reason": "out of memory: x"}, system_attrs={}, intermediate_values={}, trial_id=0,
        ))
    page = Page(write_report(study, tmp_path / "report").path.read_text())
    device = dict(page.tables["device"])
    assert device["campaign wall time"].startswith(
        "1 h 30 min, from the first trial's start (2025-01-01 10:00:00) to the last trial's end (2025-01-01 11:30:00)")
    assert "1 h 40 min of trial time" in device["campaign wall time"]
    default = "sqlite:///runs/demo.db (the default, relative to the directory the search ran in)"
    assert device["storage"] == default and dict(page.tables["settings"])["storage"] == default
    summary = write_report(study, tmp_path / "report", force=True).path.read_text()
    assert "wall time 1 h 30 min" in summary


def test_the_axis_labels_and_the_factor_headers_carry_the_study_s_exponents(tmp_path):
    recorder = Recorder(tmp_path, step_time_exponent=-0.1, params_exponent=-0.02)
    record_all(recorder, [(0.7, 0.018, 1800), (0.65, 0.015, 2500)])
    data = StudySnapshot.read(recorder.study)
    assert data.exponents == (-0.1, -0.02)
    figures = {figure.name: figure for figure in FIGURES}
    history, tradeoffs = figures["history"].draw(data), figures["tradeoffs"].draw(data)
    label = history.axes[0].get_ylabel()
    assert "^{-0.1}" in label and "^{-0.02}" in label
    assert "^{-0.1}" in tradeoffs.axes[0].get_xlabel() and "^{-0.02}" in tradeoffs.axes[1].get_xlabel()
    pyplot.close(history)
    pyplot.close(tradeoffs)
    for factor in data.factors:  # the rewards were computed with these exponents
        assert factor.factors.product == pytest.approx(factor.reward, rel=1e-12)
    headers = Page(write_report(recorder.study, tmp_path / "report").path.read_text()).headers["factors"]
    assert {"(S/S₀)^-0.1", "(P/P₀)^-0.02"} <= set(headers)


def test_the_decision_bars_give_their_sample_sizes_and_warn_when_the_top_group_is_small(campaign, campaign_page,
                                                                                        monkeypatch):
    _, page = campaign_page
    assert "all candidates n = 13; the top 10% by reward n = 1" in page.paragraphs["decisions-sample"]
    assert "only 1 candidate (fewer than 5)" in page.paragraphs["decisions-small-sample"]
    data = StudySnapshot.read(campaign.study)
    decisions = {figure.name: figure for figure in FIGURES}["decisions"]
    figure = decisions.draw(data)
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend[:2] == ["all candidates (n = 13)", "top 10% by reward (n = 1)"]
    assert any("only 1 candidate" in text.get_text() for text in figure.texts)
    pyplot.close(figure)
    for module in (reports, report_figures):  # 5 of the 10 complete candidates: no warning
        monkeypatch.setattr(module, "TOP_FRACTION", 0.5)
    figure = decisions.draw(data)
    assert [text.get_text() for text in figure.legends[0].get_texts()][1] == "top 50% by reward (n = 5)"
    assert not any("only" in text.get_text() for text in figure.texts)
    pyplot.close(figure)
    assert reports._decisions(data)["warning"] is None


def bars(figure, label: str) -> dict[str, list[float]]:
    """The heights of the bars labelled ``label``, per decision of SPACE."""
    heights = {}
    for axes, decision in zip(figure.axes, sorted(SPACE.decisions, key=lambda decision: (
            decision.stage, DECISION_FIELDS.index(decision.field)))):
        container = next(container for container in axes.containers if container.get_label() == label)
        heights[decision.name] = [patch.get_height() for patch in container]
    return heights


def test_the_decision_bars_show_what_the_rl_policy_prefers_now(campaign):
    figure = {figure.name: figure for figure in FIGURES}["decisions"].draw(StudySnapshot.read(campaign.study))
    policy = PolicyGradientSampler(SPACE)
    policy.update(campaign.study)
    probabilities = policy.policy_probabilities()
    shown = bars(figure, "RL policy now (what it proposes next)")
    pyplot.close(figure)
    assert shown == {decision.name: pytest.approx([probabilities[decision.name][choice]
                                                   for choice in decision.choices])
                     for decision in SPACE.decisions}
    assert any(max(heights) - min(heights) > 0.01 for heights in shown.values())  # learned, not uniform


def test_the_decision_bars_show_the_evolution_population_now(tmp_path):
    recorder = Recorder(tmp_path, controller="evolution")
    record_all(recorder, [candidate[1:] for candidate in CANDIDATES[:4]], controller="evolution")
    figure = {figure.name: figure for figure in FIGURES}["decisions"].draw(StudySnapshot.read(recorder.study))
    evolution = RegularizedEvolutionSampler(SPACE, budget=recorder.config.trials)
    evolution.update(recorder.study)
    members = [indices for indices, _ in evolution.population()]
    shown = bars(figure, f"evolution's population now (n = {len(members)})")
    pyplot.close(figure)
    assert len(members) == 5  # the baseline and four candidates
    for position, decision in enumerate(SPACE.decisions):
        assert shown[decision.name] == pytest.approx(
            [sum(member[position] == index for member in members) / len(members)
             for index in range(len(decision.choices))])


def test_the_trade_off_labels_do_not_overlap(tmp_path):
    recorder = Recorder(tmp_path)
    # twelve candidates packed close together, all on the front: each more accurate, slower and larger than the last
    record_all(recorder, [(0.70 + 0.002 * index, 0.0175 + 0.0002 * index, 1800 + 5 * index) for index in range(12)])
    data = StudySnapshot.read(recorder.study)
    assert len(data.front) == 12
    figure = {figure.name: figure for figure in FIGURES}["tradeoffs"].draw(data)
    renderer = figure.canvas.get_renderer()
    for axes in figure.axes:
        labels = [text.get_text() for text in axes.texts]
        assert labels[:2] == [str(data.winner.number), "0"]  # the winner first, then the baseline
        assert len(labels) >= 6 and set(labels) <= {str(number) for number in data.front | {0}}
        boxes = []
        for text in axes.texts:
            text.update_positions(renderer)
            boxes.append(Text.get_window_extent(text, renderer))
        area = axes.get_window_extent(renderer)
        assert all(area.x0 <= box.x0 and box.x1 <= area.x1 and area.y0 <= box.y0 and box.y1 <= area.y1
                   for box in boxes)
        assert not any(first.overlaps(second) for first, second in itertools.combinations(boxes, 2))
        assert len({text.xyann for text in axes.texts}) > 1  # some labels had to move
    pyplot.close(figure)


def test_the_timeline_is_the_report_s_own_figure(campaign):
    figure = {figure.name: figure for figure in FIGURES}["timeline"].draw(StudySnapshot.read(campaign.study))
    axes = figure.axes[0]
    assert axes.get_xlabel().startswith("time since the first trial started")
    labels = set(axes.get_legend_handles_labels()[1]) | {text.get_text() for text in axes.get_legend().get_texts()}
    assert {"baseline", "rl: complete", "random: complete", "failed", "interrupted", "running (no end yet)"} <= labels
    started = [trial for trial in campaign.study.trials if trial.datetime_start is not None]
    assert sum(len(container) for container in axes.containers) == len(started)  # one bar per started trial
    pyplot.close(figure)


def _empty(recorder: Recorder) -> None:
    pass


def _baseline_only(recorder: Recorder) -> None:
    recorder.record(measured(0.6, 0.02, 2000), baseline=True)


def _baseline_failed(recorder: Recorder) -> None:
    recorder.record(EvalResult(status="failed", failure_reason="out of memory: baseline"), baseline=True)
    recorder.ask()


@pytest.mark.parametrize("fill, not_drawn, tables", [
    (_empty, {"history", "tradeoffs", "decisions", "timeline"}, {"device", "settings"}),
    (_baseline_only, {"decisions"},
     {"verdict-table", "factors", "all-trials", "stages-baseline", "stages-winner", "device", "settings"}),
    (_baseline_failed, {"history", "tradeoffs", "decisions"},
     {"all-trials", "stages-baseline", "failures", "device", "settings"}),
], ids=["empty", "baseline-only", "nothing-complete"])
def test_a_report_is_written_for_a_study_that_cannot_show_everything(tmp_path, fill, not_drawn, tables):
    recorder = Recorder(tmp_path)
    fill(recorder)
    report = write_report(recorder.study, tmp_path / "report")
    assert set(report.not_drawn) == not_drawn
    page = Page(report.path.read_text())
    assert {f"missing-{name}" for name in not_drawn} <= page.ids
    assert sorted(page.images) == sorted(path.name for path in report.figures)
    for path in report.figures:
        assert_png(path)
    assert {name for name, rows in page.tables.items() if rows} == tables


HOSTILE = "<script>alert(1)</script>\"'&"


def test_every_string_from_the_study_is_escaped_by_the_templates(tmp_path):
    """A study name, a space name, a controller, a device, a failure reason, a campaign setting and an exported
    path that hold markup come out as text wherever the page shows them, in element text and attributes alike."""
    study = optuna.create_study(direction="maximize", study_name=HOSTILE, storage=f"sqlite:///{tmp_path}/s.db")
    study.set_user_attr(records.SPACE_NAME, HOSTILE)
    study.set_user_attr(records.CAMPAIGN, {"controller": "random", "storage": None, "notes": HOSTILE})
    study.set_user_attr(records.EXPORTED_SPEC, f"/runs/{HOSTILE}.yaml")
    spec = SPACE.baseline
    for role, reward in ((records.ROLE_BASELINE, 0.6), (records.ROLE_CANDIDATE, 0.7)):
        study.add_trial(optuna.trial.create_trial(value=reward, user_attrs={
            "role": role, "controller": HOSTILE, "device": HOSTILE, "spec": spec.to_dict(),
            "block_strings": list(spec.block_strings), "accuracy": reward, "step_time_s": 0.02,
            "normalized_step_time": 1.0, "parameters": 2000, "normalized_parameters": 1.0,
        }))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                              user_attrs={"failure_reason": f"out of memory: {HOSTILE}"}))
    text = write_report(study, tmp_path / "report").path.read_text()
    assert "<script>alert" not in text and text.count("<script>") == 1  # the page's own sort script alone
    page = Page(text)
    assert html.unescape(re.search(r"<title>(.*?)</title>", text).group(1)) == f"nas report: {HOSTILE}"
    assert html.unescape(re.search(r"<h1>(.*?)</h1>", text).group(1)) == f"Search report: {HOSTILE}"
    assert html.unescape(re.search(r'<p class="summary">(.*?)</p>', text).group(1)).startswith(f"space {HOSTILE};")
    assert page.paragraphs["verdict-line"].startswith(f"Trial 1 ({HOSTILE}) wins")
    assert page.tables["failures"][0][3] == f"out of memory: {HOSTILE}"
    controller = page.headers["all-trials"].index("controller")
    assert [row[controller] for row in page.tables["all-trials"][:2]] == [HOSTILE, HOSTILE]
    assert page.sort_keys["all-trials"][1][controller] == HOSTILE  # an attribute value, escaped all the same
    assert ["notes", HOSTILE] in page.tables["settings"]
    assert ["study", HOSTILE] in page.tables["device"] and ["devices of the trials", HOSTILE] in page.tables["device"]
    assert f"to /runs/{HOSTILE}.yaml (the path" in page.paragraphs["export"]
    assert f"--study {shlex.quote(HOSTILE)}" in page.paragraphs["export"]


def test_writing_a_report_imports_no_torch(campaign, tmp_path):
    """``nas report`` reads the study and draws; the stage tables' parameters are counted without building a
    network (nas.complexity), so the command never pays for torch."""
    code = ("import sys\nfrom nas.cli import main\n"
            f"status = main(['report', '--study', 'demo', '--storage', {campaign.config.storage_url!r}, "
            f"'-o', {str(tmp_path / 'report')!r}])\n"
            "print(status, 'torch' in sys.modules)")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert result.stdout.splitlines()[-1] == "0 False", result.stderr
    assert (tmp_path / "report" / REPORT_FILE).is_file()


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_refused(status: int, err: str, command: str, *words: str) -> None:
    """Exit status 2 and one line on stderr naming the command and every word."""
    assert status == EXIT_USAGE and err.startswith(f"nas {command}: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"


def test_the_command_writes_a_report_and_refuses_to_overwrite_it_without_force(capsys, campaign, tmp_path,
                                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = campaign.config.storage_url
    output = tmp_path / "new" / "report"
    status, out, err = run(capsys, "report", "--study", "demo", "--storage", storage, "-o", output)
    assert status == 0 and f"wrote {output / REPORT_FILE} with {len(PLAIN_FIGURES)} figure(s)" in out, err
    before = (output / REPORT_FILE).stat().st_mtime_ns
    status, out, err = run(capsys, "report", "--study", "demo", "--storage", storage, "-o", output)
    assert_refused(status, err, "report", str(output), "report.html", "--force")
    assert (output / REPORT_FILE).stat().st_mtime_ns == before
    status, out, err = run(capsys, "report", "--study", "demo", "--storage", storage, "-o", output, "--force")
    assert status == 0 and "wrote" in out, err
    (tmp_path / "file").write_text("x")
    status, out, err = run(capsys, "report", "--study", "demo", "--storage", storage, "-o", tmp_path / "file")
    assert_refused(status, err, "report", "not a directory")


def test_force_leaves_no_figure_of_the_earlier_report(tmp_path):
    recorder = Recorder(tmp_path)
    recorder.record(measured(0.6, 0.02, 2000), baseline=True)
    recorder.record(measured(0.7, 0.02, 2000))
    write_report(recorder.study, tmp_path / "report")
    assert (tmp_path / "report" / "decisions.png").exists()
    empty = Recorder(tmp_path / "other")
    report = write_report(empty.study, tmp_path / "report", force=True)
    assert report.figures == () and sorted(path.name for path in (tmp_path / "report").iterdir()) == [REPORT_FILE]


def test_every_file_is_written_through_the_safe_write_helper(campaign, tmp_path, monkeypatch):
    written = []

    def write_file(path, content, **options):
        written.append(Path(path))
        return files.write_file(path, content, **options)

    monkeypatch.setattr(reports, "write_file", write_file)
    report = write_report(campaign.study, tmp_path / "report")
    assert sorted(written) == sorted((tmp_path / "report").iterdir()) == sorted([report.path, *report.figures])
    for path in report.figures:
        assert_png(path)


def test_a_link_planted_at_a_report_file_is_replaced_not_written_through(campaign, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / REPORT_FILE).symlink_to(victim)
    with pytest.raises(FileExistsError, match="report.html.*--force"):
        write_report(campaign.study, tmp_path / "report")
    report = write_report(campaign.study, tmp_path / "report", force=True)
    assert not report.path.is_symlink() and "<h1>Search report" in report.path.read_text()
    assert victim.read_text() == "keep"


def disk_full_on(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """The report's ``call``-th write (1-based; figures first, report.html last) fails part-way through the real
    helper with ENOSPC, as on a full disk; the writes before it succeed."""
    calls = []

    def write_file(path, content, **options):
        calls.append(path)
        if len(calls) == call:
            def fill(file):
                file.write(b"\x89PNG partial")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            content = fill
        return files.write_file(path, content, **options)

    monkeypatch.setattr(reports, "write_file", write_file)


def listing(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (hidden ones too) with its bytes."""
    return {str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


@pytest.mark.parametrize("call, failed", [(2, "tradeoffs.png"), (len(PLAIN_FIGURES) + 1, REPORT_FILE)],
                         ids=["second figure", "the page"])
def test_a_full_disk_leaves_nothing_behind_and_a_rerun_writes_the_report(capsys, campaign, tmp_path, monkeypatch,
                                                                          call, failed):
    storage, output = campaign.config.storage_url, tmp_path / "new" / "report"
    monkeypatch.chdir(tmp_path)
    before = listing(tmp_path)
    disk_full_on(monkeypatch, call)
    status, out, err = run(capsys, "report", "--study", "demo", "--storage", storage, "-o", output)
    assert_refused(status, err, "report", f"cannot write {output / failed}: no space left on device")
    assert listing(tmp_path) == before and not (tmp_path / "new").exists()  # the directories it made are gone too
    monkeypatch.setattr(reports, "write_file", files.write_file)  # the disk has room again
    status, out, err = run(capsys, "report", "--study", "demo", "--storage", storage, "-o", output)
    assert status == 0 and f"wrote {output / REPORT_FILE} with {len(PLAIN_FIGURES)} figure(s)" in out, err


def test_a_full_disk_with_force_keeps_every_file_that_was_there_before(campaign, tmp_path, monkeypatch):
    earlier = Recorder(tmp_path / "earlier")
    earlier.record(measured(0.6, 0.02, 2000), baseline=True)  # no decisions.png: the new report adds it
    directory = tmp_path / "report"
    write_report(earlier.study, directory)
    (directory / "notes.txt").write_text("mine")
    before = listing(directory)
    assert "decisions.png" not in before
    disk_full_on(monkeypatch, len(PLAIN_FIGURES) + 1)
    with pytest.raises(OSError) as error:
        write_report(campaign.study, directory, force=True)
    assert str(error.value) == f"cannot write {directory / REPORT_FILE}: no space left on device"
    after = listing(directory)
    assert after.keys() == before.keys()  # decisions.png, new in this run, is removed; no temporary file is left
    assert after[REPORT_FILE] == before[REPORT_FILE] and after["notes.txt"] == b"mine"


def test_a_report_is_written_to_any_directory_the_user_can_write(campaign, tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    report = write_report(campaign.study, tmp_path / "shared" / "www" / "report")
    assert report.path == tmp_path / "shared" / "www" / "report" / REPORT_FILE and report.path.is_file()


@pytest.mark.parametrize("password", ["s3cr/et", "s3c@ret", "s3cr:et"])
def test_no_storage_password_appears_in_the_report(tmp_path, password):
    recorder = Recorder(tmp_path)
    recorder.record(measured(0.6, 0.02, 2000), baseline=True)
    campaign_settings = recorder.study.user_attrs["campaign"]
    recorder.study.set_user_attr("campaign", {**campaign_settings, "storage": f"postgresql://u:{password}@h/db"})
    text = write_report(recorder.study, tmp_path / "report").path.read_text()
    assert password not in text and html.escape(password) not in text
    assert ["storage", "postgresql://u:***@h/db"] in Page(text).tables["settings"]
    assert ["storage", "postgresql://u:***@h/db"] in Page(text).tables["device"]
    assert "postgresql://u:***@h/db" in Page(text).paragraphs["export"]  # the command that writes the winner's spec


# --- successive halving: learning curves and stopped trials --------------------------------------------------------

EPOCHS = 10  # the campaign's train.epochs (CampaignConfig's default)
RUNGS = (1, 3, 9)  # recorded before rungs had to leave room (now 1, 3): the report shows what the study holds
SCHEDULER = {"type": "asha", "min_epochs": 1, "reduction_factor": 3}


class HalvingRecorder(Recorder):
    """Writes trials the way a campaign with successive halving does: every trial reports its reward at each rung
    it reaches (``trial.report(reward, step=epoch)``); one stopped at a rung is PRUNED with status "stopped"."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        campaign_settings = self.study.user_attrs["campaign"]
        assert campaign_settings["train"]["epochs"] == EPOCHS
        self.study.set_user_attr("campaign", {**campaign_settings, "scheduler": SCHEDULER})

    def complete(self, accuracy: float, step_time: float, parameters: int, controller: str = "rl", *,
                 baseline: bool = False) -> int:
        trial, spec = self.ask(controller, baseline=baseline)
        rungs = []
        for epoch in RUNGS:  # below the final accuracy, rising with the epochs
            reward = round(accuracy * (0.5 + epoch / 20), 4)
            trial.report(reward, step=epoch)
            rungs.append({"epoch": epoch, "accuracy": reward, "reward": reward, "promoted": True})
        trial.set_user_attr("rungs", rungs)
        result = measured(accuracy, step_time, parameters, EPOCHS)
        studies.record_result(self.study, trial, spec, as_baseline(result) if baseline else result,
                              self.config.reward_exponents)
        return trial.number

    def stop(self, epoch: int, reward: float, controller: str = "random") -> int:
        """A trial stopped at the rung ``epoch`` with ``reward`` (and accuracy) there."""
        trial, _ = self.ask(controller)
        reached = [rung for rung in RUNGS if rung <= epoch]
        rungs = []
        for rung in reached:
            value = reward if rung == epoch else round(reward * 0.9, 4)
            trial.report(value, step=rung)
            rungs.append({"epoch": rung, "accuracy": value, "reward": value, "promoted": rung != epoch})
        for key, value in {
            "status": "stopped", "stopped_at_epoch": epoch, "epochs_completed": epoch, "accuracy": reward,
            "rungs": rungs, "failure_reason": f"stopped by successive halving at epoch {epoch} of {EPOCHS}: reward "
                                              f"{reward:.4f} below the cutoff 0.6500 (top 1 of 4 at this rung)",
        }.items():
            trial.set_user_attr(key, value)
        self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # Optuna keeps the last rung's reward
        return trial.number


@pytest.fixture(scope="module")
def halving(tmp_path_factory: pytest.TempPathFactory) -> HalvingRecorder:
    """The baseline and three complete candidates (10 epochs each), five stopped at a rung (four at epoch 1, one
    at epoch 3 whose rung reward, 0.95, is above every complete trial's), one pruned by a constraint and one
    failed. The tests only read it."""
    recorder = HalvingRecorder(tmp_path_factory.mktemp("halving"))
    recorder.complete(0.6, 0.020, 2000, baseline=True)  # 0
    recorder.complete(0.70, 0.018, 1800)  # 1
    recorder.stop(1, 0.41)  # 2
    recorder.stop(1, 0.35)  # 3
    recorder.complete(0.65, 0.020, 2500, "random")  # 4
    recorder.stop(3, 0.95)  # 5
    recorder.stop(1, 0.30, "rl")  # 6
    recorder.stop(1, 0.28)  # 7
    recorder.complete(0.62, 0.030, 3000)  # 8
    recorder.record(EvalResult(status="pruned", failure_reason="P/P0 1.60 over max_params_ratio 1.50"))  # 9
    recorder.record(EvalResult(status="failed", failure_reason="out of memory: x"), "rl")  # 10
    return recorder


STOPPED = {2: 1, 3: 1, 5: 3, 6: 1, 7: 1}  # trial: the epoch it was stopped at
COMPLETE = (0, 1, 4, 8)
# 9 trials trained (4 complete, 5 stopped); 4 x 10 + 1 + 1 + 3 + 1 + 1 = 47 epochs of 9 x 10; 90 / 47 = 1.91
HALVING_LINE = "successive halving: 5 of 9 stopped early; 47 of 90 epochs trained, 1.9x less than full budget"


@pytest.fixture(scope="module")
def halving_report(halving: HalvingRecorder, tmp_path_factory: pytest.TempPathFactory) -> tuple[
        reports.Report, str, Page]:
    report = write_report(halving.study, tmp_path_factory.mktemp("halving-report") / "report")
    text = report.path.read_text()
    return report, text, Page(text)


def test_the_fixture_is_what_a_halving_campaign_records(halving):
    trials = halving.study.get_trials(deepcopy=False)
    assert [trial.number for trial in trials if trial.state.name == "COMPLETE"] == list(COMPLETE)
    assert {trial.number: trial.user_attrs["stopped_at_epoch"] for trial in trials
            if trial.user_attrs.get("status") == "stopped"} == STOPPED
    assert trials[5].state.name == "PRUNED" and trials[5].value == 0.95  # its last rung's reward
    assert trials[9].state.name == "PRUNED" and not trials[9].intermediate_values  # a constraint's
    assert sorted(trials[1].intermediate_values) == list(RUNGS)


def test_the_learning_curves_have_one_line_per_trial_that_reported_rungs(halving):
    snapshot = StudySnapshot.read(halving.study)
    figure = {figure.name: figure for figure in FIGURES}["curves"].draw(snapshot)
    axes = figure.axes[0]
    curves = {line.get_gid(): line for line in axes.get_lines() if (line.get_gid() or "").startswith("trial-")}
    assert sorted(curves) == sorted(f"trial-{number}" for number in (*COMPLETE, *STOPPED))
    for number, epoch in STOPPED.items():  # a stopped trial's line ends at its rung, with a cross
        line = curves[f"trial-{number}"]
        assert list(line.get_xdata())[-1] == epoch and line.get_marker() == "x"
        assert list(line.get_ydata()) == [halving.study.trials[number].intermediate_values[rung]
                                          for rung in RUNGS if rung <= epoch]
    for number in COMPLETE:  # a complete one's reaches its final reward at the last epoch
        line, trial = curves[f"trial-{number}"], halving.study.trials[number]
        assert list(line.get_xdata()) == [*RUNGS, EPOCHS] and line.get_ydata()[-1] == pytest.approx(trial.value)
    winner = trial_tables.best_trials(halving.study, 1)[0]
    labels = dict(zip(*reversed(axes.get_legend_handles_labels())))
    assert labels[f"winner (trial {winner.number})"] is curves[f"trial-{winner.number}"]
    assert labels["baseline (trial 0)"] is curves["trial-0"]
    assert matplotlib.colors.to_hex(curves[f"trial-{winner.number}"].get_color()) == matplotlib.colors.to_hex("crimson")
    assert {"complete", "stopped at a rung (×)"} <= set(labels)
    assert list(axes.get_xticks()) == [*RUNGS, EPOCHS]
    pyplot.close(figure)


def test_a_halving_report_shows_the_learning_curves_in_their_own_section(halving_report):
    report, text, page = halving_report
    assert report.not_drawn == {}
    assert sorted(path.name for path in report.figures) == sorted(f"{figure.name}.png" for figure in FIGURES)
    assert page.images == [f"{figure.name}.png" for figure in FIGURES]
    assert_png(report.path.parent / "curves.png")
    assert {"curves", "figure-curves"} <= page.ids and 'href="#curves"' in text
    assert text.index('<section id="history">') < text.index('<section id="curves">') < text.index(
        '<section id="tradeoffs">')


def test_a_report_without_rungs_shows_no_learning_curves(campaign, tmp_path):
    """The curves figure is absent, not replaced by a sentence, where no trial reported a rung."""
    snapshot = StudySnapshot.read(campaign.study)
    assert not snapshot.has_curves and snapshot.halving is None
    with pytest.raises(report_figures.NotDrawable):
        {figure.name: figure for figure in FIGURES}["curves"].draw(snapshot)
    report = write_report(campaign.study, tmp_path / "report")
    assert "curves" not in report.not_drawn and not (tmp_path / "report" / "curves.png").exists()


def test_the_summary_and_the_verdict_say_what_successive_halving_stopped_and_saved(halving, halving_report):
    _, text, page = halving_report
    summary = html.unescape(re.search(r'<p class="summary">(.*?)</p>', text).group(1))
    assert "11 trials (4 COMPLETE, 5 stopped, 1 PRUNED, 1 FAIL)" in summary and HALVING_LINE in summary
    assert page.paragraphs["halving"].startswith(HALVING_LINE[:1].upper() + HALVING_LINE[1:])
    assert "rungs at epochs 1, 3, 9 of 10, reduction factor 3" in page.paragraphs["halving"]
    assert text.index('id="verdict-line"') < text.index('id="halving"') < text.index('<section id="history">')
    summary = StudySnapshot.read(halving.study).halving
    assert (summary.trained, summary.stopped, summary.epochs_trained, summary.full_budget_epochs) == (9, 5, 47, 90)
    assert summary.saving == pytest.approx(90 / 47)


def test_the_full_budget_without_the_campaign_s_epochs_is_the_longest_complete_training(tmp_path):
    recorder = HalvingRecorder(tmp_path)
    recorder.complete(0.6, 0.020, 2000, baseline=True)
    recorder.stop(1, 0.4)
    campaign_settings = recorder.study.user_attrs["campaign"]
    recorder.study.set_user_attr("campaign", {**campaign_settings, "train": {}})
    summary = StudySnapshot.read(recorder.study).halving
    assert summary.line() == ("successive halving: 1 of 2 stopped early; 11 of 20 epochs trained, 1.8x less than "
                              "full budget")


def test_a_stopped_trial_is_marked_in_the_trials_table_and_never_wins(halving, halving_report):
    _, text, page = halving_report
    headers, rows = page.headers["all-trials"], {int(row[0]): row for row in page.tables["all-trials"]}
    state, epochs, accuracy = headers.index("state"), headers.index("epochs"), headers.index("A")
    for number, epoch in STOPPED.items():
        trial = halving.study.trials[number]
        assert rows[number][state] == f"stopped@{epoch}" and rows[number][epochs] == str(epoch)
        assert rows[number][accuracy] == f"{trial.user_attrs['accuracy']:.4g}"  # A at that rung
    assert {rows[number][state] for number in COMPLETE} == {"COMPLETE"}
    assert {rows[number][epochs] for number in COMPLETE} == {str(EPOCHS)}
    assert rows[9][state] == "PRUNED" and rows[10][state] == "FAIL"  # a constraint's pruning stays PRUNED
    assert set(map(int, re.findall(r'<tr class="stopped"><td class="num" data-sort="(\d+)"', text))) == set(STOPPED)
    assert "stopped@E" in page.paragraphs["trials-note"]
    # Trial 5's rung reward (0.95) is the study's highest value, yet the winner is the best complete trial.
    assert max(halving.study.trials, key=lambda trial: trial.value or 0).number == 5
    winner = trial_tables.best_trials(halving.study, 1)[0]
    assert winner.state.name == "COMPLETE" and winner.number == 1
    assert page.paragraphs["verdict-line"].startswith("Trial 1 (rl) wins")
    assert column(page, "top-trials", 0) == ["1"] and "5" not in column(page, "factors", 1)


def test_the_timeline_tells_stopped_trials_from_pruned_ones(halving):
    figure = {figure.name: figure for figure in FIGURES}["timeline"].draw(StudySnapshot.read(halving.study))
    labels = {text.get_text() for text in figure.axes[0].get_legend().get_texts()}
    assert {"stopped at a rung", "pruned by a constraint", "failed", "baseline"} <= labels
    assert not any("no end yet" in label for label in labels)  # no trial is still running
    pyplot.close(figure)


# --- nas trials / nas best: --filter and --sort ---------------------------------------------------------------------


def rows(capsys, command: str, storage: str, *argv: object) -> list[dict]:
    status, out, err = run(capsys, command, "--study", "demo", "--storage", storage, "--format", "json", *argv)
    assert status == 0, err
    return json.loads(out)


def test_trials_filter_by_state_and_controller_and_sort(capsys, campaign):
    storage, trials = campaign.config.storage_url, campaign.study.get_trials(deepcopy=False)
    complete = [trial for trial in trials if trial.state.name == "COMPLETE"]
    result = rows(capsys, "trials", storage, "--filter", "state=complete", "--sort", "reward", "--descending")
    assert [row["number"] for row in result] == [t.number for t in sorted(complete, key=lambda t: -t.value)]
    result = rows(capsys, "trials", storage, "--filter", "controller=RL", "--filter", "state=COMPLETE",
                  "--filter", "state=fail")
    expected = [t.number for t in trials if t.user_attrs.get("controller") == "rl"
                and t.state.name in ("COMPLETE", "FAIL")]
    assert [row["number"] for row in result] == expected and len(expected) == 6  # 5 complete, 1 failed
    assert {row["controller"] for row in result} == {"rl"}
    result = rows(capsys, "trials", storage, "--sort", "failure_reason")
    reasons = [row["failure_reason"] for row in result]
    assert reasons[:3] == sorted(reasons[:3]) and reasons[3:] == [None] * (len(trials) - 3)  # missing values last
    assert [row["state"] for row in rows(capsys, "trials", storage, "--filter", "state=waiting")] == ["WAITING"]


def test_the_text_table_fits_a_terminal_and_shows_failure_reasons_only_where_a_trial_has_one(capsys, campaign,
                                                                                              tmp_path):
    recorder = Recorder(tmp_path)
    record_all(recorder, [candidate[1:] for candidate in CANDIDATES])  # every trial complete: no reason to show
    status, out, err = run(capsys, "trials", "--study", "demo", "--storage", recorder.config.storage_url)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].split() == list(trial_tables.TEXT_COLUMNS) and len(lines) == 1 + len(CANDIDATES) + 1
    assert max(map(len, lines)) <= 90 and "None" not in out and "ms" not in lines[0]
    status, out, err = run(capsys, "trials", "--study", "demo", "--storage", campaign.config.storage_url)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [*trial_tables.TEXT_COLUMNS, "failure_reason"]
    assert any(line.endswith("  non-finite loss: nan at step 3") for line in lines) and "None" not in out
    # Every column is still in CSV and JSON, for scripts: the ms beside the re-timed baseline's, the architecture.
    csv_header = run(capsys, "trials", "--study", "demo", "--storage", recorder.config.storage_url,
                     "--format", "csv")[1].splitlines()[0]
    assert csv_header.split(",") == list(trial_tables.TABLE_COLUMNS)


def test_sorting_by_the_step_time_ratio_ranks_by_s_over_s0_where_ms_would_not(capsys, tmp_path):
    """Issue 28's demo: a trial at 1.167x timed on a busy machine shows more ms than one at 2.442x timed on a quiet
    one. Sorting by step_time_ms puts them the wrong way round; by step_time_ratio, the right way."""
    recorder = Recorder(tmp_path)
    recorder.record(measured(0.6, BASELINE_STEP_TIME, 2000), baseline=True)
    slow = recorder.record(measured(0.5, 2.442 * BASELINE_STEP_TIME, 2000, load=0.5))
    fast = recorder.record(measured(0.5, 1.167 * BASELINE_STEP_TIME, 2000, load=1.2))
    storage = recorder.config.storage_url
    by_ms = rows(capsys, "trials", storage, "--sort", "step_time_ms", "--descending")
    assert [row["number"] for row in by_ms] == [fast, slow, 0]  # what ms say: no ranking at all
    by_ratio = rows(capsys, "trials", storage, "--sort", "step_time_ratio", "--descending")
    assert [row["number"] for row in by_ratio] == [slow, fast, 0]
    assert [row["step_time_ratio"] for row in by_ratio] == pytest.approx([2.442, 1.167, 1.0])
    for row in by_ratio:  # each trial's ms against its own re-timed baseline's give its ratio
        assert row["step_time_ms"] / row["reference_step_time_ms"] == pytest.approx(row["step_time_ratio"])
    assert [row["step_time_ratio_iqr"] for row in by_ratio] == pytest.approx([2.442 / 20, 1.167 / 20, 0.0])
    status, out, _ = run(capsys, "trials", "--study", "demo", "--storage", storage, "--sort", "step_time_ratio",
                         "--descending")
    assert [line.split()[0] for line in out.splitlines()[1:]] == [str(slow), str(fast), "0"]


def test_best_ranks_among_the_filtered_trials(capsys, campaign):
    storage, study = campaign.config.storage_url, campaign.study
    by_reward = trial_tables.best_trials(study, len(study.trials))
    random_best = [t.number for t in by_reward if t.user_attrs["controller"] == "random"][:2]
    assert [row["number"] for row in rows(capsys, "best", storage, "-k", 2, "--filter", "controller=random")] \
        == random_best
    result = rows(capsys, "best", storage, "-k", 3, "--sort", "parameters")
    assert {row["number"] for row in result} == {t.number for t in by_reward[:3]}
    assert [row["parameters"] for row in result] == sorted(row["parameters"] for row in result)
    front = rows(capsys, "best", storage, "--pareto", "--filter", "controller=rl")
    assert {row["number"] for row in front} == {t.number for t in trial_tables.pareto_front(study)
                                                if t.user_attrs["controller"] == "rl"}


def test_trials_show_stopped_trials_with_their_rung(capsys, halving):
    storage = halving.config.storage_url
    result = rows(capsys, "trials", storage)
    assert [row["state"] for row in result] == [
        "COMPLETE", "COMPLETE", "stopped@1", "stopped@1", "COMPLETE", "stopped@3", "stopped@1", "stopped@1",
        "COMPLETE", "PRUNED", "FAIL"]
    assert result[5]["accuracy"] == 0.95 and result[5]["reward"] == 0.95  # at its rung
    # --filter state=PRUNED keeps every PRUNED trial: those stopped at a rung and the constraint's.
    assert [row["number"] for row in rows(capsys, "trials", storage, "--filter", "state=pruned")] == [
        2, 3, 5, 6, 7, 9]
    assert [row["number"] for row in rows(capsys, "trials", storage, "--filter", "state=COMPLETE")] == list(COMPLETE)
    # The text table: the state column says stopped@EPOCH, and the columns stay aligned.
    status, out, err = run(capsys, "trials", "--study", "demo", "--storage", storage)
    assert status == 0, err
    lines = out.splitlines()
    header = lines[0]
    end = header.index("state") + len("state")  # pandas right-aligns: every state ends under its header's end
    assert [line[:end].split()[-1] for line in lines[1:]] == [row["state"] for row in result]
    reasons = header.index("failure_reason")  # each row's reason follows the aligned columns, left-aligned
    assert [line[reasons:] for line in lines[1:]] == [row["failure_reason"] or "-" for row in result]
    assert {line[reasons - 2:reasons] for line in lines} == {"  "}
    for line in lines[1:]:
        assert line[end] == " " and line[:end].split()[0].isdigit()
    csv_lines = run(capsys, "trials", "--study", "demo", "--storage", storage, "--format", "csv")[1].splitlines()
    assert csv_lines[6].split(",")[:3] == ["5", "stopped@3", "candidate"]


def test_best_and_export_leave_stopped_trials_out(capsys, halving, tmp_path):
    storage = halving.config.storage_url
    assert [row["number"] for row in rows(capsys, "best", storage, "-k", 10)] == [
        trial.number for trial in trial_tables.best_trials(halving.study, 10)]
    assert {row["state"] for row in rows(capsys, "best", storage, "-k", 10)} == {"COMPLETE"}
    status, out, err = run(capsys, "export", "--study", "demo", "--storage", storage, "--trial", 5)
    assert_refused(status, err, "export", "trial 5 is PRUNED (successive halving stopped it after epoch 3)",
                   "not COMPLETE")


@pytest.mark.parametrize("argv, words", [
    (("--filter", "status=COMPLETE"), ["--filter", "unknown field 'status'", "state, controller"]),
    (("--filter", "state=done"), ["--filter state", "COMPLETE, PRUNED, FAIL, RUNNING, WAITING", "'DONE'"]),
    (("--filter", "controller=bayes"), ["--filter controller", "random, rl, tpe", "'bayes'"]),
    (("--filter", "state"), ["FIELD=VALUE", "state, controller", "'state'"]),
    (("--sort", "speed"), ["--sort", "unknown column 'speed'", "reward", "controller"]),
    (("--descending",), ["--descending", "--sort COLUMN"]),
])
@pytest.mark.parametrize("command", ["trials", "best"])
def test_bad_filters_and_sort_columns_are_refused(capsys, tmp_path, command, argv, words):
    status, out, err = run(capsys, command, "--study", "demo", "--storage", f"sqlite:///{tmp_path}/s.db", *argv)
    assert_refused(status, err, command, *words)
    assert out == ""
