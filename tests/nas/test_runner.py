"""The campaign driver's policy without Ray: a synchronous stand-in for Tune drives the real StudySearcher,
DriverLock and study, one trial at a time, with a stand-in trainer."""

from __future__ import annotations

import dataclasses
import functools
import io
import itertools
import sqlite3
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
import yaml
from ray.tune.search import Searcher

from nas import runner
from nas import study as studies
from nas.campaign import CampaignConfig
from nas.cli import EXIT_FAILED, main
from nas.train import EvalResult, train_and_evaluate
from search_spaces.spec import ArchSpec

DATA = "synthetic:num_images=200,image_size=32"


def measured(spec, data, config) -> EvalResult:
    return EvalResult(status="ok", accuracy=0.5, step_time=0.01, step_time_iqr=0.001, parameters=1000, macs=10,
                      device="cpu", wall_time=1.0, epochs_completed=1)


def synchronous_tune(during_trial=lambda number: None, *, trainer=measured):
    """Tune's loop with one worker, in this process: suggest, train with ``trainer`` (None: the campaign's own),
    complete, until the searcher says FINISHED. ``during_trial`` runs while a trial trains (with its number), to
    inject a fault there."""

    def run(config, data, searcher, campaign_trainer, stop):
        for trial_id in map(str, itertools.count()):
            suggestion = searcher.suggest(trial_id)
            if suggestion == Searcher.FINISHED:
                return
            assert suggestion is not None, "one worker: nothing else is in flight"
            during_trial(suggestion["trial_number"])
            result = (trainer or campaign_trainer)(ArchSpec.from_dict(suggestion["spec"]), data,
                                                   dataclasses.replace(config.train, device="cpu"))
            searcher.on_trial_complete(trial_id, {runner.RESULT_KEY: runner.json.dumps(result.to_dict())})

    return run


class FlakyStorage:
    """Raises "database is locked" from study-attribute calls while ``failing`` is set (the heartbeat's calls)."""

    def __init__(self, storage):
        self.storage = storage
        self.failing = False

    def __getattr__(self, name):
        method = getattr(self.storage, name)
        if name not in ("set_study_user_attr", "get_study_user_attrs"):
            return method

        def call(*args, **kwargs):
            if self.failing:
                raise sqlalchemy.exc.OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked"))
            return method(*args, **kwargs)

        return call


def test_a_driver_that_loses_its_lock_starts_nothing_records_what_runs_and_exits_non_zero(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    flaky = {}
    open_storage = studies.make_storage

    def make_storage(url):
        flaky["storage"] = FlakyStorage(open_storage(url))
        return flaky["storage"]

    def storage_outage(number):
        if number == 2:  # the storage is locked by another client for longer than the lock's safe share
            flaky["storage"].failing = True
            time.sleep(2.5)
            flaky["storage"].failing = False

    monkeypatch.setattr(runner.studies, "make_storage", make_storage)
    monkeypatch.setattr(runner.studies, "DriverLock",
                        functools.partial(studies.DriverLock, heartbeat_interval=0.1, stale_after=4.0))
    monkeypatch.setattr(runner, "_run_tune", synchronous_tune(storage_outage))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"space": "tiny", "data": DATA, "trials": 6,
                                                     "controller": "random", "study": "lost",
                                                     "train": {"epochs": 1, "batch_size": 32}}))
    assert main(["search", "--config", "c.yaml"]) == EXIT_FAILED
    error = capsys.readouterr().err
    assert "could not be refreshed" in error and "database is locked" in error and "resume" in error
    study = optuna.load_study(study_name="lost", storage="sqlite:///runs/lost.db")
    # trials 0-1 before the outage, trial 2 in flight during it (recorded), nothing started after
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3


def test_a_campaign_on_an_exhausted_space_stops_and_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fixed = [{"op": [op], "kernel_size": [3], "expand_ratio": [expand], "num_layers": {"min": 2, "max": 2}}
             for op, expand in (("fused_mbconv", 1), ("fused_mbconv", 4), ("mbconv", 4), ("mbconv", 6))]
    fixed[0]["num_layers"] = {"min": 1, "max": 1}
    fixed[2]["kernel_size"] = [3, 5]
    fixed[3]["kernel_size"] = [3, 5]  # 2 x 2 = 4 architectures
    space = {"name": "four", "backbone": "tiny", "stages": fixed}
    (tmp_path / "four.yaml").write_text(yaml.safe_dump(space))
    monkeypatch.setattr(runner, "_run_tune", synchronous_tune())
    out = io.StringIO()
    config = CampaignConfig(space="four.yaml", data=DATA, trials=40, controller="random", study="four")
    outcome = runner.run_campaign(config, out=out, trainer=measured)
    size = 4
    assert outcome.exhausted and outcome.finished == size
    assert f"search space exhausted: all {size} architectures of 'four'" in out.getvalue()
    study = optuna.load_study(study_name="four", storage="sqlite:///runs/four.db")
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == size


def test_sigterm_before_tune_stops_like_ctrl_c(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def terminated_while_loading(*args, **kwargs):
        runner.os.kill(runner.os.getpid(), runner.signal.SIGTERM)
        time.sleep(1)
        raise AssertionError("SIGTERM did not stop the campaign")

    monkeypatch.setattr(runner, "load_data", terminated_while_loading)
    config = CampaignConfig(data=DATA, trials=3, controller="random", study="term")
    with pytest.raises(runner.Terminated):
        runner.run_campaign(config, out=io.StringIO(), trainer=measured)
    assert optuna.get_all_study_names("sqlite:///runs/term.db") == ["term"]  # the lock was released
    assert runner.signal.getsignal(runner.signal.SIGTERM) is runner.signal.SIG_DFL  # the handler was restored


MNIST = Path(__file__).resolve().parents[1] / "data" / "mnist5k.npz"


def test_a_campaign_searches_on_real_grayscale_digits(tmp_path, monkeypatch):
    """Real MNIST digits (1 channel): the baseline and a candidate train with 1-channel stems and learn."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner, "_run_tune", synchronous_tune(trainer=None))
    config = CampaignConfig.from_dict({"data": f"npz:{MNIST}", "trials": 2, "controller": "random", "study": "mnist",
                                       "train": {"epochs": 2, "batch_size": 64, "learning_rate": 0.05,
                                                 "augment": "none", "timing_repeats": 2}})
    config.check_inputs()
    outcome = runner.run_campaign(config, out=io.StringIO(), trainer=train_and_evaluate)
    study = optuna.load_study(study_name="mnist", storage="sqlite:///runs/mnist.db")
    assert outcome.finished == 2 and [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    baseline = study.trials[0].user_attrs
    assert baseline["accuracy"] > 0.9  # 10 classes: chance is 0.1
    assert baseline["parameters"] == 183_460  # the tiny backbone with a 1-channel stem and a 10-way head
