"""A campaign trial as an executor runs it (issue 16): constraints prune before training, S/S0 is timed against
the baseline at the timing settings or read from the cache, and the study keeps and reuses every measurement."""

from __future__ import annotations

import dataclasses
import io
import tempfile

import optuna
import pytest
import torch

from nas import campaign as campaigns
from nas import evaluate
from nas import timing as timings
from nas.campaign import CampaignConfig, TrialPlan
from nas.controllers import PolicyGradientSampler, RegularizedEvolutionSampler
from nas.data import load_data
from nas.local import LocalExecutor
from nas.recipe import TimingConfig, TrainConfig
from nas.records import STATUS_OK, STATUS_PRUNED, EvalResult
from nas.step_cache import CACHE_STUDY, StepTimeCache, cache_key
from search_spaces import presets

pytestmark = pytest.mark.usefixtures("quiet_optuna")

TIMING = TimingConfig(image_size=32, batch_size=8, warmup=1, pairs=2, window_s=0.02, precision=None,
                      max_stall=None)
SPACE = presets.get_space("tiny")
TRAIN = TrainConfig(epochs=1, batch_size=32, device="cpu", threads=1)


@pytest.fixture(scope="module")
def data():
    return load_data("synthetic:num_images=200,image_size=32", val_fraction=0.1, seed=0)


def trained(spec, data, config, rungs=None) -> EvalResult:
    """A stand-in proxy training: what a trainer returns, checked to be asked not to time its own step."""
    assert config.measure_step_time is False
    return EvalResult(status=STATUS_OK, accuracy=0.5, parameters=1, macs=10, device="cpu", epochs_completed=1,
                      wall_time_s=0.1)


def never_trained(spec, data, config, rungs=None) -> EvalResult:
    raise AssertionError("a pruned candidate must not be trained")


def candidate_plan(**changes) -> TrialPlan:
    return TrialPlan(TIMING, reference=SPACE.baseline, reference_parameters=180_000, **changes)


WIDER = SPACE.sample(3)


def test_the_baseline_is_timed_alone_and_its_ratio_is_one(data):
    result = evaluate.evaluate_candidate(SPACE.baseline, data, TRAIN, TrialPlan(TIMING), trained)
    assert result.ok and result.accuracy == 0.5
    assert result.step_time_ratio == 1.0 and result.step_time_s > 0 and result.reference_step_time_s == result.step_time_s
    assert result.timing == TIMING.to_dict() and result.timing_cached is False


def test_a_candidate_is_timed_against_the_baseline_in_its_lock(data, monkeypatch):
    locked = []
    real_lock = timings.DeviceLock

    class RecordingLock(real_lock):
        def __enter__(self):
            locked.append(self.key)
            return super().__enter__()

    monkeypatch.setattr(timings, "DeviceLock", RecordingLock)  # relative_step_time takes it
    result = evaluate.evaluate_candidate(WIDER, data, TRAIN, candidate_plan(), trained)
    assert result.ok and locked == ["cpu"]
    assert 0 < result.step_time_ratio < 100 and result.reference_step_time_s > 0
    assert result.step_time_ratio_iqr >= 0 and result.timing_cached is False


def test_a_candidate_over_the_parameter_limit_is_pruned_before_timing_or_training(data, monkeypatch):
    monkeypatch.setattr(evaluate, "relative_step_time", lambda *a, **k: pytest.fail("timed a pruned candidate"))
    result = evaluate.evaluate_candidate(WIDER, data, TRAIN, candidate_plan(max_params_ratio=0.01), never_trained)
    assert result.status == STATUS_PRUNED and result.step_time_ratio is None
    assert result.failure_reason.startswith("parameters ") and "over max_params_ratio 0.01" in result.failure_reason


def test_a_candidate_over_the_step_time_limit_is_pruned_after_timing_before_training(data):
    result = evaluate.evaluate_candidate(WIDER, data, TRAIN, candidate_plan(max_step_time_ratio=1e-6),
                                         never_trained)
    assert result.status == STATUS_PRUNED and result.step_time_ratio > 1e-6
    assert "over max_step_time_ratio 1e-06" in result.failure_reason


