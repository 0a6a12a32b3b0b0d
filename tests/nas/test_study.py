"""The study as the campaign's record: attributes, rewards, resume rules and queries (no Ray, no training).

Every test that takes ``storage_url`` runs on each storage of the matrix: SQLite, the journal file, PostgreSQL.
"""

import dataclasses
import os
import re
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc

from nas import records, trials
from nas import storage as storages
from nas import study as studies
from nas.campaign import CampaignConfig
from nas.controllers import distributions, make_sampler
from nas.records import EvalResult
from search_spaces import presets


@pytest.fixture
def space():
    return presets.get_space("tiny")


EXPONENTS = studies.RewardExponents()  # the paper's w and v, a campaign's defaults


def create(config, space):
    """Opens ``config``'s study as a campaign does, with a random sampler."""
    return studies.open_study(config.study_settings(), space, make_sampler("random", space))


def config_for(storage_url, **changes):
    return CampaignConfig(storage=storage_url, study="s", **changes)


def open_(storage_url, space, **changes):
    config = config_for(storage_url, **changes)
    return config, create(config, space)


def result(accuracy=0.5, step_time=0.01, parameters=1000, ok=True):
    if not ok:
        return EvalResult(status="failed", failure_reason="out of memory: x", step_time_s=step_time, device="cpu")
    return EvalResult(status="ok", accuracy=accuracy, step_time_s=step_time, step_time_iqr_s=0.001,
                      parameters=parameters, macs=10, device="cpu", wall_time_s=1.0, epochs_completed=1)


def ask(study, space, role="candidate"):
    trial = study.ask(fixed_distributions=distributions(space))
    trial.set_user_attr("role", role)
    return trial, space.from_params(trial.params)


def test_a_new_study_records_space_and_settings(storage_url, space):
    config, study = open_(storage_url, space)
    attributes = study.user_attrs
    assert attributes["space_fingerprint"] == space.fingerprint() and attributes["space"] == space.to_dict()
    assert attributes["proxy"] == config.proxy_settings() and attributes["campaign"]["study"] == "s"
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE


def test_reopening_with_other_settings_says_what_differs(storage_url, space):
    open_(storage_url, space)
    open_(storage_url, space, trials=50)  # the budget is not a proxy setting
    with pytest.raises(studies.StudyError, match=r"train.epochs: study 10, now 3"):
        open_(storage_url, space, train=dataclasses.replace(CampaignConfig().train, epochs=3))
    with pytest.raises(studies.StudyError, match="space: the study has 'tiny'"):
        open_(storage_url, presets.get_space("efficientnet-b0"))


def test_a_different_settings_block_names_the_keys_that_differ(storage_url, space):
    """The ``timing`` and ``scheduler`` blocks are compared key by key, as ``train`` is: the message names
    ``timing.batch_size``, not both whole blocks."""
    open_(storage_url, space)
    changes = dict(timing=dataclasses.replace(CampaignConfig().timing, batch_size=64),
                   scheduler=dataclasses.replace(CampaignConfig().scheduler, reduction_factor=4))
    with pytest.raises(studies.StudyError) as refusal:
        open_(storage_url, space, **changes)
    message = str(refusal.value)
    assert message.endswith(": scheduler.reduction_factor: study 3, now 4; timing.batch_size: study None, now 64")
    assert "warmup" not in message and "min_epochs" not in message


def test_a_resume_may_time_more_precisely(storage_url, space):
    """How precisely S/S0 is measured (pairs, precision, the cap...) is not what it measures: a resume may change
    it, and a study made before a protocol setting existed resumes too."""
    open_(storage_url, space)
    precise = dataclasses.replace(CampaignConfig().timing, pairs=40, precision=0.01, max_seconds=120, warmup=9)
    _, study = open_(storage_url, space, timing=precise)
    proxy = dict(study.user_attrs[records.PROXY])
    proxy["timing"] = {key: value for key, value in proxy["timing"].items() if key not in ("precision", "max_stall")}
    study.set_user_attr(records.PROXY, proxy)  # as a study of the version before those settings existed
    open_(storage_url, space)


