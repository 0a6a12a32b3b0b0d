"""Successive halving (ASHA) in campaigns: the rung arithmetic, its settings and flags, and the policy in a campaign
run by the local executor with a deterministic stand-in trainer: who stops where, what a stopped trial records,
and a resumed campaign continuing exactly (a trial promoted before a kill is not re-judged)."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import zlib
from pathlib import Path

import optuna
import pytest

from nas import campaign as campaigns
from nas import evaluate, halving
from nas.campaign import CampaignConfig, CampaignError, TrialPlan
from nas.halving import (
    SchedulerConfig,
    TrialTraining,
    full_epochs,
    halving_summary,
    promotes,
    promotion_cutoff,
    rung_epochs,
)
from nas.local import LocalExecutor
from nas.parser import SEARCH_OVERRIDES, build_parser
from nas.recipe import TimingConfig
from nas.records import EpochStats, EvalResult

pytestmark = pytest.mark.usefixtures("quiet_optuna")


# --- the rung arithmetic ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("min_epochs, reduction_factor, epochs, expected", [
    (1, 3, 10, (1, 3)), (1, 3, 27, (1, 3, 9)), (1, 3, 9, (1, 3)), (1, 2, 8, (1, 2, 4)), (2, 3, 20, (2, 6)),
    (1, 3, 2, (1,)), (3, 3, 3, ()), (4, 2, 5, ()), (4, 2, 8, (4,)), (1, 4, 4, (1,)),
])
def test_rungs_are_min_epochs_times_powers_of_the_factor_that_leave_room(min_epochs, reduction_factor, epochs,
                                                                        expected):
    """No rung in the last 1/reduction_factor of the training: stopping there would save too little."""
    assert rung_epochs(min_epochs, reduction_factor, epochs) == expected


# Rewards arriving at one rung in this order, and whether each goes on: the top max(1, n // factor) of the n
# rewards recorded there so far (its own included) go on; a tie with the cutoff goes on.
ARRIVALS = [0.50, 0.60, 0.40, 0.70, 0.55, 0.65, 0.65, 0.30, 0.66]


@pytest.mark.parametrize("reduction_factor, expected", [
    (3, [True, True, False, True, False, True, True, False, True]),
    (2, [True, True, False, True, False, True, True, False, True]),
    (4, [True, True, False, True, False, False, False, False, True]),
])
def test_arriving_trials_go_on_when_among_the_top_share_of_their_rung(reduction_factor, expected):
    decisions = [promotes(reward, ARRIVALS[: index + 1], reduction_factor) for index, reward in enumerate(ARRIVALS)]
    assert decisions == expected


def test_the_cutoff_is_the_k_th_best_reward_at_the_rung():
    assert promotion_cutoff([0.5], 3) == (0.5, 1)
    assert promotion_cutoff([0.1, 0.9, 0.5, 0.7, 0.3, 0.8], 3) == (0.8, 2)
    with pytest.raises(ValueError, match="rung_rewards"):
        promotion_cutoff([], 3)


# --- settings and flags -----------------------------------------------------------------------------------------

ASHA = {"type": "asha", "min_epochs": 1, "reduction_factor": 3}


def test_the_scheduler_section_round_trips_and_binds_a_resumed_study():
    config = CampaignConfig.from_dict({"train": {"epochs": 9}, "scheduler": ASHA})
    assert config.scheduler == SchedulerConfig(**ASHA) and config.scheduler.enabled
    assert CampaignConfig.from_dict(config.to_dict()) == config
    assert config.proxy_settings()["scheduler"] == ASHA
    assert config.proxy_settings() != config.with_overrides({"reduction_factor": 2}).proxy_settings()
    assert not CampaignConfig().scheduler.enabled and CampaignConfig().to_dict()["scheduler"]["type"] == "none"


@pytest.mark.parametrize("scheduler, epochs, words", [
    ({"eta": 3}, 10, ["unknown scheduler key(s) ['eta']", "'type', 'min_epochs', 'reduction_factor'"]),
    ({"type": "hyperband"}, 10, ["scheduler.type must be one of ('none', 'asha'), got 'hyperband'"]),
    ({"type": "asha", "min_epochs": 0}, 10, ["scheduler.min_epochs must be an integer in [1, 1000], got 0"]),
    ({"type": "asha", "reduction_factor": 1}, 10, ["scheduler.reduction_factor must be an integer in [2, 100]"]),
    ({"type": "asha", "min_epochs": 3}, 3, ["scheduler.min_epochs 3 leaves no rung in train.epochs 3",
                                            "at most epoch 2"]),
    ({"type": "asha", "min_epochs": 4, "reduction_factor": 2}, 7, ["min_epochs 4 leaves no rung", "at most epoch 3"]),
    ([1], 10, ["scheduler must be a mapping"]),
])
def test_bad_scheduler_settings_are_refused_naming_the_field(scheduler, epochs, words):
    with pytest.raises(CampaignError) as error:
        CampaignConfig.from_dict({"train": {"epochs": epochs}, "scheduler": scheduler})
    for word in words:
        assert word in str(error.value)


def test_min_epochs_at_or_above_epochs_is_allowed_without_halving():
    assert CampaignConfig.from_dict({"train": {"epochs": 1}, "scheduler": {"min_epochs": 5}}).scheduler.min_epochs == 5


def test_search_flags_reach_the_scheduler_section():
    args = build_parser().parse_args(["search", "--scheduler", "asha", "--min-epochs", "2", "--reduction-factor",
                                      "4", "--epochs", "12"])
    config = CampaignConfig().with_overrides({name: getattr(args, name) for name in SEARCH_OVERRIDES})
    assert config.scheduler == SchedulerConfig(type="asha", min_epochs=2, reduction_factor=4)
    assert config.train.epochs == 12
    # a flag not given keeps the file's value
    kept = config.with_overrides({"scheduler": None, "min_epochs": None, "reduction_factor": 2})
    assert kept.scheduler == SchedulerConfig(type="asha", min_epochs=2, reduction_factor=2)
    search_help = " ".join(build_parser().commands["search"].format_help().split())
    assert "--reduction-factor N asha: the top 1/N" in search_help and "else 3)" in search_help


def test_a_plan_carries_its_rungs_as_plain_data():
    plan = TrialPlan(TimingConfig(image_size=32, batch_size=8), rungs=(1, 3))
    assert TrialPlan.from_dict(plan.to_dict()) == plan and plan.to_dict()["rungs"] == [1, 3]


# --- the policy in a campaign -----------------------------------------------------------------------------------

EPOCHS = 9  # rungs at epochs 1 and 3
DATA = "synthetic:num_images=200,image_size=32"


def quality(spec) -> float:
    """A deterministic score in [0, 1) per architecture."""
    return (zlib.crc32(" ".join(spec.block_strings).encode()) % 1000) / 1000


def accuracy(spec, epoch: int) -> float:
    """Learning curves that cross: some architectures start fast and end slow."""
    fast = quality(spec) > 0.5
    return round(0.1 + 0.6 * quality(spec) * (epoch / EPOCHS) ** (0.3 if fast else 1.0), 6)


class CurveTrainer:
    """A stand-in proxy training that follows :func:`accuracy` and honours the rungs by asking their judge.

    With ``interrupt``, the trainer's call of that index (the study's trial of that number: one trial per call)
    raises KeyboardInterrupt (Ctrl-C) in the epoch after its first rung."""

    def __init__(self, interrupt: int | None = None) -> None:
        self.calls = 0
        self.interrupt = interrupt

    def __call__(self, spec, data, config, rungs=None) -> EvalResult:
        call, self.calls = self.calls, self.calls + 1
        history: list[EpochStats] = []
        for epoch in range(1, config.epochs + 1):
            if call == self.interrupt and rungs is not None and epoch == rungs.epochs[0] + 1:
                raise KeyboardInterrupt
            history.append(EpochStats(epoch, config.epochs, 1 - accuracy(spec, epoch), accuracy(spec, epoch), 1.0))
            result = EvalResult(status="ok", accuracy=accuracy(spec, epoch), parameters=1000 + call % 3, macs=10,
                                device="cpu", wall_time_s=0.1 * epoch, epochs_completed=epoch, history=tuple(history))
            if rungs is not None and epoch in rungs.epochs and not rungs.judge(result):
                return dataclasses.replace(result, status="stopped", failure_reason=f"stopped at {epoch}")
        return result


def no_timing(spec, data, train, plan, device) -> dict:
    """S/S0 without timing: deterministic per architecture (1 for the baseline), so rewards repeat exactly."""
    ratio = 1.0 if plan.reference is None else 0.8 + 0.4 * quality(spec)
    return {"timing": plan.timing.to_dict(), "step_time_s": 0.01 * ratio, "step_time_ratio": ratio,
            "step_time_ratio_iqr": 0.0, "reference_step_time_s": 0.01, "timing_cached": False}


def asha_config(study: str, storage: str, trials: int) -> CampaignConfig:
    return CampaignConfig.from_dict({
        "data": DATA, "trials": trials, "controller": "random", "study": study, "storage": storage,
        "train": {"epochs": EPOCHS, "batch_size": 32}, "scheduler": ASHA,
    })


def summary(trial: optuna.trial.FrozenTrial) -> tuple:
    """What a resumed campaign must reproduce of a trial."""
    attributes = trial.user_attrs
    return (trial.state.name, trial.params, trial.value, trial.intermediate_values, attributes.get("rungs"),
            attributes.get("stopped_at_epoch"), attributes.get("status"), attributes.get("reward"),
            attributes.get("accuracy"), attributes.get("failure_reason"))


@pytest.fixture
def reference(tmp_path, monkeypatch) -> tuple[optuna.Study, str]:
    """An uninterrupted ASHA campaign of 10 trials, and what it printed."""
    monkeypatch.setattr(evaluate, "_step_time", no_timing)
    storage = f"sqlite:///{tmp_path / 'reference.db'}"
    out = io.StringIO()
    outcome = campaigns.run_campaign(asha_config("reference", storage, 10), LocalExecutor(trainer=CurveTrainer()),
                                     out=out)
    assert outcome.finished == 10
    return optuna.load_study(study_name="reference", storage=storage), out.getvalue()


def test_stopped_trials_are_pruned_with_their_rung_and_reward(reference):
    study, printed = reference
    trials = study.trials
    stopped = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert stopped and any(t.state == optuna.trial.TrialState.COMPLETE for t in trials[1:])
    assert all(rung["promoted"] for rung in trials[0].user_attrs["rungs"])  # the baseline always goes on
    assert [rung["epoch"] for rung in trials[0].user_attrs["rungs"]] == [1, 3]
    for trial in stopped:
        attributes = trial.user_attrs
        last = attributes["rungs"][-1]
        epoch = last["epoch"]
        assert attributes["status"] == "stopped" and attributes["stopped_at_epoch"] == epoch == trial.last_step
        assert not last["promoted"] and all(rung["promoted"] for rung in attributes["rungs"][:-1])
        assert trial.value == last["reward"] == attributes["reward"] == trial.intermediate_values[epoch]
        assert attributes["accuracy"] == last["accuracy"] and attributes["epochs_completed"] == epoch
        assert attributes["loss_history"] == [round(1 - a, 6) for a in
                                              (accuracy(campaigns.studies.trial_spec(trial), e)
                                               for e in range(1, epoch + 1))]
        assert attributes["failure_reason"].startswith(f"stopped by successive halving at epoch {epoch} of 9: "
                                                       f"reward {last['reward']:.4f} below the cutoff ")
        assert "at this rung)" in attributes["failure_reason"]
        assert attributes["normalized_step_time"] == attributes["step_time_ratio"]
    for trial in trials:
        if trial.state == optuna.trial.TrialState.COMPLETE:  # every rung passed, each reported to Optuna
            assert [r["promoted"] for r in trial.user_attrs["rungs"]] == [True, True]
            assert sorted(trial.intermediate_values) == [1, 3] and "stopped_at_epoch" not in trial.user_attrs
    assert printed.count("STOPPED") == len(stopped) and "[10/10]" in printed
    assert "random controller, successive halving at epochs [1, 3], 0/10 trials finished" in printed
    # every decision is the rule applied to the rewards recorded at its rung before it (the arrival order)
    for epoch in (1, 3):
        seen = []
        for trial in trials:
            rung = next((r for r in trial.user_attrs["rungs"] if r["epoch"] == epoch), None)
            if rung is None:
                continue
            seen.append(rung["reward"])
            baseline = trial.number == 0
            assert rung["promoted"] == (baseline or halving.promotes(rung["reward"], seen, 3)), (trial.number, epoch)


def test_a_resumed_campaign_continues_exactly_and_a_promoted_trial_is_not_judged_again(reference, tmp_path,
                                                                                        monkeypatch):
    study, _ = reference
    # the last trial of a shorter budget that was promoted at its first rung: interrupt it just after
    victim = max(t.number for t in study.trials[2:] if t.user_attrs["rungs"][0]["promoted"])
    budget = victim + 1
    storage = f"sqlite:///{tmp_path / 'resumed.db'}"
    config = asha_config("resumed", storage, budget)
    with pytest.raises(KeyboardInterrupt):
        campaigns.run_campaign(config, LocalExecutor(trainer=CurveTrainer(interrupt=victim)), out=io.StringIO())
    judged = []
    real_promotes = campaigns.promotes
    monkeypatch.setattr(campaigns, "promotes", lambda reward, rewards, factor: judged.append(reward) or
                        real_promotes(reward, rewards, factor))
    # the resumed driver's trainer numbers its calls from the re-run: the victim's architecture, trial budget
    trainer = CurveTrainer()
    trainer.calls = victim
    outcome = campaigns.run_campaign(config, LocalExecutor(trainer=trainer), out=io.StringIO())
    assert outcome.finished == budget
    resumed = optuna.load_study(study_name="resumed", storage=storage).trials
    interrupted, rerun = resumed[victim], resumed[victim + 1]
    assert interrupted.user_attrs["interrupted"] and rerun.user_attrs["requeued_from"] == victim
    assert [summary(t) for t in resumed[:victim] + [rerun]] == [summary(t) for t in study.trials[:budget]]
    # the re-run inherited its rung-1 promotion: judged at its second rung only
    first_rung, second_rung = rerun.user_attrs["rungs"]
    assert first_rung["promoted"] and judged == [second_rung["reward"]]


def test_the_halving_module_imports_no_framework():
    """The ledger layer: a driver, a report or a controller can read rungs without torch, Ray or Optuna."""
    code = "import nas.halving, sys\nprint(','.join(m for m in ('torch', 'ray', 'optuna') if m in sys.modules))"
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert result.stdout.strip() == ""


# --- what halving did: one summary from plain values, for the report and bench_asha.py ------------------------------


def complete(epochs: int | None = 10) -> TrialTraining:
    return TrialTraining(complete=True, stopped=False, epochs_completed=epochs)


def stopped(epoch: int | None, recorded: int | None = None) -> TrialTraining:
    return TrialTraining(complete=False, stopped=True, epochs_completed=recorded, stopped_at_epoch=epoch)


NOT_TRAINED = (TrialTraining(complete=False, stopped=False, epochs_completed=2),  # failed after 2 epochs
               TrialTraining(complete=False, stopped=False))  # pruned by a constraint, or still running


def test_the_summary_counts_the_trials_that_trained_and_the_epochs_they_saved():
    """Four complete trials of 10 epochs and five stopped (four at epoch 1, one at 3): 47 of 90 epochs."""
    trials = [complete(), complete(), stopped(1, 1), stopped(1, 1), complete(), stopped(3, 3), stopped(1, 1),
              stopped(1, 1), complete(), *NOT_TRAINED]
    summary = halving_summary(trials, epochs=10, rungs=(9, 1, 3), reduction_factor=3)
    assert (summary.trained, summary.stopped, summary.epochs_trained, summary.full_budget_epochs) == (9, 5, 47, 90)
    assert summary.stopped_at == {1: 4, 3: 1} and list(summary.stopped_at) == [1, 3]
    assert summary.saving == pytest.approx(90 / 47) and summary.rungs == (1, 3, 9)
    assert summary.line() == ("successive halving: 5 of 9 stopped early; 47 of 90 epochs trained, 1.9x less than "
                              "full budget")
    assert summary.settings() == "rungs at epochs 1, 3, 9 of 10, reduction factor 3"


def test_a_trial_that_did_not_record_its_epochs_trained_what_its_state_implies():
    assert complete(None).epochs_trained(10) == 10 and complete(7).epochs_trained(10) == 7
    assert stopped(3).epochs_trained(10) == 3 and stopped(None).epochs_trained(10) is None
    assert stopped(3, recorded=4).epochs_trained(10) == 4  # the record wins
    summary = halving_summary([complete(None), stopped(None), stopped(3)], epochs=10)
    assert summary.epochs_trained == 13 and summary.stopped_at == {3: 1, None: 1}  # an unknown rung last
    assert list(summary.stopped_at) == [3, None]


def test_the_full_epochs_are_the_campaign_s_else_the_longest_complete_training():
    trials = [complete(8), complete(10), stopped(1, 1), stopped(3, 12)]
    assert full_epochs(20, trials) == 20
    for unusable in (None, 0, -5, True, 2.5, "10"):
        assert full_epochs(unusable, trials) == 10  # a stopped trial's record does not count
    assert full_epochs(None, [stopped(1, 1), complete(None)]) is None


def test_without_the_full_epochs_the_budget_is_unknown():
    summary = halving_summary([complete(None), stopped(1, 1)], epochs=None)
    assert summary.full_budget_epochs is None and summary.saving is None and summary.epochs_trained == 1
    assert summary.line() == "successive halving: 1 of 2 stopped early; 1 epochs trained"
    assert summary.settings() == ""
    nothing = halving_summary(NOT_TRAINED, epochs=10)
    assert (nothing.trained, nothing.stopped, nothing.epochs_trained, nothing.saving) == (0, 0, 0, None)
    assert halving_summary([complete()], epochs=10, rungs=(3,)).settings() == "rungs at epoch 3 of 10"
