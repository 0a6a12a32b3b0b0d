"""benchmarks/bench_asha.py: its compute accounting, survival and summary on hand-made trials, its tables from a
hand-made study, and one --quick run end to end."""

import contextlib
import io
import json
import re

import optuna
import pytest

from nas import records

from bench_support import script_module

BASELINE_SPEC = {"name": "tiny", "stem_channels": 8, "stages": [{"op": "mbconv", "num_layers": 1}]}


@pytest.fixture(scope="module")
def bench():
    yield from script_module("bench_asha")


def arch(layers):
    """A candidate's spec dict (no name) that differs from the others by ``layers``."""
    return {"name": "", "stem_channels": 16, "stages": [{"op": "mbconv", "num_layers": layers}]}


def trial(number, state, *, value=None, spec=None, epochs=0, wall=0.0, status=None, role="candidate", **attributes):
    user_attrs = {records.ROLE: role, "epochs_completed": epochs, records.WALL_TIME_S: wall}
    if spec is not None:
        user_attrs[records.SPEC] = spec
        user_attrs[records.BLOCK_STRINGS] = [f"mb_r{spec['stages'][0]['num_layers']}"]
    if status is not None:
        user_attrs[records.STATUS] = status
    if state == "COMPLETE":
        user_attrs.update({records.REWARD: value, records.NORMALIZED_STEP_TIME: 0.5,
                           records.NORMALIZED_PARAMETERS: 2.0, records.ACCURACY: value})
    user_attrs.update(attributes)
    return optuna.trial.FrozenTrial(
        number=number, trial_id=number, state=optuna.trial.TrialState[state], value=value,
        datetime_start=None, datetime_complete=None, params={}, distributions={}, user_attrs=user_attrs,
        system_attrs={}, intermediate_values={},
    )


def full_arm_trials():
    """Baseline and four candidates, 3 epochs each; candidate 2 (layers 2) wins."""
    return [
        trial(0, "COMPLETE", value=0.80, spec=BASELINE_SPEC, epochs=3, wall=3.0, status="ok", role="baseline"),
        trial(1, "COMPLETE", value=0.85, spec=arch(1), epochs=3, wall=4.0, status="ok"),
        trial(2, "COMPLETE", value=0.90, spec=arch(2), epochs=3, wall=5.0, status="ok"),
        trial(3, "COMPLETE", value=0.70, spec=arch(3), epochs=3, wall=6.0, status="ok"),
        trial(4, "COMPLETE", value=0.75, spec=arch(4), epochs=3, wall=2.0, status="ok"),
    ]


def halving_arm_trials(winner_fate="stopped"):
    """The same candidates under halving: two stopped at epoch 1, one constraint-pruned, one failure, one trial an
    interrupted driver left (not counted) and its re-run. Candidate 2 is stopped at epoch 1 or completes."""
    fate = (trial(2, "PRUNED", spec=arch(2), epochs=1, wall=1.5, status="stopped", stopped_at_epoch=1)
            if winner_fate == "stopped" else trial(2, "COMPLETE", value=0.85, spec=arch(2), epochs=3, wall=5.0,
                                                   status="ok"))
    return [
        trial(0, "COMPLETE", value=0.80, spec=BASELINE_SPEC | {"name": "tiny"}, epochs=3, wall=3.0, status="ok",
              role="baseline"),
        trial(1, "COMPLETE", value=0.86, spec=arch(1), epochs=3, wall=4.0, status="ok"),
        fate,
        trial(3, "PRUNED", spec=arch(3), epochs=1, wall=2.0, status="stopped", stopped_at_epoch=1),
        trial(4, "PRUNED", spec=arch(4), status="pruned", failure_reason="over max_params_ratio"),
        trial(5, "FAIL", spec=arch(5), status="failed", wall=0.5),
        trial(6, "FAIL", spec=arch(6), interrupted=True),
        trial(7, "PRUNED", spec=arch(6), epochs=1, wall=0.5, status="stopped", stopped_at_epoch=1),
    ]


def arms(bench, winner_fate="stopped", seed=0, walls=(100.0, 40.0)):
    full = bench.summarize_arm("full", seed, [bench.TrialRecord.from_trial(t) for t in full_arm_trials()],
                               campaign_wall_s=walls[0])
    halving = bench.summarize_arm("halving", seed,
                                  [bench.TrialRecord.from_trial(t) for t in halving_arm_trials(winner_fate)],
                                  campaign_wall_s=walls[1])
    return full, halving