def test_settings_are_compared_key_by_key_at_any_depth(space):
    attributes = {"space_fingerprint": space.fingerprint(),
                  "proxy": {"block": {"inner": {"size": 1, "same": 2}}, "mode": {"kind": "a"}, "seed": 0}}
    proxy = {"block": {"inner": {"size": 3, "same": 2}, "added": True}, "mode": None, "seed": 0}
    settings = studies.StudySettings(study="s", storage_url="sqlite://", proxy=proxy, campaign={}, exponents=EXPONENTS)
    assert studies.settings_differences(attributes, space, settings) == [
        "block.added: study None, now True",
        "block.inner.size: study 1, now 3",
        "mode: study {'kind': 'a'}, now None",  # a block against a plain value: both shown whole
    ]


def test_rewards_are_normalized_by_the_baseline(storage_url, space):
    config, study = open_(storage_url, space)
    baseline_trial, baseline_spec = ask(study, space, role="baseline")
    assert studies.record_result(study, baseline_trial, baseline_spec, result(0.6, 0.02, 2000), EXPONENTS) == 0.6
    assert study.user_attrs["baseline"]["step_time_s"] == 0.02
    trial, spec = ask(study, space)
    reward = studies.record_result(study, trial, spec, result(0.5, 0.01, 4000), EXPONENTS)
    assert reward == pytest.approx(0.5 * 0.5 ** -0.07 * 2.0 ** -0.05)
    frozen = study.trials[1]
    assert frozen.value == reward and frozen.user_attrs["normalized_step_time"] == 0.5
    assert frozen.user_attrs["normalized_parameters"] == 2.0 and frozen.user_attrs["step_time_s"] == 0.01


def test_a_candidate_before_the_baseline_is_an_error(storage_url, space):
    config, study = open_(storage_url, space)
    trial, spec = ask(study, space)
    with pytest.raises(studies.StudyError, match="baseline must complete first"):
        studies.record_result(study, trial, spec, result(), EXPONENTS)


def test_failed_results_are_failed_trials_with_their_reason(storage_url, space):
    config, study = open_(storage_url, space)
    trial, spec = ask(study, space)
    assert studies.record_result(study, trial, spec, result(ok=False), EXPONENTS) is None
    frozen = study.trials[0]
    assert frozen.state == optuna.trial.TrialState.FAIL
    assert frozen.user_attrs["failure_reason"] == "out of memory: x" and frozen.user_attrs["step_time_s"] == 0.01
    assert studies.finished_trials(study) == [frozen]


def test_interrupted_trials_are_failed_and_owed_one_rerun(storage_url, space):
    _, study = open_(storage_url, space)
    trial, spec = ask(study, space)
    trial.set_user_attr("spec", spec.to_dict())
    assert studies.recover_interrupted(study) == [0]
    assert study.trials[0].state == optuna.trial.TrialState.FAIL and study.trials[0].user_attrs["interrupted"]
    assert studies.finished_trials(study) == []
    assert not study.get_trials(states=(optuna.trial.TrialState.WAITING,))  # nothing is left waiting...
    assert [t.number for t in studies.pending_reruns(study)] == [0]  # ...but the re-run is owed
    studies.enqueue_rerun(study, studies.pending_reruns(study)[0])
    rerun = study.ask(fixed_distributions=distributions(space))
    assert rerun.params == trial.params and rerun.user_attrs["requeued_from"] == 0
    rerun.set_user_attr("spec", spec.to_dict())
    assert studies.pending_reruns(study) == []  # its re-run exists
    assert studies.recover_interrupted(study) == [1]  # the re-run dies too...
    assert studies.pending_reruns(study) == []  # ...and is not run again


def test_the_baseline_is_not_owed_a_rerun(storage_url, space):
    _, study = open_(storage_url, space)
    trial, spec = ask(study, space, role="baseline")
    trial.set_user_attr("spec", spec.to_dict())
    studies.recover_interrupted(study)
    assert studies.pending_reruns(study) == []  # the campaign asks for the baseline until it is measured


