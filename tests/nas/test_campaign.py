"""Campaign files (defaults, overrides, refusal of unknown keys, the proxy settings a study is bound to) and the
campaign policy, run in this process by the local executor: locks, exhaustion, signals, re-runs, real data."""

import functools
import io
import itertools
import os
import signal
import sqlite3
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
import yaml

from nas import campaign as campaigns
from nas import local
from nas import storage as storages
from nas.campaign import CampaignConfig, CampaignError, load_campaign
from nas.cli import EXIT_FAILED, main
from nas.local import LocalExecutor
from nas.recipe import TimingConfig
from nas.records import EvalResult

EXPERIMENTS = sorted((Path(__file__).parents[2] / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_shipped_campaigns_load(path):
    config = load_campaign(path)
    assert config.trials >= 1 and config.train.epochs >= 1


def test_demo_campaign_is_small():
    demo = load_campaign(Path(__file__).parents[2] / "experiments" / "cpu-demo.yaml")
    assert demo.space == "tiny" and demo.data.startswith("synthetic") and demo.trials <= 20


def test_overrides_reach_the_training_settings_and_ignore_missing_flags():
    config = CampaignConfig().with_overrides({"epochs": 3, "batch_size": 32, "image_size": None, "trials": 7,
                                              "controller": "random", "study": None})
    assert (config.train.epochs, config.train.batch_size, config.train.image_size) == (3, 32, None)
    assert (config.trials, config.controller, config.study) == (7, "random", "nas")


def test_default_storage_is_sqlite_under_runs():
    assert CampaignConfig(study="abc").storage_url == "sqlite:///runs/abc.db"
    assert CampaignConfig(storage="postgresql://h/db").storage_url == "postgresql://h/db"


def test_proxy_settings_leave_out_what_does_not_change_a_measurement():
    base = CampaignConfig()
    assert base.proxy_settings() == base.with_overrides({"trials": 99, "workers": 4, "controller": "tpe"}).proxy_settings()
    assert base.proxy_settings() != base.with_overrides({"epochs": 5}).proxy_settings()
    assert "device" not in base.proxy_settings()["train"] and "threads" not in base.proxy_settings()["train"]


@pytest.mark.parametrize(
    "data, words",
    [({"colour": 1}, ["unknown campaign key", "colour"]), ({"train": {"device": "cuda"}}, ["unknown train key"]),
     ({"train": {"epochs": 0}}, ["epochs"]), ({"trials": 0}, ["trials"]), ({"controller": "lstm"}, ["controller"]),
     ({"study": "../x"}, ["study"]), ({"gpus_per_trial": -1}, ["gpus_per_trial"]), ({"train": [1]}, ["train"]),
     ({"val_fraction": 0.9}, ["val_fraction"]), ({"workers": True}, ["workers"])],
)
def test_bad_campaigns_are_refused(data, words):
    with pytest.raises(CampaignError) as error:
        CampaignConfig.from_dict(data)
    for word in words:
        assert word in str(error.value)


def test_campaign_file_errors_name_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trials: -1\n")
    with pytest.raises(CampaignError, match=r"c\.yaml: trials"):
        load_campaign(path)
    with pytest.raises(FileNotFoundError):
        load_campaign(tmp_path / "missing.yaml")


# --- the campaign policy, run by the in-process executor ---------------------------------------------------------

DATA = "synthetic:num_images=200,image_size=32"
#: S/S0 timed as a campaign does, but briefly: a fixed two pairs of short windows on a small batch, whatever the
#: machine's load (no contention check: tests/nas/test_timing.py tests it).
TIMING = {"batch_size": 8, "warmup": 1, "pairs": 2, "window_s": 0.02, "precision": None, "max_stall": None}
MNIST = Path(__file__).resolve().parents[1] / "data" / "mnist5k.npz"


def measured(spec, data, config, rungs=None) -> EvalResult:
    return EvalResult(status="ok", accuracy=0.5, step_time_s=0.01, step_time_iqr_s=0.001, parameters=1000, macs=10,
                      device="cpu", wall_time_s=1.0, epochs_completed=1)


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


def test_a_driver_that_loses_its_lock_starts_nothing_records_what_runs_and_stops(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flaky = {}
    open_storage = campaigns.make_storage

    def make_storage(url):
        flaky["storage"] = FlakyStorage(open_storage(url))
        return flaky["storage"]

    calls = itertools.count()

    def outage_in_trial_two(spec, data, config, rungs=None):
        if next(calls) == 2:  # the storage is locked by another client for longer than the lock's safe share
            flaky["storage"].failing = True
            time.sleep(2.5)
            flaky["storage"].failing = False
        return measured(spec, data, config)

    monkeypatch.setattr(campaigns, "make_storage", make_storage)
    monkeypatch.setattr(campaigns, "DriverLock",
                        functools.partial(storages.DriverLock, heartbeat_interval=0.1, stale_after=4.0))
    config = CampaignConfig.from_dict({"space": "tiny", "data": DATA, "trials": 6, "controller": "random",
                                       "study": "lost", "train": {"epochs": 1, "batch_size": 32}, "timing": TIMING})
    with pytest.raises(campaigns.LockLostError) as lost:
        campaigns.run_campaign(config, LocalExecutor(trainer=outage_in_trial_two), out=io.StringIO())
    assert "could not be refreshed" in str(lost.value) and "database is locked" in str(lost.value)
    assert "resume" in str(lost.value)
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
    out = io.StringIO()
    config = CampaignConfig(space="four.yaml", data=DATA, trials=40, controller="random", study="four",
                            timing=TimingConfig(**TIMING))
    outcome = campaigns.run_campaign(config, LocalExecutor(trainer=measured), out=out)
    size = 4
    assert outcome.exhausted and outcome.finished == size
    assert f"search space exhausted: all {size} architectures of 'four'" in out.getvalue()
    study = optuna.load_study(study_name="four", storage="sqlite:///runs/four.db")
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == size


def test_sigterm_stops_the_campaign_like_ctrl_c_and_releases_the_lock(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def terminated_while_loading(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
        raise AssertionError("SIGTERM did not stop the campaign")

    monkeypatch.setattr(local, "load_data", terminated_while_loading)
    config = CampaignConfig(data=DATA, trials=3, controller="random", study="term", timing=TimingConfig(**TIMING))
    with pytest.raises(campaigns.Terminated):
        campaigns.run_campaign(config, LocalExecutor(trainer=measured), out=io.StringIO())
    assert optuna.get_all_study_names("sqlite:///runs/term.db") == ["term"]  # the lock was released
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler was restored


def test_sigterm_during_a_trial_marks_it_interrupted_and_it_runs_once_more_on_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = itertools.count()

    def terminated_in_trial_one(spec, data, config, rungs=None):
        if next(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        return measured(spec, data, config)

    config = CampaignConfig(data=DATA, trials=3, controller="random", study="again", timing=TimingConfig(**TIMING))
    with pytest.raises(campaigns.Terminated):
        campaigns.run_campaign(config, LocalExecutor(trainer=terminated_in_trial_one), out=io.StringIO())
    outcome = campaigns.run_campaign(config, LocalExecutor(trainer=measured), out=io.StringIO())
    study = optuna.load_study(study_name="again", storage="sqlite:///runs/again.db")
    states = [(t.state.name, t.user_attrs.get("interrupted"), t.user_attrs.get("requeued_from")) for t in study.trials]
    assert states == [("COMPLETE", None, None), ("FAIL", True, None), ("COMPLETE", None, 1), ("COMPLETE", None, None)]
    assert study.trials[2].params == study.trials[1].params and outcome.finished == 3 and outcome.ran == 2


def test_a_campaign_searches_on_real_grayscale_digits(tmp_path, monkeypatch):
    """Real MNIST digits (1 channel) in the driver's process: the baseline and a candidate train with 1-channel
    stems and learn; the outcome carries the best architecture."""
    monkeypatch.chdir(tmp_path)
    config = CampaignConfig.from_dict({"data": f"npz:{MNIST}", "trials": 2, "controller": "random", "study": "mnist",
                                       "train": {"epochs": 2, "batch_size": 64, "timing_repeats": 2},
                                       "timing": TIMING})
    config.check_inputs()
    outcome = campaigns.run_campaign(config, LocalExecutor(), out=io.StringIO())
    study = optuna.load_study(study_name="mnist", storage="sqlite:///runs/mnist.db")
    assert outcome.finished == 2 and [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    baseline = study.trials[0].user_attrs
    assert baseline["accuracy"] > 0.9  # 10 classes: chance is 0.1
    assert baseline["parameters"] == 183_460  # the tiny backbone with a 1-channel stem and a 10-way head
    # The recipe as resolved for 4,500 digits: the batch given, the learning rate scaled to it, no flips (npz).
    recipe = study.user_attrs["recipe"]
    assert (recipe["batch_size"], recipe["learning_rate"], recipe["augment"]) == (64, 0.05, "crop")
    assert recipe["warmup_steps"] == 7  # 5% of 2 epochs x 70 steps
    assert {key: baseline["recipe"][key] for key in recipe} == recipe  # each trial records the recipe it ran
    assert study.user_attrs["network_io"] == {"num_classes": 10, "in_channels": 1}
    assert (outcome.best_spec.num_classes, outcome.best_spec.in_channels) == (10, 1)  # what nas show counts for
    assert study.user_attrs["holdout_images"] == 500  # 10% of 5,000: what the report's accuracy noise is counted on
    best = study.trials[outcome.best_trial]
    assert outcome.best_spec.name == f"mnist-trial{outcome.best_trial}"
    assert list(outcome.best_spec.block_strings) == best.user_attrs["block_strings"]


def test_nas_search_reports_a_lost_lock_in_one_line_and_exits_1(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def lost(config, executor, **options):
        assert isinstance(executor, LocalExecutor)  # --executor local reached the campaign
        raise campaigns.LockLostError("the driver lock of study 'nas' could not be refreshed for 31.0 s")

    monkeypatch.setattr(campaigns, "run_campaign", lost)
    assert main(["search", "--executor", "local", "--trials", "2"]) == EXIT_FAILED
    assert capsys.readouterr().err == ("nas search: error: the driver lock of study 'nas' could not be refreshed "
                                       "for 31.0 s\n")


class NoExecutor(LocalExecutor):
    """An executor that must not be started."""

    def prepare(self, config):
        raise AssertionError("the executor was prepared (a Ray node would have started)")


def test_a_finished_campaign_s_resume_answers_without_starting_the_executor(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = CampaignConfig(data=DATA, trials=2, controller="random", study="done", timing=TimingConfig(**TIMING))
    first = campaigns.run_campaign(config, LocalExecutor(trainer=measured), out=io.StringIO())
    out = io.StringIO()
    again = campaigns.run_campaign(config, NoExecutor(), out=out)
    assert (again.finished, again.ran, again.best_trial) == (2, 0, first.best_trial) and out.getvalue() == ""
    # Another setting, or more trials wanted: the campaign opens the study as usual (and refuses, or runs).
    with pytest.raises(AssertionError, match="was prepared"):
        campaigns.run_campaign(config.with_overrides({"trials": 3}), NoExecutor(), out=io.StringIO())
    with pytest.raises(AssertionError, match="was prepared"):
        campaigns.run_campaign(config.with_overrides({"seed": 1}), NoExecutor(), out=io.StringIO())
