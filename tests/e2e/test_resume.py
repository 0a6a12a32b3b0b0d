"""Stop, kill and resume a campaign as a user or a cluster scheduler does, for every controller and storage.

One campaign per controller, each on another storage of the matrix (SQLite, the journal file, PostgreSQL), goes
through a graceful stop (SIGTERM, or Ctrl-C, to the driver's whole process group), a resume that is killed (SIGKILL, the driver alone), and a resume to
the end. Afterwards the study must hold exactly the budget, nothing RUNNING or WAITING, no trial finished before a
stop evaluated again, every interrupted candidate re-run exactly once with its own params, and no architecture
evaluated twice otherwise: a resumed controller neither replays its old random stream nor proposes what the study
already holds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter

import optuna
import pytest

from nas.storage import DRIVER_LOCK_SUFFIX

from e2e_support import finished, load, nas, sqlite_url, wait_for_running_trial, write_campaign

BUDGET = 6


def start_driver(directory, campaign) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nas", "search", "--config", str(campaign)], cwd=directory,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def storage_of(url: str) -> str | optuna.storages.BaseStorage:
    if url.startswith("journal:"):
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url.removeprefix("journal:")))
    return url


def assert_nothing_in_flight(url: str, name: str) -> optuna.Study:
    study = load(url, name)
    states = {trial.state for trial in study.trials}
    assert not states & {optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING}, states
    return study


@pytest.mark.parametrize("controller, stop, storage", [
    ("random", signal.SIGTERM, "journal"), ("tpe", signal.SIGTERM, "postgresql"), ("rl", signal.SIGINT, "sqlite"),
])
def test_stop_kill_and_resume_evaluate_each_architecture_once(tmp_path, request, controller, stop, storage):
    if storage == "sqlite":  # the default storage, runs/STUDY.db
        url, changes = sqlite_url(tmp_path, controller), {}
    else:
        url = f"journal:{tmp_path}/study.journal" if storage == "journal" else request.getfixturevalue("postgres_url")
        changes = {"storage": url}
    campaign = write_campaign(tmp_path, controller=controller, study=controller, trials=BUDGET, workers=1,
                              data="synthetic:num_images=2000,image_size=32", **changes)

    driver = start_driver(tmp_path, campaign)
    try:
        wait_for_running_trial(url, controller, complete=2)
        os.killpg(driver.pid, stop)  # to its whole process group, as a scheduler's SIGTERM or a terminal's Ctrl-C
        _, stderr = driver.communicate(timeout=120)
    finally:
        driver.kill()
    assert driver.returncode == 128 + stop, stderr
    assert "run the same command to resume" in stderr and "Traceback" not in stderr and "Aborted" not in stderr
    study = assert_nothing_in_flight(url, controller)
    assert [t.user_attrs.get("interrupted") for t in study.trials].count(True) == 1
    assert not [name for name in optuna.get_all_study_names(storage_of(url)) if name.endswith(DRIVER_LOCK_SUFFIX)]

    driver = start_driver(tmp_path, campaign)
    try:
        wait_for_running_trial(url, controller, complete=3)
    finally:
        os.kill(driver.pid, signal.SIGKILL)  # the driver only: its Ray workers are left to fend for themselves
        driver.wait(timeout=30)
    killed = load(url, controller)
    running = [t.number for t in killed.trials if t.state == optuna.trial.TrialState.RUNNING]
    finished_before = {t.number for t in finished(killed)}

    resumed = nas(tmp_path, "search", "--config", str(campaign))  # the dead driver's lock is taken over at once
    assert resumed.returncode == 0, resumed.stderr
    assert f"recovered interrupted trial(s) {running}" in resumed.stdout
    study = assert_nothing_in_flight(url, controller)
    assert {t.number for t in finished(study)} >= finished_before
    assert len(finished(study)) - len(finished_before) == len(resumed.stdout.split("] trial")) - 1
    assert len(finished(study)) == BUDGET
    interrupted = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert len(interrupted) == 2
    for trial in interrupted:
        if "requeued_from" not in trial.user_attrs:
            reruns = [t for t in study.trials if t.user_attrs.get("requeued_from") == trial.number]
            assert len(reruns) == 1 and reruns[0].params == trial.params
    architectures = Counter(tuple(sorted(t.params.items())) for t in study.trials if "spec" in t.user_attrs)
    for trial in study.trials:
        rerun_pair = trial.user_attrs.get("interrupted") or "requeued_from" in trial.user_attrs
        assert architectures[tuple(sorted(trial.params.items()))] == (2 if rerun_pair else 1), trial.number
    assert not [name for name in optuna.get_all_study_names(storage_of(url)) if name.endswith(DRIVER_LOCK_SUFFIX)]