def test_best_and_pareto(storage_url, space):
    config, study = open_(storage_url, space)
    values = [(0.6, 0.02, 2000), (0.7, 0.04, 2000), (0.5, 0.03, 3000), (0.6, 0.02, 1000)]
    for index, (accuracy, step_time, parameters) in enumerate(values):
        trial, spec = ask(study, space, role="baseline" if index == 0 else "candidate")
        studies.record_result(study, trial, spec, result(accuracy, step_time, parameters), EXPONENTS)
    assert [t.number for t in trials.best_trials(study, 2)] == [1, 3]  # 0.7 * 2^-0.07 > 0.6 * 0.5^-0.05
    assert sorted(t.number for t in trials.pareto_front(study)) == [1, 3]  # 0 and 2 are dominated by 3
    frame = trials.trials_frame(study)
    assert tuple(frame.columns) == trials.TABLE_COLUMNS and list(frame["number"]) == [0, 1, 2, 3]
    assert frame.loc[0, "role"] == "baseline" and frame.loc[1, "step_time_ms"] == pytest.approx(40.0)


def test_journal_storage_and_errors(tmp_path, space):
    config = CampaignConfig(storage=f"journal:{tmp_path}/j.log", study="j")
    create(config, space)
    assert studies.load_study(config.storage_url, "j").user_attrs["space_name"] == "tiny"
    with pytest.raises(studies.StudyError, match="no study 'other'.*studies there: j"):
        studies.load_study(config.storage_url, "other")
    with pytest.raises(studies.StudyError, match="cannot open storage"):
        storages.make_storage("nosuchdialect://x")


def test_a_trial_never_handed_to_a_worker_is_not_run_again(storage_url, space):
    _, study = open_(storage_url, space)
    trial, spec = ask(study, space)
    trial.set_user_attr("spec", spec.to_dict())  # handed over
    study.ask()  # the driver died while asking for this one: no spec recorded
    assert studies.recover_interrupted(study) == [0, 1]
    assert [t.number for t in studies.pending_reruns(study)] == [0]


def test_one_driver_per_study(storage_url):
    first = storages.DriverLock(storages.make_storage(storage_url), "s")
    second = storages.DriverLock(storages.make_storage(storage_url), "s")
    first.acquire()
    try:
        with pytest.raises(studies.StudyError, match=rf"study 's' is being run by the driver on host .* \(pid {os.getpid()}\)"):
            second.acquire()
        with storages.DriverLock(storages.make_storage(storage_url), "other"):
            pass  # another study's lock is independent
    finally:
        first.release()
    with second:  # free again once released
        assert not second.lost
    with pytest.raises(studies.StudyError, match="no study 'x'.*studies there: none"):
        studies.load_study(storage_url, "x")  # the locks are not studies of the campaign


def test_a_dead_drivers_lock_is_taken_over(storage_url):
    storage = storages.make_storage(storage_url)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "s" + storages.DRIVER_LOCK_SUFFIX)
    for key, value in {"host": socket.gethostname(), "pid": dead.pid, "heartbeat": time.time()}.items():
        storage.set_study_user_attr(lock_id, key, value)
    with storages.DriverLock(storages.make_storage(storage_url), "s"):
        pass


def test_a_silent_remote_lock_expires_and_the_old_holder_learns_it_lost(storage_url):
    holder = storages.DriverLock(storages.make_storage(storage_url), "s", heartbeat_interval=0.05, stale_after=60)
    holder.acquire()
    storage = storages.make_storage(storage_url)
    lock_id = storage.get_study_id_from_name("s" + storages.DRIVER_LOCK_SUFFIX)
    holder._stop.set()  # the holder's host goes silent...
    holder._heartbeat.join()
    storage.set_study_user_attr(lock_id, "host", "elsewhere")
    storage.set_study_user_attr(lock_id, "heartbeat", time.time() - 120)
    with pytest.raises(studies.StudyError, match="host elsewhere"):
        storages.DriverLock(storage, "s", stale_after=300).acquire()  # not silent for long enough yet
    newcomer = storages.DriverLock(storages.make_storage(storage_url), "s", stale_after=60)
    newcomer.acquire()
    try:
        holder._stop.clear()  # ...and comes back: its next heartbeat finds the lock gone
        holder._beat_once()
        assert holder.lost
    finally:
        holder.release()
        newcomer.release()


