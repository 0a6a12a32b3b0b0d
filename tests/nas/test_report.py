"""``nas report`` and the trials table's ``--filter``/``--sort``, on studies written through the campaign's own calls.

The studies are real Optuna studies in SQLite, filled the way the runner fills them (``open_study``, the trial
attributes the Searcher sets, ``record_result`` with ``EvalResult``s, ``mark_interrupted``), without Ray or training.
"""

from __future__ import annotations

import errno
import html
import json
import os
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest
import matplotlib.colors
from matplotlib import pyplot
from PIL import Image

from nas import records
from nas import report as reports
from nas import study as studies
from nas import trials as trial_tables
from nas.campaign import CampaignConfig
from nas.cli import EXIT_USAGE, main
from nas.controllers import CONTROLLERS, distributions, make_sampler
from nas.records import EvalResult
from nas.report import FIGURES, REPORT_FILE, StudySnapshot, write_report
from search_spaces import files, presets

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
TABLES = ("top-trials", "stages-baseline", "stages-winner", "failures", "device", "settings")


def measured(accuracy: float, step_time: float, parameters: int) -> EvalResult:
    return EvalResult(status="ok", accuracy=accuracy, step_time_s=step_time, step_time_iqr_s=step_time / 20,
                      parameters=parameters, macs=parameters * 100, device=DEVICE, wall_time_s=1.0, epochs_completed=1)


class Recorder:
    """Writes trials to a fresh study the way the runner's Searcher does."""

    def __init__(self, tmp_path: Path) -> None:
        self.config = CampaignConfig(storage=f"sqlite:///{tmp_path}/study.db", study="demo")
        self.study = studies.open_study(self.config, SPACE, make_sampler("random", SPACE, seed=0))

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
        studies.record_result(self.study, trial, spec, result, self.config)
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
    """The parts of report.html the tests read: every table's rows (cell texts) by id, and the images."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self.ids: set[str] = set()
        self._table: str | None = None
        self._in_body = False
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if "id" in attributes:
            self.ids.add(attributes["id"])
        if tag == "table":
            self._table = attributes["id"]
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.tables[self._table].append([])
        elif tag == "td" and self._in_body:
            self._cell = []
        elif tag == "img":
            self.images.append(attributes["src"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_body = False
        elif tag == "td" and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


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
    assert sorted(path.name for path in report.figures) == sorted(f"{figure.name}.png" for figure in FIGURES)
    for path in report.figures:
        assert_png(path)
    text = report.path.read_text()
    page = Page(text)
    assert page.images == [f"{figure.name}.png" for figure in FIGURES]  # relative paths, beside the HTML
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
    assert set(reports.CONTROLLER_COLORS) == set(CONTROLLERS)
    assert len(set(reports.CONTROLLER_COLORS.values()) | {reports.UNKNOWN_CONTROLLER_COLOR}) == len(CONTROLLERS) + 1
    history = {figure.name: figure for figure in FIGURES}["history"].draw(StudySnapshot.read(campaign.study))
    points = {collection.get_label(): collection for collection in history.axes[0].collections}
    for controller in ("random", "rl"):
        expected = matplotlib.colors.to_rgba(reports.CONTROLLER_COLORS[controller], alpha=0.55)
        assert tuple(points[f"{controller}: reward"].get_facecolor()[0]) == pytest.approx(expected)
    pyplot.close(history)


def test_the_decisions_compare_the_top_tenth_with_all_candidates(campaign):
    data = StudySnapshot.read(campaign.study)
    assert [trial.number for trial in data.top] == [trial_tables.best_trials(campaign.study, 1)[0].number]
    figure = {figure.name: figure for figure in FIGURES}["decisions"].draw(data)
    assert len(figure.axes) == len(SPACE.decisions)
    proposed = 10 + 2 + 1  # complete, failed by themselves, running; not the interrupted one nor its waiting re-run
    assert figure.legends[0].get_texts()[0].get_text() == f"all candidates ({proposed})"
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
    (_baseline_only, {"decisions"}, {"stages-baseline", "stages-winner", "device", "settings"}),
    (_baseline_failed, {"history", "tradeoffs", "decisions"}, {"stages-baseline", "failures", "device", "settings"}),
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
    assert status == 0 and f"wrote {output / REPORT_FILE} with {len(FIGURES)} figure(s)" in out, err
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


@pytest.mark.parametrize("call, failed", [(2, "tradeoffs.png"), (len(FIGURES) + 1, REPORT_FILE)],
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
    assert status == 0 and f"wrote {output / REPORT_FILE} with {len(FIGURES)} figure(s)" in out, err


def test_a_full_disk_with_force_keeps_every_file_that_was_there_before(campaign, tmp_path, monkeypatch):
    earlier = Recorder(tmp_path / "earlier")
    earlier.record(measured(0.6, 0.02, 2000), baseline=True)  # no decisions.png: the new report adds it
    directory = tmp_path / "report"
    write_report(earlier.study, directory)
    (directory / "notes.txt").write_text("mine")
    before = listing(directory)
    assert "decisions.png" not in before
    disk_full_on(monkeypatch, len(FIGURES) + 1)
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


@pytest.mark.parametrize("argv, words", [
    (("--filter", "status=COMPLETE"), ["--filter", "unknown field 'status'", "state, controller"]),
    (("--filter", "state=done"), ["--filter state", "COMPLETE, FAIL, RUNNING, WAITING", "'DONE'"]),
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
