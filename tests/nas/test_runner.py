"""The Ray Tune adapter: Tune's searcher calls reach the campaign policy and its answers reach Tune (no Ray
cluster is started here; whole campaigns run under real Ray in tests/e2e)."""

from __future__ import annotations

import io
import json

import optuna
import pytest
from ray.tune.search import Searcher

from nas import runner
from nas import study as studies
from nas.campaign import Campaign, CampaignConfig, Placement, ResourceError, check_placeable, run_campaign
from nas.controllers import make_sampler
from nas.records import EvalResult
from search_spaces import presets


def measured() -> EvalResult:
    return EvalResult(status="ok", accuracy=0.5, step_time_s=0.01, step_time_iqr_s=0.001, parameters=1000, macs=10,
                      device="cpu", wall_time_s=1.0, epochs_completed=1)


def policy_searcher(tmp_path, trials: int) -> runner.PolicySearcher:
    config = CampaignConfig(trials=trials, controller="random", study="adapter",
                            storage=f"sqlite:///{tmp_path / 'adapter.db'}")
    space = presets.get_space(config.space)
    study = studies.open_study(config.study_settings(), space, make_sampler(config.controller, space))
    return runner.PolicySearcher(started(Campaign(study, space, config, out=io.StringIO())))


def started(campaign: Campaign) -> Campaign:
    """``campaign`` told what its executor loaded, as every executor does before it asks for trials."""
    campaign.start("synthetic", train_images=1000, holdout_images=100, flips=False, num_classes=10, in_channels=3,
                   placement=Placement(workers=1, threads=1, device="cpu"))
    return campaign


def test_the_searcher_starts_what_the_policy_proposes_and_finishes_when_it_is_over(tmp_path):
    searcher = policy_searcher(tmp_path, trials=2)
    baseline = searcher.suggest("tune-a")
    assert baseline["trial_number"] == 0 and baseline["spec"]["name"] == "tiny"
    assert searcher.suggest("tune-b") is None  # candidates wait for the baseline: Tune asks again later
    searcher.on_trial_complete("tune-a", {runner.RESULT_KEY: measured().to_json(), runner.NODE_KEY: "node-1"})
    candidate = searcher.suggest("tune-b")
    assert candidate["trial_number"] == 1
    assert searcher.suggest("tune-c") is None  # the budget is taken by the trial in flight
    searcher.on_trial_complete("tune-b", {runner.RESULT_KEY: measured().to_json()})
    assert searcher.suggest("tune-c") == Searcher.FINISHED
    trials = searcher.campaign.study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert trials[0].user_attrs["ray_node"] == "node-1" and "ray_node" not in trials[1].user_attrs


def test_a_worker_s_step_time_reaches_the_cache_before_its_trial_ends(tmp_path):
    """The trainable reports S/S0 as an intermediate result; the searcher hands it to the campaign's cache, and the
    re-run of a trial whose worker then died is planned with it."""
    searcher = policy_searcher(tmp_path, trials=3)
    searcher.suggest("a")
    searcher.on_trial_complete("a", {runner.RESULT_KEY: measured().to_json()})
    first = searcher.suggest("b")
    assert first["plan"]["cached"] is None and first["plan"]["reference"]["name"] == "tiny"
    measurement = {"step_time_ratio": 0.9, "step_time_ratio_low": 0.89, "step_time_ratio_high": 0.91,
                   "step_time_ratio_iqr": 0.02, "step_time_s": 0.009, "reference_step_time_s": 0.01,
                   "step_time_pairs": 16, "step_time_discarded_pairs": 0, "step_time_measure_s": 6.0,
                   "step_time_stopped_by": "precision"}
    timing = {**measurement, "device": "cpu", "timing": first["plan"]["timing"]}
    searcher.on_trial_result("b", {runner.TIMING_KEY: json.dumps(timing)})
    searcher.on_trial_complete("b", error=True)
    rerun = searcher.suggest("c")
    assert rerun["spec"] == first["spec"]
    assert rerun["plan"]["cached"] == measurement


def test_a_trial_whose_worker_died_is_interrupted_and_runs_once_more(tmp_path):
    searcher = policy_searcher(tmp_path, trials=2)
    searcher.suggest("a")
    searcher.on_trial_complete("a", {runner.RESULT_KEY: measured().to_json()})
    first = searcher.suggest("b")
    searcher.on_trial_complete("b", error=True)
    rerun = searcher.suggest("c")
    assert rerun["spec"] == first["spec"] and rerun["trial_number"] == first["trial_number"] + 1
    dead = searcher.campaign.study.trials[first["trial_number"]]
    assert dead.state == optuna.trial.TrialState.FAIL and dead.user_attrs["interrupted"]


def test_tune_keeps_no_copy_of_the_campaign_and_its_lock():
    searcher = runner.PolicySearcher.__new__(runner.PolicySearcher)
    searcher.__dict__.update(campaign=object(), numbers={"a": 1})
    assert searcher.__getstate__() == {"campaign": None, "numbers": {"a": 1}}


def node(cpus: float, gpus: float = 0, alive: bool = True) -> dict:
    resources = {"CPU": cpus, "memory": 1e9} | ({"GPU": gpus} if gpus else {})
    return {"Alive": alive, "NodeManagerAddress": "10.0.0.1", "Resources": resources}


def test_a_trial_some_node_can_hold_is_placeable():
    check_placeable([node(2), node(16, gpus=1)], cpus=4, gpus=0.5)  # the second node holds it
    check_placeable([node(2)], cpus=2, gpus=0)