class FlakyStorage:
    """A storage whose study-attribute calls raise "database is locked" while ``failing`` is set, as SQLite does
    while another client holds an exclusive transaction."""

    def __init__(self, storage):
        self.storage = storage
        self.failing = False
        self.failures = 0
        self.hang = threading.Event()
        self.hang.set()

    def __getattr__(self, name):
        method = getattr(self.storage, name)
        if name not in ("set_study_user_attr", "get_study_user_attrs"):
            return method

        def call(*args, **kwargs):
            self.hang.wait()
            if self.failing:
                self.failures += 1
                raise sqlalchemy.exc.OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked"))
            return method(*args, **kwargs)

        return call


def heartbeat_of(storage_url):
    storage = storages.make_storage(storage_url)
    return storage.get_study_user_attrs(storage.get_study_id_from_name("s" + storages.DRIVER_LOCK_SUFFIX))["heartbeat"]


def test_the_heartbeat_rides_out_a_short_storage_error_and_keeps_a_remote_driver_out(storage_url, monkeypatch):
    flaky = FlakyStorage(storages.make_storage(storage_url))
    holder = storages.DriverLock(flaky, "s", heartbeat_interval=0.1, stale_after=2.0)
    holder.acquire()
    try:
        monkeypatch.setattr(storages.socket, "gethostname", lambda: "another-host")  # the second driver's view
        flaky.failing = True  # the storage is locked for half the safe share of the takeover window
        time.sleep(0.5)
        assert flaky.failures >= 2 and not holder.lost and holder._heartbeat.is_alive()
        with pytest.raises(studies.StudyError, match="is being run by"):
            storages.DriverLock(storages.make_storage(storage_url), "s", heartbeat_interval=0.1, stale_after=2.0).acquire()
        flaky.failing = False
        before = heartbeat_of(storage_url)
        time.sleep(0.5)
        assert heartbeat_of(storage_url) > before and not holder.lost  # beating again
        time.sleep(2.0)  # longer than the takeover window: a live holder's lock never goes stale
        with pytest.raises(studies.StudyError, match="is being run by"):
            storages.DriverLock(storages.make_storage(storage_url), "s", heartbeat_interval=0.1, stale_after=2.0).acquire()
    finally:
        holder.release()


def test_a_heartbeat_that_cannot_refresh_for_the_safe_share_marks_the_lock_lost(storage_url, monkeypatch):
    flaky = FlakyStorage(storages.make_storage(storage_url))
    holder = storages.DriverLock(flaky, "s", heartbeat_interval=0.1, stale_after=2.0)
    holder.acquire()
    flaky.failing = True
    started = time.monotonic()
    while not holder.lost and time.monotonic() - started < 5:
        time.sleep(0.05)
    lost_at = time.monotonic() - started
    assert holder.lost and 0.9 <= lost_at < 2.0  # after the safe share (1 s), before anyone may take over (2 s)
    assert "could not be refreshed" in holder.lost_reason and "database is locked" in holder.lost_reason
    monkeypatch.setattr(storages.socket, "gethostname", lambda: "another-host")
    time.sleep(max(0.0, 2.2 - lost_at))
    newcomer = storages.DriverLock(storages.make_storage(storage_url), "s", heartbeat_interval=0.1, stale_after=2.0)
    newcomer.acquire()  # the silent lock expired: the other host takes it over
    try:
        flaky.failing = False
        holder.release()  # the old holder leaves the newcomer's lock alone
        assert heartbeat_of(storage_url) and not newcomer.lost
    finally:
        newcomer.release()