def test_compute_counts_every_trial_and_the_baseline(bench):
    full, halving = arms(bench)
    assert (full.candidates, full.epochs, full.proxy_wall_s, dict(full.stopped)) == (4, 15, 20.0, {})
    # candidates: 1, 2, 3, 4 (pruned), 5 (failed), 7 (the re-run); not the interrupted 6 nor the baseline
    assert halving.candidates == 6
    assert halving.stopped == {1: 3}
    assert halving.epochs == 3 + 3 + 1 + 1 + 0 + 0 + 0 + 1
    assert halving.proxy_wall_s == pytest.approx(3.0 + 4.0 + 1.5 + 2.0 + 0.5 + 0.5)
    assert full.winner.number == 2 and halving.winner.number == 1  # best COMPLETE by reward; PRUNED never wins


def test_the_winner_is_the_earlier_trial_on_a_tie_and_none_without_complete_trials(bench):
    trials = [trial(0, "COMPLETE", value=0.5, spec=arch(1), epochs=1), trial(1, "COMPLETE", value=0.5, spec=arch(2))]
    assert bench.summarize_arm("full", 0, map(bench.TrialRecord.from_trial, trials)).winner.number == 0
    failed = [trial(0, "FAIL", spec=arch(1), status="failed")]
    assert bench.summarize_arm("full", 0, map(bench.TrialRecord.from_trial, failed)).winner is None


def test_survival_follows_the_architecture_whatever_its_name(bench):
    full, halving = arms(bench, "stopped")
    assert bench.survival(full, halving) == bench.Survival("stopped", 1, False)
    assert bench.survival(full, halving).describe() == "no: stopped at epoch 1"
    full, halving = arms(bench, "completed")
    assert bench.survival(full, halving) == bench.Survival("completed", None, False)  # trial 1 (0.86) wins there, not 2 (0.85)
    assert bench.survival(full, halving).describe() == "yes, not its winner"
    # the baseline's spec carries the backbone's name in one arm and not in the other: the same architecture
    assert bench.architecture_key(BASELINE_SPEC) == bench.architecture_key(BASELINE_SPEC | {"name": ""})
    assert bench.architecture_key(arch(1)) != bench.architecture_key(arch(2))


def test_survival_of_a_winner_the_halving_arm_also_picked_or_never_proposed(bench):
    full = bench.summarize_arm("full", 0, map(bench.TrialRecord.from_trial, full_arm_trials()[:2]))  # 1 wins
    _, halving = arms(bench)
    assert bench.survival(full, halving) == bench.Survival("completed", None, True)
    assert bench.survival(full, halving).describe() == "yes, its winner"
    other = bench.summarize_arm("halving", 0, map(bench.TrialRecord.from_trial, halving_arm_trials()[:1]))
    assert bench.survival(full, other).describe() == "no: not proposed"


def test_reference_reward_uses_the_trials_own_s_and_p_and_the_campaigns_exponents(bench):
    full, _ = arms(bench)
    exponents = bench.Exponents(step_time=-0.07, params=-0.05)
    expected = 0.95 * 0.5 ** -0.07 * 2.0 ** -0.05
    assert bench.reference_reward(0.95, full.winner, exponents) == pytest.approx(expected)
    assert bench.reference_reward(None, full.winner, exponents) is None
    assert bench.Exponents.from_campaign({"step_time_exponent": -0.1, "params_exponent": 0.0}) == \
        bench.Exponents(-0.1, 0.0)


def seed_result(bench, seed, full_reference, halving_reference, *, walls=(100.0, 40.0), fate="stopped"):
    full, halving = arms(bench, fate, seed, walls)
    return bench.SeedResult(seed, {"full": full, "halving": halving},
                            {"full": {"accuracy": full_reference}, "halving": {"accuracy": halving_reference}})