def test_a_cache_hit_skips_timing(data, monkeypatch):
    monkeypatch.setattr(evaluate, "relative_step_time", lambda *a, **k: pytest.fail("timed a cached architecture"))
    cached = {"step_time_ratio": 0.8, "step_time_ratio_iqr": 0.01, "step_time_s": 0.004,
              "reference_step_time_s": 0.005}
    result = evaluate.evaluate_candidate(WIDER, data, TRAIN, candidate_plan(cached=cached), trained)
    assert result.ok and result.timing_cached is True and result.step_time_ratio == 0.8
    assert result.step_time_s == 0.004 and result.timing == TIMING.to_dict()


def test_timing_that_fails_is_a_failed_trial_not_a_dead_campaign(data, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(evaluate, "relative_step_time", out_of_memory)
    result = evaluate.evaluate_candidate(WIDER, data, TRAIN, candidate_plan(), never_trained)
    assert result.status == "failed" and result.failure_reason.startswith("while timing: out of memory")


def test_a_plan_travels_as_plain_data():
    plan = candidate_plan(cached={"step_time_ratio": 0.9}, max_step_time_ratio=1.5)
    assert TrialPlan.from_dict(plan.to_dict()) == plan
    assert TrialPlan.from_dict(TrialPlan(TIMING).to_dict()) == TrialPlan(TIMING)


# --- in a campaign: the ratio enters the reward, the cache is filled and reused, constraints prune ---------------


def config(study: str, storage: str, **changes) -> CampaignConfig:
    return CampaignConfig(data="synthetic:num_images=200,image_size=32", trials=4, controller="random", study=study,
                          storage=storage, timing=TIMING, train=TrainConfig(epochs=1, batch_size=32), **changes)


def test_a_second_campaign_on_the_storage_times_nothing_it_has_timed_before(tmp_path, monkeypatch):
    storage = f"sqlite:///{tmp_path / 'cache.db'}"
    timed = []
    real = evaluate.relative_step_time
    monkeypatch.setattr(evaluate, "relative_step_time", lambda *a, **k: timed.append(a[0].name) or real(*a, **k))
    campaigns.run_campaign(config("first", storage), LocalExecutor(trainer=trained), out=io.StringIO())
    assert len(timed) == 3  # the three candidates; the baseline times itself alone
    first = optuna.load_study(study_name="first", storage=storage)
    for trial in first.trials[1:]:
        attributes = trial.user_attrs
        assert attributes["normalized_step_time"] == attributes["step_time_ratio"]
        expected = 0.5 * attributes["step_time_ratio"] ** -0.07 * (attributes["parameters"] / first.trials[0]
                                                                    .user_attrs["parameters"]) ** -0.05
        assert trial.value == pytest.approx(expected)
    timed.clear()
    # The same seed proposes the same architectures in a new study on the same storage: all from the cache.
    outcome = campaigns.run_campaign(config("second", storage), LocalExecutor(trainer=trained), out=io.StringIO())
    assert outcome.finished == 4 and timed == []
    second = optuna.load_study(study_name="second", storage=storage)
    assert [trial.user_attrs["timing_cached"] for trial in second.trials[1:]] == [True] * 3
    assert [t.user_attrs["step_time_ratio"] for t in second.trials[1:]] == [
        t.user_attrs["step_time_ratio"] for t in first.trials[1:]]
    assert CACHE_STUDY in optuna.get_all_study_names(storage)  # beside the campaigns, shared by them


def key(spec=None, reference=None, **changes):
    """The step-time cache's key of the default timing, with ``changes`` to its keyword arguments."""
    arguments = {"num_classes": 10, "in_channels": 3, "device": "cpu X", "timing": TIMING.to_dict(),
                 "recipe": TRAIN.to_dict(), **changes}
    return cache_key(spec or WIDER, reference or SPACE.baseline, **arguments)


def test_the_cache_keys_on_everything_that_changes_the_timed_work():
    base = key()
    assert base == key(dataclasses.replace(WIDER, name="renamed"))
    assert base == key(recipe=dataclasses.replace(TRAIN, learning_rate=0.5, epochs=9, seed=3).to_dict())
    others = [key(SPACE.sample(4)), key(reference=SPACE.sample(5)), key(device="cpu Y"),
              key(timing=dataclasses.replace(TIMING, image_size=64).to_dict()),
              key(num_classes=50_000), key(in_channels=1),  # the head and the stem (issue 25)
              key(recipe=dataclasses.replace(TRAIN, optimizer="adamw").to_dict()),
              key(recipe=dataclasses.replace(TRAIN, momentum=0.0).to_dict())]
    assert base not in others and len(set(others)) == len(others)


GOOD_ENTRY = {"step_time_ratio": 0.8, "step_time_ratio_low": 0.79, "step_time_ratio_high": 0.81,
              "step_time_ratio_iqr": 0.01, "step_time_s": 0.008, "reference_step_time_s": 0.01, "step_time_pairs": 12,
              "step_time_discarded_pairs": 0, "step_time_measure_s": 4.2, "step_time_stopped_by": "precision"}


@pytest.mark.parametrize("entry", [
    {**GOOD_ENTRY, "step_time_ratio": "fast"}, {**GOOD_ENTRY, "step_time_ratio": -1.0},
    {**GOOD_ENTRY, "step_time_ratio": 0}, {**GOOD_ENTRY, "step_time_ratio": float("nan")},
    {**GOOD_ENTRY, "step_time_ratio": float("inf")}, {**GOOD_ENTRY, "step_time_ratio": 1e-300},
    {**GOOD_ENTRY, "step_time_ratio": True}, {**GOOD_ENTRY, "step_time_s": None},
    {**GOOD_ENTRY, "step_time_ratio_iqr": -0.1}, {}, [0.8], "0.8",
    {**GOOD_ENTRY, "step_time_ratio_low": 0.85}, {**GOOD_ENTRY, "step_time_ratio_high": None},
    {**GOOD_ENTRY, "step_time_ratio_low": "low"}, {**GOOD_ENTRY, "step_time_pairs": 0},
    {**GOOD_ENTRY, "step_time_pairs": True}, {**GOOD_ENTRY, "step_time_discarded_pairs": 1.5},
    {**GOOD_ENTRY, "step_time_measure_s": float("nan")}, {**GOOD_ENTRY, "step_time_stopped_by": "luck"},
    {key: value for key, value in GOOD_ENTRY.items() if key != "step_time_stopped_by"},  # an entry before issue 27
], ids=repr)
def test_a_bad_cache_entry_is_ignored_with_one_warning(tmp_path, entry):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'cache.db'}")
    optuna.create_study(study_name=CACHE_STUDY, storage=storage).set_user_attr("s:bad", entry)
    warnings = []
    cache = StepTimeCache(storage, warn=warnings.append)
    assert cache.get("s:bad") is None
    assert len(warnings) == 1 and CACHE_STUDY in warnings[0] and "s:bad" in warnings[0], warnings
    cache.put("s:bad", GOOD_ENTRY)  # the next measurement replaces it
    assert cache.get("s:bad") == GOOD_ENTRY and len(warnings) == 1