def test_a_heartbeat_stuck_in_a_storage_call_counts_as_lost(storage_url):
    flaky = FlakyStorage(storages.make_storage(storage_url))
    holder = storages.DriverLock(flaky, "s", heartbeat_interval=0.1, stale_after=2.0, lost_after=0.5)
    holder.acquire()
    try:
        flaky.hang.clear()  # the next refresh blocks inside the storage call
        time.sleep(0.7)
        assert holder._heartbeat.is_alive()  # still waiting for the storage...
        assert holder.lost and "does not answer" in holder.lost_reason  # ...but the driver knows
    finally:
        flaky.hang.set()
        holder.release()


def test_the_lock_windows_must_nest():
    with pytest.raises(ValueError, match="heartbeat_interval"):
        storages.DriverLock(None, "s", heartbeat_interval=40, stale_after=60)


def test_reading_creates_nothing_and_names_the_study_files_there(tmp_path, monkeypatch, space):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(studies.StudyError, match=rf"no study database runs/typo.db \({re.escape(str(tmp_path))}/runs/"
                                                 r"typo.db\); there is no folder runs"):
        studies.load_study("sqlite:///runs/typo.db", "typo")
    with pytest.raises(studies.StudyError, match="no journal file"):
        studies.load_study("journal:runs/typo.journal", "typo")
    assert list(tmp_path.iterdir()) == []
    create(CampaignConfig(study="demo"), space)
    before = sorted(path.name for path in (tmp_path / "runs").iterdir())
    with pytest.raises(studies.StudyError, match=r"no study database runs/typo.db \(.*\); study files in runs: demo"):
        studies.load_study("sqlite:///runs/typo.db", "typo")
    with pytest.raises(studies.StudyError, match="no study 'typo' in sqlite:///runs/demo.db; studies there: demo"):
        studies.load_study("sqlite:///runs/demo.db", "typo")
    other = tmp_path / "plain.db"
    sqlite3.connect(other).close()  # an SQLite file that holds no study is not given Optuna's tables
    with pytest.raises(studies.StudyError, match="holds no Optuna studies"):
        studies.load_study(f"sqlite:///{other}", "x")
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == before
    assert other.stat().st_size == 0


def test_a_damaged_database_is_a_one_line_error(tmp_path, space):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    study = create(CampaignConfig(study="x", storage=url), space)
    for _ in range(30):
        trial = study.ask(fixed_distributions=distributions(space))
        trial.set_user_attr("note", "x" * 2000)
        study.tell(trial, 0.5)
    with open(tmp_path / "x.db", "r+b") as file:  # dd if=/dev/urandom of=x.db bs=4096 seek=5 count=10 conv=notrunc
        file.seek(5 * 4096)
        file.write(os.urandom(10 * 4096))
    with pytest.raises(studies.StudyError, match=r"cannot read storage .*x.db: .*(malformed|not a database).*backup"):
        with storages.storage_errors(url, "read"):
            studies.load_study(url, "x").get_trials()