def test_summary_savings_differences_spread_and_target(bench):
    factor = 0.5 ** -0.07 * 2.0 ** -0.05  # every winner here has S/S0 0.5 and P/P0 2
    seeds = [seed_result(bench, 0, 0.90, 0.89), seed_result(bench, 1, 0.93, 0.93, walls=(90.0, 30.0))]
    summary = bench.summarize(seeds)
    assert summary.savings["epochs"] == (15 / 9, 15 / 9)
    assert summary.savings["proxy_wall_s"] == pytest.approx((20 / 11.5, 20 / 11.5))
    assert summary.savings["campaign_wall_s"] == pytest.approx((2.5, 3.0))
    assert summary.mean_savings["campaign_wall_s"] == pytest.approx(2.75)
    assert summary.differences == pytest.approx((-0.01 * factor, 0.0))
    assert summary.spread == pytest.approx(0.03 * factor)
    assert summary.met is False  # within the spread, but 15/9 = 1.67x fewer epochs, not 2.5x
    assert "NOT MET" in bench.target_line(summary) and "1.67x fewer epochs" in bench.target_line(summary)


def test_the_target_is_met_with_enough_saving_within_the_spread_and_not_below_it(bench, monkeypatch):
    monkeypatch.setattr(bench, "TARGET_SAVING", 1.5)
    seeds = [seed_result(bench, 0, 0.90, 0.89), seed_result(bench, 1, 0.93, 0.93)]
    assert bench.summarize(seeds).met is True
    seeds = [seed_result(bench, 0, 0.90, 0.80), seed_result(bench, 1, 0.93, 0.93)]  # 0.10 below, spread 0.03
    assert bench.summarize(seeds).met is False
    seeds = [seed_result(bench, 0, 0.90, None), seed_result(bench, 1, 0.93, 0.93)]
    assert bench.summarize(seeds).met is None
    assert "UNDECIDED" in bench.target_line(bench.summarize(seeds))


def test_tables_name_each_arm_and_the_verdict(bench):
    seeds = [seed_result(bench, 0, 0.90, 0.89), seed_result(bench, 1, 0.93, 0.93)]
    text = bench.render(seeds, {"controller": "random", "trials": 5, "epochs": 3})
    assert "### seed 0" in text and "### seed 1" in text and "### summary" in text
    assert "| halving | 6 | 1: 3 | 9 | 11.5 | 40.0 | mb_r1 | 0.8600 | 0.8900 |" in text
    assert "| full budget | 4 | - | 15 | 20.0 | 100.0 | mb_r2 | 0.9000 | 0.9000 |" in text
    assert "no: stopped at epoch 1" in text and "identical sequence of candidates" in text
    assert "0/2 survived" in text and "target: at least 2.5x" in text


