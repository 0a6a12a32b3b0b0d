"""Progress (issue 28): durations in words, estimates from what finished, and the campaign's per-trial lines and
header, driven by a fake clock."""

from __future__ import annotations

import dataclasses
import io

import pytest

from nas import study as studies
from nas.campaign import Campaign, CampaignConfig, CampaignError, Placement, trials_at_once
from nas.controllers import make_sampler
from nas.progress import CampaignProgress, TrainingProgress, estimate_left, format_duration
from nas.records import EvalResult
from search_spaces import presets


@pytest.mark.parametrize("seconds, text", [
    (0.04, "0.0 s"), (3.26, "3.3 s"), (42.4, "42 s"), (59.4, "59 s"), (59.6, "1 min 00 s"), (184, "3 min 04 s"),
    (3599.4, "59 min 59 s"), (3600, "1 h 00 min"), (7500, "2 h 05 min"), (-1, "0.0 s"),
])
def test_durations_read_as_a_person_would_say_them(seconds, text):
    assert format_duration(seconds) == text


def test_the_estimate_is_what_is_left_at_the_mean_pace_shared_by_those_running_at_once():
    assert estimate_left([100.0, 140.0], 6, at_once=2) == pytest.approx(360.0)  # the docstring's example
    assert estimate_left([100.0, 140.0], 6) == pytest.approx(720.0)
    assert estimate_left([], 6) is None  # nothing finished: no pace to go by
    assert estimate_left([50.0], 0) == 0.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_campaign_progress_times_each_trial_from_hand_out_to_result():
    clock = FakeClock()
    progress = CampaignProgress(clock)
    progress.start(workers=2)
    progress.trial_started(0)
    clock.now += 30
    progress.trial_started(1)
    clock.now += 90
    assert progress.trial_finished(0) == 120.0
    assert progress.trial_finished(7) is None  # handed out by an earlier run
    assert progress.summary(4) == "campaign 2 min 00 s, about 4 min 00 s left"  # 120 s x 4 / 2
    assert progress.summary(0) == "campaign 2 min 00 s"


def test_default_workers_fill_the_cluster(monkeypatch):
    nodes = [{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 2.0}},
             {"Alive": True, "Resources": {"CPU": 16.0, "GPU": 2.0}},
             {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]
    assert trials_at_once(nodes, cpus=4, gpus=1) == 4  # the docstring's example: GPUs bind
    assert trials_at_once(nodes, cpus=4, gpus=0) == 8
    assert trials_at_once(nodes, cpus=1, gpus=0.5) == 8
    two_cores = [{"Alive": True, "Resources": {"CPU": 2.0}}]  # this machine as Ray sees it
    assert trials_at_once(two_cores, cpus=1, gpus=0) == 2
    assert trials_at_once(two_cores, cpus=2, gpus=0) == 1
    assert CampaignConfig().workers is None  # the default: as many as fit
    with pytest.raises(CampaignError, match=r"workers must be .*\[1, 1024\] or null"):
        CampaignConfig(workers=0)


def measured(accuracy: float, ratio: float) -> EvalResult:
    return EvalResult(status="ok", accuracy=accuracy, step_time_s=0.012 * ratio, step_time_iqr_s=0.001,
                      step_time_ratio=ratio, step_time_ratio_iqr=0.01, parameters=1000, macs=10, device="cpu",
                      wall_time_s=1.0, epochs_completed=1)