def test_an_entry_without_an_interval_is_good(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'cache.db'}")
    cache = StepTimeCache(storage, warn=pytest.fail)
    few = {**GOOD_ENTRY, "step_time_ratio_low": None, "step_time_ratio_high": None, "step_time_pairs": 4,
           "step_time_stopped_by": "pairs"}
    cache.put("s:few", few)
    assert cache.get("s:few") == few


@pytest.mark.parametrize("stopped_by", ["cap", "contention"])
def test_an_imprecise_measurement_is_not_cached(tmp_path, stopped_by):
    """A timing that hit its cap stays on its trial, marked; the next trial of the architecture times again."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'cache.db'}")
    cache = StepTimeCache(storage, warn=pytest.fail)
    cache.put("s:rough", {**GOOD_ENTRY, "step_time_stopped_by": stopped_by})
    assert cache.get("s:rough") is None and optuna.get_all_study_names(storage) == []


def test_a_null_cache_entry_reads_as_none_and_is_replaced(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'cache.db'}")
    optuna.create_study(study_name=CACHE_STUDY, storage=storage).set_user_attr("s:null", None)
    cache = StepTimeCache(storage, warn=pytest.fail)
    assert cache.get("s:null") is None
    cache.put("s:null", GOOD_ENTRY)
    assert cache.get("s:null") == GOOD_ENTRY


def test_a_campaign_times_again_what_the_cache_holds_badly(tmp_path, capfd):
    """A foreign or damaged entry (another client wrote the storage) is never a reward's input (issue 25)."""
    storage = f"sqlite:///{tmp_path / 'bad.db'}"
    campaigns.run_campaign(config("first", storage), LocalExecutor(trainer=trained), out=io.StringIO())
    cache_study = optuna.load_study(study_name=CACHE_STUDY, storage=storage)
    for name in cache_study.user_attrs:
        cache_study.set_user_attr(name, {**GOOD_ENTRY, "step_time_ratio": 1e-300})
    capfd.readouterr()
    campaigns.run_campaign(config("second", storage), LocalExecutor(trainer=trained), out=io.StringIO())
    second = optuna.load_study(study_name="second", storage=storage)
    assert [trial.user_attrs["timing_cached"] for trial in second.trials[1:]] == [False] * 3
    assert all(1e-3 < trial.user_attrs["step_time_ratio"] < 1e3 for trial in second.trials[1:])
    assert capfd.readouterr().err.count("ignored (step_time_ratio 1e-300 is outside the plausible") == 3


