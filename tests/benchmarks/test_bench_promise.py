"""benchmarks/bench_promise.py (issue 29): the time-to-target arithmetic on hand-made curves, the verdict, and a
tiny real run that resumes."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from search_spaces import presets
from search_spaces.io import dump_spec

from bench_support import script_module


@pytest.fixture(scope="module")
def promise():
    yield from script_module("bench_promise")


def test_time_to_target_is_linear_between_epochs(promise):
    assert promise.time_to_target([0.80, 0.86, 0.90], [10, 20, 30], 0.88) == pytest.approx(25)  # the docstring's
    assert promise.time_to_target([0.90, 0.95], [10, 20], 0.88) == 10  # there after the first epoch
    assert promise.time_to_target([0.80, 0.86], [10, 20], 0.88) is None  # never
    assert promise.time_to_target([0.80, 0.88], [10, 20], 0.88) == 20  # exactly at an epoch's end


def test_accuracy_at_a_time_is_linear_between_epochs_and_flat_after_the_end(promise):
    assert promise.accuracy_at([0.80, 0.86], [10, 20], 15) == pytest.approx(0.83)
    assert promise.accuracy_at([0.80, 0.86], [10, 20], 40) == 0.86
    assert promise.accuracy_at([0.80, 0.86], [10, 20], 5) is None


def record(arm, seed, accuracies, seconds, parameters=1000):
    return {"key": f"{arm}{seed}", "kind": "train", "arm": arm, "seed": seed, "status": "ok",
            "accuracy": accuracies[-1], "parameters": parameters,
            "curve": [{"epoch": i + 1, "eval_accuracy": a, "train_seconds": seconds} for i, a in enumerate(accuracies)]}


def test_a_winner_twice_as_fast_to_the_baseline_s_accuracy_meets_the_target(promise):
    records = [record("baseline", 0, [0.70, 0.80, 0.86, 0.88], 10), record("baseline", 1, [0.70, 0.82, 0.86, 0.90], 10),
               # the winner: steps half as long (5 s an epoch), a little less accurate per epoch
               record("winner", 0, [0.68, 0.80, 0.86, 0.89], 5), record("winner", 1, [0.68, 0.80, 0.86, 0.89], 5)]
    timing = {"step_time_ratio": 0.5}
    rows = {row["arm"]: row for row in promise.summarize(records, timing)}
    # target 0.89 (the baseline's final mean); the baseline's mean curve 0.70, 0.81, 0.86, 0.89 reaches it at 40 s
    # (4 epochs), the winner's at 4 epochs of 5 s: 20 s, twice as fast, by wall time and by paired step time
    assert rows["winner"]["s to target"] == "20" and rows["baseline"]["s to target"] == "40"
    assert rows["winner"]["speed-up (wall)"] == "2.00x" and rows["winner"]["speed-up (paired)"] == "2.00x"
    assert rows["winner"]["final accuracy"] == "89.00 ± 0.00" and rows["baseline"]["final accuracy"] == "89.00 ± 1.41"
    assert "HOLDS" in promise.verdict(list(rows.values()))


def test_a_winner_trained_for_the_baseline_s_time_that_is_more_accurate_meets_the_target(promise):
    records = [record("baseline", 0, [0.80, 0.90], 10), record("winner", 0, [0.80, 0.85], 5),
               record("winner-equal-time", 0, [0.80, 0.86, 0.89, 0.91], 5)]  # 4 epochs of 5 s: the baseline's 20 s
    rows = promise.summarize(records, {"step_time_ratio": 0.5})
    equal_time = next(row for row in rows if row["arm"] == "winner-equal-time")
    assert equal_time["accuracy at the baseline's time"] == "91.00" and equal_time["S/S0"] == "0.500"
    assert "HOLDS" in promise.verdict(rows) and "best accuracy at the baseline's time 91.00" in promise.verdict(rows)
    records[-1] = record("winner-equal-time", 0, [0.80, 0.86, 0.89, 0.903], 5)  # 0.3 points more: not enough
    assert "does NOT hold" in promise.verdict(promise.summarize(records, {"step_time_ratio": 0.5}))


def test_a_winner_that_never_reaches_the_target_and_is_not_better_at_equal_time_misses_it(promise):
    records = [record("baseline", 0, [0.80, 0.90], 10), record("winner", 0, [0.80, 0.85], 9)]
    rows = promise.summarize(records, {"step_time_ratio": 0.9})
    winner = next(row for row in rows if row["arm"] == "winner")
    assert winner["s to target"] == "not reached" and winner["speed-up (wall)"] == "-"
    assert winner["accuracy at the baseline's time"] == "85.00"  # flat after its end (18 s < 20 s)
    assert "does NOT hold" in promise.verdict(rows)


def test_a_tiny_run_trains_every_arm_on_all_the_data_evaluates_on_the_test_set_and_resumes(promise, tmp_path):
    generator = np.random.default_rng(0)
    labels = np.arange(90) % 3
    images = (generator.integers(0, 60, (90, 16, 16)) + labels[:, None, None] * 80).astype(np.uint8)
    np.savez(tmp_path / "k.npz", x_train=images[:60], y_train=labels[:60], x_test=images[60:], y_test=labels[60:])
    winner = tmp_path / "winner.yaml"
    dump_spec(presets.get_space("tiny").sample_distinct(1, __import__("random").Random(0))[0], winner)
    test_set = f"npz:{tmp_path / 'k.npz'}?images=x_test&labels=y_test"
    argv = ["--data", f"npz:{tmp_path / 'k.npz'}", "--eval-data", test_set,
            "--winner", str(winner), "--epochs", "4", "--seeds", "0", "--min-image-size", "8", "--timing-pairs", "1",
            "--timing-precision", "0", "--device", "cpu", "--results", str(tmp_path / "p.jsonl"),
            "--figure", str(tmp_path / "p.png")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        promise.main(argv)
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    runs = [r for r in records if r["kind"] == "train"]
    assert sorted(r["arm"] for r in runs) == ["baseline", "winner", "winner-equal-time", "winner-progressive"]
    assert all(r["status"] == "ok" and r["train_images"] == 60 and r["eval_images"] == 30 for r in runs), runs
    timing = next(r for r in records if r["kind"] == "timing")
    assert timing["step_time_stopped_by"] == "pairs" and timing["step_time_pairs"] == 2
    equal_time = round(4 / timing["step_time_ratio"])  # the epochs the baseline's time buys the winner
    assert {r["arm"]: len(r["curve"]) for r in runs} == {"baseline": 4, "winner": 4, "winner-progressive": 4,
                                                         "winner-equal-time": equal_time}
    assert all(e["eval_accuracy"] is not None for r in runs for e in r["curve"])
    progressive = next(r for r in runs if r["arm"] == "winner-progressive")
    assert [e["image_size"] for e in progressive["curve"]] == [8, 8, 16, 16]  # 4 stages up to the data's size
    assert "| arm | seeds | parameters | final accuracy |" in out.getvalue() and "target: " in out.getvalue()
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    again = io.StringIO()
    with contextlib.redirect_stdout(again):
        promise.main(argv)
    assert "runs: 0 of 4 to train (4 in" in again.getvalue()  # resumed: nothing trained twice