def test_each_finished_trial_says_how_long_it_took_and_what_is_left(tmp_path):
    config = CampaignConfig(trials=4, controller="random", study="progress",
                            storage=f"sqlite:///{tmp_path / 'progress.db'}")
    space = presets.get_space(config.space)
    study = studies.open_study(config.study_settings(), space, make_sampler(config.controller, space))
    out, clock = io.StringIO(), FakeClock()
    campaign = Campaign(study, space, config, out=out, clock=clock)
    campaign.start("synthetic", train_images=1000, holdout_images=100, flips=False, num_classes=10, in_channels=3,
                   placement=Placement(workers=2, threads=1, device="cpu"))
    assert "running 2 trials at once, 1 thread each, on cpu (workers, cpus_per_trial)" in out.getvalue()
    baseline = campaign.next_trial()
    clock.now += 100
    campaign.record(baseline.number, dataclasses.replace(measured(0.5, 1.0), step_time_ratio=1.0))
    first, second = campaign.next_trial(), campaign.next_trial()
    clock.now += 140
    campaign.record(first.number, measured(0.6, 0.472))
    lines = out.getvalue().splitlines()
    assert "S0 12.00 ms" in lines[-2] and "took 1 min 40 s  (campaign 1 min 40 s, about 2 min 30 s left)" in lines[-2]
    # a candidate: S/S0 only (its own ms were taken beside a re-timed baseline, so they do not compare)
    assert "S/S0 0.472" in lines[-1] and " ms" not in lines[-1]
    assert "took 2 min 20 s  (campaign 4 min 00 s, about 2 min 00 s left)" in lines[-1]  # 120 s x 2 left / 2
    clock.now += 60
    campaign.record(second.number, dataclasses.replace(measured(0.55, 0.9), step_time_ratio_low=0.88,
                                                       step_time_ratio_high=0.91, step_time_stopped_by="cap"))
    last = out.getvalue().splitlines()[-1]
    assert "took 3 min 20 s" in last
    assert "S/S0 0.900 ±1.7% IMPRECISE" in last  # (0.91 - 0.88) / 2 / 0.9: its interval, and the cap came first


def test_a_training_run_off_a_terminal_prints_a_line_every_interval():
    clock, out = FakeClock(), io.StringIO()
    progress = TrainingProgress(out, epochs=2, batch_size=64, terminal=False, clock=clock, every_s=30)
    clock.now += 20  # data loading and step timing: elapsed, but not the training's pace
    for step in range(1, 101):
        clock.now += 0.5  # 0.5 s per step: 50 s for the epoch
        progress.step(1, step, 100)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # at 30 s and 60 s, not on every step
    assert lines[0] == "epoch 1/2 step 20/100  30 s  128 img/s  about 1 min 30 s left"  # 180 steps x 0.5 s
    assert lines[1] == "epoch 1/2 step 80/100  1 min 00 s  128 img/s  about 1 min 00 s left"
    progress.clear()  # nothing drawn in place: nothing to erase
    assert out.getvalue().count("\n") == 2 and "\r" not in out.getvalue()


def test_a_training_run_on_a_terminal_redraws_one_line_in_place():
    clock, out = FakeClock(), io.StringIO()
    progress = TrainingProgress(out, epochs=1, batch_size=8, terminal=True, clock=clock, redraw_s=0.5)
    for step in range(1, 11):
        clock.now += 0.25
        progress.step(1, step, 10)
    drawn = out.getvalue()
    assert "\n" not in drawn and drawn.count("\r") == 5  # every other step: 0.5 s apart
    assert drawn.endswith("epoch 1/1 step 10/10  2.5 s  32 img/s\033[K")  # nothing left: no estimate
    progress.clear()
    assert out.getvalue().endswith("\r\033[K")


def test_a_campaign_that_printed_nothing_for_a_minute_says_what_runs():
    clock = FakeClock()
    progress = CampaignProgress(clock, heartbeat_s=60)
    progress.start(workers=2)
    assert progress.heartbeat() is None  # nothing runs
    progress.trial_started(0)
    clock.now += 59
    assert progress.heartbeat() is None
    clock.now += 1
    assert progress.heartbeat() == "running: trial 0 for 1 min 00 s (campaign 1 min 00 s)"
    clock.now += 30
    assert progress.heartbeat() is None  # the next one is due a minute after the last
    progress.trial_started(1)
    clock.now += 30
    progress.printed()  # a trial's line came: no heartbeat for another minute
    clock.now += 59
    assert progress.heartbeat() is None
    clock.now += 1
    assert progress.heartbeat() == ("running: trial 0 for 3 min 00 s, trial 1 for 1 min 30 s "
                                    "(campaign 3 min 00 s)")
    progress.trial_ended(0)
    progress.trial_finished(1)
    clock.now += 120
    assert progress.heartbeat() is None  # nothing runs any more