def test_a_machinery_fault_interrupts_its_trial_and_stops_the_campaign(tmp_path, monkeypatch):
    """Issue 25: the timing lock replaced by a symlink after the baseline was measured failed trials 1-3 as the
    candidates' ("4/4 trials finished", exit 0), and the controllers learned reward 0 for them. The fault is the
    machine's: the trial is interrupted (no FAIL, not counted), the campaign stops, and a resume runs it again."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    lock = timings.DeviceLock(torch.device("cpu")).path

    def planting_a_link(spec, data, config, rungs=None):  # the baseline trains after its timing: plant it then
        lock.unlink()
        lock.symlink_to(tmp_path / "elsewhere")
        return trained(spec, data, config)

    storage = f"sqlite:///{tmp_path / 'fault.db'}"
    out = io.StringIO()
    with pytest.raises(campaigns.MachineryError, match=r"trial 1: while timing: TimingLockError: timing lock .* is a "
                                                       r"symbolic link.*runs again on resume"):
        campaigns.run_campaign(config("fault", storage), LocalExecutor(trainer=planting_a_link), out=out)
    study = optuna.load_study(study_name="fault", storage=storage)
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "FAIL"]
    assert study.trials[1].user_attrs["interrupted"] is True and "not the candidate's fault" in out.getvalue()
    lock.unlink()  # fixed: the resume re-runs trial 1 and finishes the budget
    outcome = campaigns.run_campaign(config("fault", storage), LocalExecutor(trainer=trained), out=io.StringIO())
    study = optuna.load_study(study_name="fault", storage=storage)
    assert outcome.finished == 4 and study.trials[2].user_attrs["requeued_from"] == 1
    assert [trial.state.name for trial in study.trials].count("COMPLETE") == 4


def test_a_result_the_reward_refuses_never_leaves_its_trial_running(tmp_path):
    """Issue 25: a result that failed the reward's checks at the end of a trial left it RUNNING, on every resume."""
    def impossible(spec, data, config, rungs=None):
        result = trained(spec, data, config)
        return result if spec.name == SPACE.baseline.name else dataclasses.replace(result, accuracy=1.5)

    storage = f"sqlite:///{tmp_path / 'refused.db'}"
    with pytest.raises(campaigns.MachineryError, match="trial 1: its result could not be recorded: accuracy"):
        campaigns.run_campaign(config("refused", storage), LocalExecutor(trainer=impossible), out=io.StringIO())
    study = optuna.load_study(study_name="refused", storage=storage)
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "FAIL"]
    assert study.trials[1].user_attrs["interrupted"] is True


def test_reading_the_cache_creates_nothing(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'empty.db'}")
    assert StepTimeCache(storage).get("s:anything") is None
    assert optuna.get_all_study_names(storage) == []


