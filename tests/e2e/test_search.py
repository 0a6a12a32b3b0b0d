"""Tiny real campaigns, run as a user runs them: `python -m nas search` in a fresh process, local Ray, SQLite.

Covers: a random campaign under local Ray and an RL one in the driver's process (``--executor local``, no Ray)
complete; a second run on a finished study does no work and says so; a changed space is refused; export
round-trips into a buildable spec. Stops, kills and resumes are in ``test_resume.py``.
"""

from __future__ import annotations

import optuna
import torch

from nas.builder import build_model
from search_spaces.io import load_spec

from e2e_support import finished, load, nas, sqlite_url, write_campaign


def test_random_campaign_resume_refusal_and_export(tmp_path):
    campaign = write_campaign(tmp_path)
    first = nas(tmp_path, "search", "--config", str(campaign))
    assert first.returncode == 0, first.stderr
    assert "[4/4]" in first.stdout and "exported the best architecture" in first.stdout
    study = load(sqlite_url(tmp_path))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    baseline = study.trials[0]
    assert baseline.user_attrs["role"] == "baseline" and baseline.value == baseline.user_attrs["accuracy"]
    assert study.user_attrs["baseline"]["step_time_s"] == baseline.user_attrs["step_time_s"]
    for trial in study.trials[1:]:
        expected = trial.user_attrs["normalized_step_time"] ** -0.07 * trial.user_attrs["normalized_parameters"] ** -0.05
        assert abs(trial.value - trial.user_attrs["accuracy"] * expected) < 1e-9
    last_line = next(line for line in first.stdout.splitlines() if line.startswith("[4/4]"))
    best = max(study.trials, key=lambda t: (t.value, -t.number))
    assert f"best {best.value:.4f} (#{best.number})" in last_line  # the running best matches the study's

    again = nas(tmp_path, "search", "--config", str(campaign))
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout and "(budget 4, already met; none ran now)" in again.stdout
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


def test_rl_campaign_completes_in_the_drivers_process(tmp_path):
    campaign = write_campaign(tmp_path, controller="rl", study="rl", trials=3, workers=1)
    result = nas(tmp_path, "search", "--config", str(campaign), "--executor", "local")
    assert result.returncode == 0, result.stderr
    study = load(sqlite_url(tmp_path, "rl"), "rl")
    assert len(finished(study)) == 3 and study.trials[0].user_attrs["role"] == "baseline"
    assert not any("ray_node" in t.user_attrs for t in study.trials)  # no Ray worker ran them
    assert not (tmp_path / "runs" / "ray").exists()
    assert {t.user_attrs.get("controller") for t in study.trials} == {None, "rl"}  # the baseline: no controller
    assert "controller" not in study.trials[0].user_attrs
    listed = nas(tmp_path, "trials", "--study", "rl", "--format", "json")
    assert listed.returncode == 0 and listed.stdout.count('"number"') == 3


def test_a_gpu_trial_on_a_cluster_without_gpus_is_refused_at_once_not_waited_on(tmp_path):
    campaign = write_campaign(tmp_path, study="gpu", trials=2)
    result = nas(tmp_path, "search", "--config", str(campaign), "--gpus-per-trial", "1", timeout=120)
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("nas search: error: each trial asks for") and "0 GPU(s)" in error, error
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("*.db"))  # refused before the study was created
