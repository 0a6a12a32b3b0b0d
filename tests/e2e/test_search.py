"""Tiny real campaigns, run as a user runs them: `python -m nas search` in a fresh process, local Ray, SQLite.

Covers: random and RL campaigns complete; a second run on a finished study does no work and says so; a changed
space is refused; export round-trips into a buildable spec; Ctrl-C stops cleanly; a driver killed with SIGKILL
mid-trial and started again ends with exactly the budget, no trial left RUNNING and no finished trial evaluated
twice, on each storage of the matrix (SQLite, journal file, PostgreSQL).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import optuna
import torch
from e2e_support import finished, load, nas, sqlite_url, wait_for_running_trial, write_campaign

from nas.builder import build_model
from search_spaces.io import load_spec


def test_random_campaign_resume_refusal_and_export(tmp_path):
    campaign = write_campaign(tmp_path)
    first = nas(tmp_path, "search", "--config", str(campaign))
    assert first.returncode == 0, first.stderr
    assert "[4/4]" in first.stdout and "exported the best architecture" in first.stdout
    study = load(sqlite_url(tmp_path))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    baseline = study.trials[0]
    assert baseline.user_attrs["role"] == "baseline" and baseline.value == baseline.user_attrs["accuracy"]
    assert study.user_attrs["baseline"]["step_time"] == baseline.user_attrs["step_time_s"]
    for trial in study.trials[1:]:
        expected = trial.user_attrs["normalized_step_time"] ** -0.07 * trial.user_attrs["normalized_parameters"] ** -0.05
        assert abs(trial.value - trial.user_attrs["accuracy"] * expected) < 1e-9
    last_line = next(line for line in first.stdout.splitlines() if line.startswith("[4/4]"))
    best = max(study.trials, key=lambda t: (t.value, -t.number))
    assert f"best {best.value:.4f} (#{best.number})" in last_line  # the running best matches the study's

    again = nas(tmp_path, "search", "--config", str(campaign))
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout and "(0 in this run)" in again.stdout
    assert len(load(sqlite_url(tmp_path)).trials) == 4

    refused = nas(tmp_path, "search", "--config", str(campaign), "--space", "efficientnet-b0")
    assert refused.returncode == 2 and "other settings" in refused.stderr and "space" in refused.stderr
    assert "Traceback" not in refused.stderr

    exported = nas(tmp_path, "export", "--study", "e2e", "-o", "winner.yaml")
    assert exported.returncode == 0, exported.stderr
    spec = load_spec(tmp_path / "winner.yaml")
    best = max(load(sqlite_url(tmp_path)).trials, key=lambda t: t.value)
    assert list(spec.block_strings) == best.user_attrs["block_strings"]
    logits = build_model(spec, num_classes=10)(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    shown = nas(tmp_path, "show", "winner.yaml")
    assert shown.returncode == 0 and "parameters:" in shown.stdout


def test_rl_campaign_completes(tmp_path):
    campaign = write_campaign(tmp_path, controller="rl", study="rl", trials=3, workers=1)
    result = nas(tmp_path, "search", "--config", str(campaign))
    assert result.returncode == 0, result.stderr
    study = load(sqlite_url(tmp_path, "rl"), "rl")
    assert len(finished(study)) == 3 and study.trials[0].user_attrs["role"] == "baseline"
    assert {t.user_attrs["controller"] for t in study.trials} == {"rl"}
    listed = nas(tmp_path, "trials", "--study", "rl", "--format", "json")
    assert listed.returncode == 0 and listed.stdout.count('"number"') == 3


def test_ctrl_c_stops_cleanly(tmp_path):
    campaign = write_campaign(tmp_path, study="stop", trials=6, workers=1,
                              data="synthetic:num_images=2000,image_size=32")
    driver = subprocess.Popen([sys.executable, "-m", "nas", "search", "--config", str(campaign)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_running_trial(sqlite_url(tmp_path, "stop"), "stop", complete=1)
        driver.send_signal(signal.SIGINT)
        _, stderr = driver.communicate(timeout=120)
    finally:
        driver.kill()
    assert driver.returncode == 130, stderr
    assert "run the same command to resume" in stderr and "Traceback" not in stderr
    study = load(sqlite_url(tmp_path, "stop"), "stop")
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    interrupted = [t for t in study.trials if t.user_attrs.get("interrupted")]
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(interrupted) == 1 and [t.system_attrs["fixed_params"] for t in waiting] == [interrupted[0].params]


def test_sigkill_mid_trial_then_resume(tmp_path, storage_url):
    budget = 5
    campaign = write_campaign(tmp_path, study="kill", trials=budget, workers=1, storage=storage_url,
                              data="synthetic:num_images=2000,image_size=32")
    driver = subprocess.Popen([sys.executable, "-m", "nas", "search", "--config", str(campaign)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for_running_trial(storage_url, "kill", complete=2)
    finally:
        os.kill(driver.pid, signal.SIGKILL)  # the driver only: its Ray workers are left to fend for themselves
        driver.wait(timeout=30)
    before = load(storage_url, "kill")
    interrupted_numbers = [t.number for t in before.trials if t.state == optuna.trial.TrialState.RUNNING]
    finished_before = len(finished(before))
    assert interrupted_numbers and finished_before < budget

    resumed = nas(tmp_path, "search", "--config", str(campaign))  # the dead driver's lock is taken over at once
    assert resumed.returncode == 0, resumed.stderr
    assert f"recovered interrupted trial(s) {interrupted_numbers}" in resumed.stdout
    study = load(storage_url, "kill")
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert len(finished(study)) == budget
    for number in interrupted_numbers:
        old = study.trials[number]
        assert old.state == optuna.trial.TrialState.FAIL and old.user_attrs["interrupted"] is True
        reruns = [t for t in study.trials if t.user_attrs.get("requeued_from") == number]
        assert len(reruns) == 1 and reruns[0].params == old.params
        assert reruns[0].state == optuna.trial.TrialState.COMPLETE
    # trials finished before the kill were not evaluated again
    evaluated_after = [t for t in study.trials if t.number > max(interrupted_numbers)]
    assert len(evaluated_after) == budget - finished_before