def test_candidates_over_a_constraint_are_pruned_counted_and_taught_to_the_controllers(tmp_path):
    storage = f"sqlite:///{tmp_path / 'limits.db'}"
    out = io.StringIO()
    campaigns.run_campaign(config("limits", storage, max_params_ratio=1e-3), LocalExecutor(trainer=trained), out=out)
    study = optuna.load_study(study_name="limits", storage=storage)
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "PRUNED", "PRUNED", "PRUNED"]
    assert all("over max_params_ratio 0.001" in t.user_attrs["failure_reason"] for t in study.trials[1:])
    assert out.getvalue().count("PRUNED parameters") == 3
    # Both learning controllers take a constraint-pruned trial as a failure (failed_reward), not as nothing.
    policy = PolicyGradientSampler(SPACE)
    policy.update(study)
    assert policy.policy_probabilities() != PolicyGradientSampler(SPACE).policy_probabilities()
    evolution = RegularizedEvolutionSampler(SPACE, population_size=4)
    evolution.update(study)
    assert [reward for _, reward in evolution.population()] == [study.trials[0].value, 0.0, 0.0, 0.0]


def test_a_trial_interrupted_while_training_is_not_timed_again_when_it_runs_once_more(tmp_path, monkeypatch):
    """Its S/S0 reached the cache when it was measured, before training: the re-run reads it."""
    storage = f"sqlite:///{tmp_path / 'resume.db'}"
    timed = []
    real = evaluate.relative_step_time
    monkeypatch.setattr(evaluate, "relative_step_time", lambda *a, **k: timed.append(a[0]) or real(*a, **k))

    def interrupted_in_training(spec, data, config, rungs=None):
        if spec.name != SPACE.baseline.name:
            raise KeyboardInterrupt  # Ctrl-C while the first candidate trains
        return trained(spec, data, config)

    with pytest.raises(KeyboardInterrupt):
        campaigns.run_campaign(config("resume", storage), LocalExecutor(trainer=interrupted_in_training),
                               out=io.StringIO())
    assert len(timed) == 1
    campaigns.run_campaign(config("resume", storage), LocalExecutor(trainer=trained), out=io.StringIO())
    study = optuna.load_study(study_name="resume", storage=storage)
    rerun = next(t for t in study.trials if t.user_attrs.get("requeued_from") == 1)
    assert rerun.state.name == "COMPLETE" and rerun.user_attrs["timing_cached"] is True
    assert len(timed) == 1 + 2  # the two new candidates only


def test_a_rung_result_reaches_the_policy_with_the_trial_s_step_time(data):
    """The trainer's judge passes each rung's result, with S/S0 as the final result gets it, to ``on_rung`` and
    returns its answer; without rungs in the plan, or without ``on_rung``, the trainer gets none."""
    cached = {"step_time_ratio": 0.8, "step_time_ratio_iqr": 0.01, "step_time_s": 0.004,
              "reference_step_time_s": 0.005}
    asked, answers, handed = [], [], []

    def trainer(spec, data, config, rungs=None) -> EvalResult:
        handed.append(rungs)
        if rungs is not None:
            answers.append(rungs.judge(EvalResult(status=STATUS_OK, accuracy=0.3, parameters=1, epochs_completed=1)))
        return trained(spec, data, config)

    def on_rung(result: EvalResult) -> bool:
        asked.append(result)
        return False

    result = evaluate.evaluate_candidate(WIDER, data, TRAIN, candidate_plan(cached=cached, rungs=(1,)), trainer,
                                         on_rung=on_rung)
    assert result.ok and handed[0].epochs == (1,) and answers == [False]
    assert asked[0].accuracy == 0.3 and asked[0].parameters == 1 and asked[0].epochs_completed == 1
    assert asked[0].step_time_ratio == 0.8 and asked[0].timing_cached is True and asked[0].device.startswith("cpu")
    evaluate.evaluate_candidate(WIDER, data, TRAIN, candidate_plan(cached=cached), trainer, on_rung=on_rung)
    evaluate.evaluate_candidate(WIDER, data, TRAIN, candidate_plan(cached=cached, rungs=(1,)), trainer)
    assert handed[1:] == [None, None] and len(asked) == 1