def test_table_only_reads_the_studies_and_state_of_an_out_dir(bench, tmp_path, capsys):
    for arm, trials in (("full", full_arm_trials()), ("halving", halving_arm_trials())):
        study = optuna.create_study(storage=bench.storage_url(tmp_path, arm, 0), study_name=bench.study_name(arm, 0),
                                    direction="maximize")
        study.set_user_attr(records.CAMPAIGN, {"step_time_exponent": -0.07, "params_exponent": -0.05})
        for frozen in trials:
            study.add_trial(optuna.trial.create_trial(state=frozen.state, value=frozen.value,
                                                      user_attrs=frozen.user_attrs))
    winner = bench.architecture_key(arch(2))
    state = {"settings": {"seeds": [0], "controller": "random"},
             "campaigns": {"full/0": {"wall_s": 100.0}, "halving/0": {"wall_s": 25.0}},
             "references": {f"0/{winner}": {"accuracy": 0.95}}}
    (tmp_path / bench.STATE_FILE).write_text(json.dumps(state))
    before = sorted(path.name for path in tmp_path.iterdir())
    assert bench.main(["--table-only", "--out-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "| full budget | 4 | - | 15 | 20.0 | 100.0 | mb_r2 | 0.9000 | 0.9500 |" in text
    assert "| 0 | 1.67x | 1.74x | 4.00x |" in text
    assert sorted(path.name for path in tmp_path.iterdir()) == before  # read-only: nothing written


def test_an_out_dir_in_use_is_refused(bench, tmp_path):
    (tmp_path / "something").write_text("")
    with pytest.raises(SystemExit, match="not an empty directory"):
        bench.main(["--quick", "--out-dir", str(tmp_path)])


@pytest.fixture(scope="module")
def quick_run(bench, tmp_path_factory):
    """One --quick run (both arms, seed 3, in this process), shared by the tests below: its out-dir and output."""
    out_dir = tmp_path_factory.mktemp("bench_asha") / "run"
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        assert bench.main(["--quick", "--seeds", "3", "--workers", "0", "--device", "cpu",
                           "--out-dir", str(out_dir)]) == 0
    return out_dir, output.getvalue()


def test_quick_end_to_end(bench, quick_run, capsys):
    """Both arms of --quick for one seed: the studies, logs, state and table, and the epochs halving saved, on the
    same candidates as the full budget."""
    out_dir, text = quick_run
    state = json.loads((out_dir / bench.STATE_FILE).read_text())
    assert set(state["campaigns"]) == {"full/3", "halving/3"}
    assert {path.name for path in out_dir.iterdir()} == {
        "bench.json", "table.md", "seed3-full.db", "seed3-halving.db", "seed3-full.log", "seed3-halving.log"}
    assert all(campaign["error"] is None for campaign in state["campaigns"].values())
    assert state["references"] and all(ref["status"] == "ok" and ref["epochs"] == 2
                                       for ref in state["references"].values())
    assert (out_dir / bench.TABLE_FILE).read_text() in text
    seeds = bench.collect(out_dir, state)
    for seed in seeds:
        full, halving = seed.arms["full"], seed.arms["halving"]
        assert full.epochs == 4 * 3  # every trial, the baseline included, trained the full 3 epochs
        # the only rung is epoch 1 of 3: each trial stopped there saves 2 epochs (which stop depends on S/S0 timing)
        assert halving.epochs == full.epochs - 2 * sum(halving.stopped.values())
        assert set(halving.stopped) <= {1}
        # the random controller proposes the same candidates in the same order in both arms
        assert [t.architecture for t in full.trials] == [t.architecture for t in halving.trials]
        assert seed.reference_reward("full") is not None
    assert bench.main(["--table-only", "--out-dir", str(out_dir)]) == 0
    assert capsys.readouterr().out == (out_dir / bench.TABLE_FILE).read_text()


def test_full_from_runs_only_the_halving_arm_against_an_earlier_full_arm(bench, quick_run, tmp_path, capsys):
    """--full-from: the earlier run's full arm (study, wall time, references) is copied, not run again; only the
    halving arm runs, with its own settings; a run whose full arm would differ is refused by name, writing nothing."""
    source, _ = quick_run
    source_state = json.loads((source / bench.STATE_FILE).read_text())
    common = ["--quick", "--seeds", "3", "--workers", "0", "--device", "cpu", "--full-from", str(source)]
    for flags, named in ((["--reference-epochs", "3"], "reference_epochs: "), (["--trials", "5"], "trials: study 4"),
                         (["--epochs", "4"], "train.epochs: study 3, now 4"), (["--seeds", "3,4"], "seed(s) [4]")):
        refused = tmp_path / "refused"
        with pytest.raises(SystemExit, match=re.escape(named)):
            bench.main(common + flags + ["--out-dir", str(refused)])
        assert not refused.exists()

    out_dir = tmp_path / "later"
    assert bench.main(common + ["--min-epochs", "2", "--out-dir", str(out_dir)]) == 0
    text = capsys.readouterr().out
    state = json.loads((out_dir / bench.STATE_FILE).read_text())
    assert state["campaigns"]["full/3"] == dict(source_state["campaigns"]["full/3"], reused_from=str(source))
    assert state["campaigns"]["halving/3"]["error"] is None
    assert (out_dir / "seed3-full.db").read_bytes() == (source / "seed3-full.db").read_bytes()
    assert (out_dir / "seed3-full.log").read_bytes() == (source / "seed3-full.log").read_bytes()
    assert all(state["references"][key] == value for key, value in source_state["references"].items())
    [seed] = bench.collect(out_dir, state)
    [earlier] = bench.collect(source, source_state)
    assert seed.arms["full"].trials == earlier.arms["full"].trials
    halving = seed.arms["halving"]
    assert set(halving.stopped) <= {2} and halving.epochs == 4 * 3 - sum(halving.stopped.values())
    assert seed.reference_reward("halving") is not None and seed.reference_reward("full") is not None
    assert f"is the one of `{source}`" in text and "min_epochs 2" in text