@pytest.mark.parametrize("nodes, cpus, gpus, words", [
    ([node(16)], 1, 1, ("1 GPU(s)", "10.0.0.1: 16 CPU(s), 0 GPU(s)", "--gpus-per-trial 0")),
    ([node(2), node(4, gpus=1)], 8, 0, ("8 CPU(s)", "--cpus-per-trial")),
    ([node(2, gpus=1), node(8)], 4, 1, ("4 CPU(s) and 1 GPU(s)",)),  # GPUs and CPUs, but never on one node
    ([node(32, gpus=8, alive=False)], 1, 1, ("no node is alive",)),
])
def test_a_trial_no_node_can_hold_is_refused_naming_what_the_nodes_have(nodes, cpus, gpus, words):
    with pytest.raises(ResourceError) as refused:
        check_placeable(nodes, cpus=cpus, gpus=gpus)
    assert all(word in str(refused.value) for word in words), str(refused.value)


class FakeTrial:
    PENDING, RUNNING = "PENDING", "RUNNING"

    def __init__(self, trial_id: str, number: int, status: str = "PENDING") -> None:
        self.trial_id, self.config, self.status = trial_id, {"trial_number": number}, status


class HeartbeatCount:
    """A campaign as the watch sees it: asked for a heartbeat at every step of Tune's loop."""

    beats = 0

    def heartbeat(self) -> None:
        self.beats += 1


def test_a_trial_that_waits_too_long_for_its_resources_is_reported_once_with_what_is_free():
    out, now, campaign = io.StringIO(), [0.0], HeartbeatCount()
    watch = runner.PendingWatch(campaign, out, cpus=2, gpus=1, patience_s=60, clock=lambda: now[0],
                                available=lambda: {"CPU": 1.0})
    waiting, started = FakeTrial("a", 3), FakeTrial("b", 4)
    for now[0] in (0.0, 30.0, 59.0):
        watch.on_step_end(0, [waiting, started])
    assert out.getvalue() == "" and campaign.beats == 3
    started.status = FakeTrial.RUNNING
    for now[0] in (60.0, 61.0, 200.0):
        watch.on_step_end(0, [waiting, started])
    lines = out.getvalue().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("trial 3 has waited 60 s for 2 CPU(s) and 1 GPU(s)")
    assert "1 CPU(s) and 0 GPU(s) free" in lines[0]
    waiting.status = FakeTrial.RUNNING  # it started: a later wait of the same trial counts from scratch
    watch.on_step_end(0, [waiting])
    waiting.status = FakeTrial.PENDING
    now[0] = 230.0
    watch.on_step_end(0, [waiting])
    assert len(out.getvalue().splitlines()) == 1


def test_an_unreachable_cluster_is_refused_before_the_study_is_created(tmp_path, monkeypatch):
    """``--address auto`` with no Ray running: one line naming the address, and no database written."""
    monkeypatch.setattr(runner.ray, "is_initialized", lambda: False)

    def no_cluster(**options):
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(runner.ray, "init", no_cluster)
    config = CampaignConfig(trials=2, study="nowhere", address="auto", storage=f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ResourceError, match=r"no Ray cluster to join at address 'auto' .*ray start --head"):
        run_campaign(config, runner.RayExecutor(), out=io.StringIO())
    assert list(tmp_path.iterdir()) == []


def rung(accuracy: float, epoch: int = 1) -> EvalResult:
    return EvalResult(status="ok", accuracy=accuracy, step_time_s=0.01, step_time_ratio=1.0, parameters=1000,
                      device="cpu", epochs_completed=epoch)


def test_the_scheduler_hands_rungs_to_the_policy_and_stops_a_trial_recorded_once(tmp_path):
    """A rung result gets the policy's decision (CONTINUE or STOP); Tune's completion of the stopped trial, with
    that rung result, records nothing more; any other result goes on."""
    config = CampaignConfig.from_dict({"trials": 3, "controller": "random", "study": "adapter",
                                       "storage": f"sqlite:///{tmp_path / 'adapter.db'}", "train": {"epochs": 3},
                                       "scheduler": {"type": "asha"}})
    space = presets.get_space(config.space)
    study = studies.open_study(config.study_settings(), space, make_sampler(config.controller, space))
    campaign = started(Campaign(study, space, config, out=io.StringIO()))
    searcher, scheduler = runner.PolicySearcher(campaign), runner.PolicyScheduler(campaign)
    assert searcher.suggest("a")["plan"]["rungs"] == [1]
    assert scheduler.on_trial_result(None, FakeTrial("a", 0), {runner.RUNG_KEY: rung(0.1).to_json()}) == "CONTINUE"
    searcher.on_trial_complete("a", {runner.RESULT_KEY: rung(0.2, epoch=3).to_json()})
    searcher.suggest("b")
    assert scheduler.on_trial_result(None, FakeTrial("b", 1), {runner.TIMING_KEY: "{}"}) == "CONTINUE"
    assert scheduler.on_trial_result(None, FakeTrial("b", 1), {runner.RUNG_KEY: rung(0.05).to_json()}) == "STOP"
    searcher.on_trial_complete("b", {runner.RUNG_KEY: rung(0.05).to_json(), "done": True})
    trials = campaign.study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"] and campaign.finished == 2
    assert trials[1].user_attrs["status"] == "stopped" and "interrupted" not in trials[1].user_attrs
    assert runner.PolicyScheduler(campaign).__getstate__()["campaign"] is None
