"""Successive halving under real Ray Tune: a worker reports a rung, the driver's PolicyScheduler stops the trial, the
stopped trial is recorded PRUNED exactly once, and its worker gives its training back and runs the next trial.

The trainer is a stand-in (no training) whose candidates are far behind the baseline at every rung, so each one is
stopped at the first rung whatever S/S0 the real timing measures; it logs, from the worker, what its judge answered.
"""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

import optuna
import pytest
import ray

from nas.campaign import CampaignConfig, run_campaign
from nas.records import EpochStats, EvalResult
from nas.runner import RayExecutor

pytestmark = pytest.mark.usefixtures("quiet_optuna")


def behind_the_baseline(log: Path):
    """A trainer (a closure, so Ray pickles it by value) whose baseline scores 0.9 and candidates 0.1 at every
    epoch; it appends ``{pid, baseline, judged: [answers], status}`` to ``log`` when it returns."""

    def trainer(spec, data, config, rungs=None) -> EvalResult:
        baseline = spec.name == "tiny"
        answers = []
        history = []
        for epoch in range(1, config.epochs + 1):
            history.append(EpochStats(epoch, config.epochs, 1.0, 0.5, 1.0))
            result = EvalResult(status="ok", accuracy=0.9 if baseline else 0.1, parameters=1000, macs=10,
                                device="cpu", wall_time_s=0.1, epochs_completed=epoch, history=tuple(history))
            if rungs is not None and epoch in rungs.epochs:
                answers.append(rungs.judge(result))
                if not answers[-1]:
                    result = EvalResult(status="stopped", failure_reason="told to stop", accuracy=0.1,
                                        epochs_completed=epoch)
                    break
        with log.open("a") as file:
            file.write(json.dumps({"pid": os.getpid(), "baseline": baseline, "judged": answers,
                                   "status": result.status}) + "\n")
        return result

    return trainer


def test_a_trial_behind_at_a_rung_is_stopped_by_the_scheduler_and_recorded_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "trainings.jsonl"
    config = CampaignConfig.from_dict({
        "data": "synthetic:num_images=200,image_size=32", "trials": 3, "controller": "random", "study": "asha",
        "workers": 1, "cpus_per_trial": 1, "gpus_per_trial": 0,
        "train": {"epochs": 2, "batch_size": 32}, "scheduler": {"type": "asha", "min_epochs": 1},
        "timing": {"batch_size": 8, "warmup": 1, "pairs": 2, "window_s": 0.02, "precision": None,
                   "max_stall": None},
    })
    out = io.StringIO()
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        outcome = run_campaign(config, RayExecutor(trainer=behind_the_baseline(log)), out=out)
    finally:
        ray.shutdown()
        signal.signal(signal.SIGTERM, sigterm)  # ray.init installed its own; the tests after this one expect theirs
    assert outcome.finished == 3
    study = optuna.load_study(study_name="asha", storage="sqlite:///runs/asha.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "PRUNED"]
    for trial in study.trials[1:]:
        assert trial.user_attrs["status"] == "stopped" and trial.user_attrs["stopped_at_epoch"] == 1
        assert trial.intermediate_values == {1: trial.value} and trial.value == trial.user_attrs["reward"]
        assert [r["promoted"] for r in trial.user_attrs["rungs"]] == [False]
        assert "interrupted" not in trial.user_attrs  # Tune's completion of the stopped trial recorded nothing
    printed = out.getvalue()
    assert printed.count("STOPPED") == 2 and "worker failed" not in printed
    # The first stopped candidate's judge answered False in its worker (its training returned through its own
    # path), before the same reused worker ran the next trial.
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    assert runs[0]["baseline"] and runs[0]["judged"] == [True]
    assert runs[1] == {"pid": runs[0]["pid"], "baseline": False, "judged": [False], "status": "stopped"}