def test_storage_urls_are_masked():
    assert storages.mask_url("postgresql://u:pa/ss@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert storages.mask_url("postgresql://u:p@ss@h/db") == "postgresql://u:***@h/db"
    assert storages.mask_url("postgresql+psycopg://u:secret@h/db?x=1") == "postgresql+psycopg://u:***@h/db?x=1"
    assert storages.mask_url("sqlite:///runs/x.db") == "sqlite:///runs/x.db"
    assert storages.mask_url("journal:runs/x.journal") == "journal:runs/x.journal"
    with pytest.raises(studies.StudyError) as error:
        storages.make_storage("nosuchdialect://u:hunter2@h/db")
    assert "hunter2" not in str(error.value) and "u:***@h" in str(error.value)


def test_a_mistyped_study_name_gets_the_nearest_names_and_creates_nothing(tmp_path, monkeypatch, space):
    monkeypatch.chdir(tmp_path)
    create(CampaignConfig(study="cpu-demo"), space)
    create(CampaignConfig(study="cifar10"), space)
    before = sorted(path.name for path in (tmp_path / "runs").iterdir())

    with pytest.raises(studies.StudyError) as error:  # the default storage of the typo, runs/cpu_demo.db, is missing
        studies.load_study("sqlite:///runs/cpu_demo.db", "cpu_demo")
    assert str(error.value) == (f"no study database runs/cpu_demo.db ({tmp_path}/runs/cpu_demo.db); study files in "
                                "runs: cifar10.db, cpu-demo.db; did you mean --study cpu-demo?")
    with pytest.raises(studies.StudyError, match=r"studies there: cpu-demo; did you mean --study cpu-demo\?$"):
        studies.load_study("sqlite:///runs/cpu-demo.db", "cpu_demo")
    with pytest.raises(studies.StudyError, match=r"; did you mean --storage sqlite:///runs/cpu-demo.db\?$"):
        studies.load_study("sqlite:///runs/cpu_demo.db", "cpu-demo")  # another study's default: the file is the typo
    with pytest.raises(studies.StudyError, match=r"; did you mean --storage sqlite:///runs/cpu-demo.db\?$"):
        studies.load_study("journal:runs/cpu-demo.journal", "cpu-demo")  # the study is in a database, not a journal
    with pytest.raises(studies.StudyError) as error:
        studies.load_study("sqlite:///runs/cpu-demo.db", "mnist")
    assert "did you mean" not in str(error.value)  # nothing is near: no guess
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == before


def test_the_default_database_of_a_typo_names_the_databases_beside_it(tmp_path, monkeypatch, space):
    monkeypatch.chdir(tmp_path)
    create(CampaignConfig(study="cpu-demo"), space)
    # runs/cpu_demo.db exists, without the study cpu_demo
    create(CampaignConfig(study="leftover", storage="sqlite:///runs/cpu_demo.db"), space)
    with pytest.raises(studies.StudyError) as error:
        studies.load_study("sqlite:///runs/cpu_demo.db", "cpu_demo")
    assert str(error.value) == ("no study 'cpu_demo' in sqlite:///runs/cpu_demo.db; studies there: leftover; study "
                                "databases in runs: cpu-demo.db; did you mean --study cpu-demo?")


def test_the_driver_lock_hint_is_a_command_that_removes_the_lock(storage_url, tmp_path):
    holder = storages.DriverLock(storages.make_storage(storage_url), "s")
    holder.acquire()
    try:
        with pytest.raises(studies.StudyError) as refused:
            storages.DriverLock(storages.make_storage(storage_url), "s").acquire()
        message = str(refused.value)
        assert "--storage" in message and message.count(" run: ") == 1
        command = shlex.split(message.split(" run: ")[1])
        assert command[:4] == ["optuna", "delete-study", "--study-name", "s:driver"] and command[4] == "--storage"
        assert len(command) == 6
        if storage_url.startswith("postgresql"):
            return  # the fixture's URL may hold a password, which the hint masks
        expected = storage_url.removeprefix("journal:")  # Optuna's CLI takes a journal file by its path
        assert command[5] == expected
        optuna_command = shutil.which("optuna")
        if optuna_command is None:
            pytest.fail("Optuna's command is not installed beside the optuna package")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        pasted = subprocess.run([optuna_command, *command[1:]], cwd=elsewhere, capture_output=True, text=True,
                                timeout=120, check=False)
        assert pasted.returncode == 0, pasted.stderr
        storage = storages.make_storage(storage_url)
        assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == []  # the lock is gone
    finally:
        holder.release()


def test_the_driver_lock_hint_masks_a_password_and_says_so(tmp_path):
    storage = storages.make_storage(f"sqlite:///{tmp_path / 'x.db'}")
    holder = storages.DriverLock(storage, "s")
    holder.acquire()
    try:
        second = storages.make_storage(f"sqlite:///{tmp_path / 'x.db'}")
        storages._OPENED_FROM[second] = "postgresql://u:hunter2@db.example:5432/nas"  # as if opened from there
        with pytest.raises(studies.StudyError) as refused:
            storages.DriverLock(second, "s").acquire()
    finally:
        holder.release()
    message = str(refused.value)
    assert "hunter2" not in message and "(with the password in place of ***), run: " in message
    assert shlex.split(message.split(" run: ")[1]) == ["optuna", "delete-study", "--study-name", "s:driver",
                                                        "--storage", "postgresql+psycopg://u:***@db.example:5432/nas"]


def test_the_settings_are_what_the_campaign_records_and_checks(space):
    config = CampaignConfig(study="s", storage="sqlite:///x.db", step_time_exponent=-0.1, params_exponent=-0.2)
    settings = config.study_settings()
    assert (settings.study, settings.storage_url) == ("s", "sqlite:///x.db")
    assert settings.proxy == config.proxy_settings() and settings.campaign == config.to_dict()
    assert settings.exponents == studies.RewardExponents(step_time=-0.1, params=-0.2) == config.reward_exponents
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.study = "other"


def test_the_reward_uses_the_exponents_it_is_given(storage_url, space):
    _, study = open_(storage_url, space)
    baseline_trial, baseline_spec = ask(study, space, role="baseline")
    studies.record_result(study, baseline_trial, baseline_spec, result(0.6, 0.02, 2000), EXPONENTS)
    trial, spec = ask(study, space)
    reward = studies.record_result(study, trial, spec, result(0.5, 0.01, 4000),
                                   studies.RewardExponents(step_time=-1.0, params=0.0))
    assert reward == pytest.approx(0.5 * 0.5 ** -1.0)


def test_started_rung_and_node_records_land_on_the_trial(storage_url, space):
    _, study = open_(storage_url, space)
    studies.enqueue_baseline(study, space.to_params(space.baseline))
    trial = study.ask(fixed_distributions=distributions(space))
    assert trial.user_attrs["role"] == "baseline" and trial.params == space.to_params(space.baseline)
    studies.record_start(trial, "baseline", space.baseline, "rl")
    rungs = [{"epoch": 1, "accuracy": 0.3, "reward": 0.3, "promoted": True}]
    studies.record_rung(trial, 1, 0.3, rungs)
    studies.record_node(trial, "node-a")
    frozen = studies.current_trial(study, trial)
    assert frozen.intermediate_values == {1: 0.3} and frozen.user_attrs["rungs"] == rungs
    assert frozen.user_attrs["ray_node"] == "node-a" and frozen.user_attrs["spec"] == space.baseline.to_dict()
    assert frozen.user_attrs["block_strings"] == list(space.baseline.block_strings)


def test_the_current_trial_sees_another_drivers_change(storage_url, space):
    _, study = open_(storage_url, space)
    trial, _ = ask(study, space)
    assert studies.current_trial(study, trial).state == optuna.trial.TrialState.RUNNING
    other = optuna.load_study(study_name="s", storage=storages.make_storage(storage_url))
    studies.mark_interrupted(other, other.trials[0], reason="taken over")
    frozen = studies.current_trial(study, trial)
    assert frozen.state == optuna.trial.TrialState.FAIL
    assert frozen.user_attrs["failure_reason"] == "interrupted: taken over"


def test_the_step_time_cache_is_the_studys_storages(storage_url, space):
    _, study = open_(storage_url, space)
    measurement = {"step_time_ratio": 1.5, "step_time_ratio_low": 1.45, "step_time_ratio_high": 1.55,
                   "step_time_ratio_iqr": 0.1, "step_time_s": 0.3, "reference_step_time_s": 0.2, "step_time_pairs": 12,
                   "step_time_discarded_pairs": 2, "step_time_measure_s": 5.5, "step_time_stopped_by": "precision"}
    studies.step_time_cache(study).put("s:k", {**measurement, "other": 1})
    shared = studies.step_time_cache(optuna.load_study(study_name="s", storage=storages.make_storage(storage_url)))
    assert shared.get("s:k") == measurement


def test_an_attribute_study_is_created_by_its_first_write_and_shared(storage_url):
    first = storages.AttributeStudy(storages.make_storage(storage_url), "nas:kv")
    assert first.get("k") is None
    assert optuna.get_all_study_names(first.storage) == []  # reading created nothing
    first.put("k", {"a": 1})
    second = storages.AttributeStudy(storages.make_storage(storage_url), "nas:kv")
    assert second.get("k") == {"a": 1} and second.get("missing") is None
    second.put("k", [2])  # a second writer finds the study the first created
    assert first.get("k") == [2] and optuna.get_all_study_names(first.storage) == ["nas:kv"]


def test_an_export_is_recorded_and_says_whether_the_baseline_won(storage_url, space, tmp_path, monkeypatch):
    _, study = open_(storage_url, space)
    baseline_trial, baseline_spec = ask(study, space, role="baseline")
    studies.record_result(study, baseline_trial, baseline_spec, result(0.6, 0.02, 2000), EXPONENTS)
    trial, spec = ask(study, space)
    studies.record_result(study, trial, spec, result(0.7, 0.02, 2000), EXPONENTS)
    monkeypatch.chdir(tmp_path)
    assert studies.record_export(storage_url, "s", tmp_path / "sub" / ".." / "best.yaml", 1) is False
    assert studies.load_study(storage_url, "s").user_attrs["exported_spec"] == str(tmp_path / "best.yaml")
    assert studies.record_export(storage_url, "s", Path("relative.yaml"), 0) is True
    assert studies.load_study(storage_url, "s").user_attrs["exported_spec"] == str(tmp_path / "relative.yaml")


@pytest.mark.parametrize("in_channels, pinned", [(1, 1), (3, None)])
def test_an_exported_spec_says_the_classes_and_channels_the_study_searched_on(storage_url, space, in_channels,
                                                                                pinned):
    """Issue 28: nas show of a winner searched on 10 classes counted 1000; the export now says 10 (and pins the
    channels of non-RGB data), read back from the study as any later nas export reads it."""
    _, study = open_(storage_url, space)
    trial, spec = ask(study, space, role="baseline")
    studies.record_start(trial, "baseline", spec, "random")
    studies.record_network_io(study, num_classes=10, in_channels=in_channels)
    stored = studies.load_study(storage_url, "s")
    exported = studies.exported_spec(stored, stored.trials[0], name="s-trial0")
    assert (exported.num_classes, exported.in_channels, exported.name) == (10, pinned, "s-trial0")
    assert dataclasses.replace(exported, num_classes=None, in_channels=None, name=spec.name) == spec


def test_a_study_made_before_the_classes_were_recorded_exports_the_trials_spec(storage_url, space):
    _, study = open_(storage_url, space)
    trial, spec = ask(study, space, role="baseline")
    studies.record_start(trial, "baseline", spec, "random")
    exported = studies.exported_spec(study, study.trials[0], name="s-trial0")
    assert exported == dataclasses.replace(spec, name="s-trial0") and exported.num_classes is None


def test_an_export_before_the_baseline_was_measured_asks_the_trials_role(storage_url, space, tmp_path):
    _, study = open_(storage_url, space)
    ask(study, space, role="baseline")
    ask(study, space)
    assert studies.record_export(storage_url, "s", tmp_path / "a.yaml", 0) is True
    assert studies.record_export(storage_url, "s", tmp_path / "a.yaml", 1) is False
    assert studies.record_export(storage_url, "s", tmp_path / "a.yaml", None) is False


def test_an_export_the_storage_refuses_is_a_study_error(tmp_path, space, monkeypatch):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    create(CampaignConfig(study="x", storage=url), space)

    def refuse(self, key, value):
        raise sqlalchemy.exc.OperationalError("UPDATE", {}, sqlite3.OperationalError("attempt to write a readonly "
                                                                                    "database"))

    monkeypatch.setattr(optuna.Study, "set_user_attr", refuse)
    with pytest.raises(studies.StudyError, match=r"cannot write to storage .*x.db: attempt to write a readonly "
                                                 r"database: make the database writable"):
        studies.record_export(url, "x", tmp_path / "best.yaml", 0)
