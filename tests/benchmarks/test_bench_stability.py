"""benchmarks/bench_stability.py --fresh-processes (issue 27): the summary arithmetic on hand-made runs, the targets,
and one real measurement in a fresh process."""

from __future__ import annotations

import argparse
import math

import pytest

from bench_support import script_module


@pytest.fixture(scope="module")
def stability():
    yield from script_module("bench_stability")


def run(ratio, low=None, high=None, *, seconds=5.0, pairs=12, discarded=0, stopped_by="precision"):
    return {"step_time_ratio": ratio, "step_time_ratio_low": low, "step_time_ratio_high": high,
            "step_time_measure_s": seconds, "process_s": seconds + 3, "step_time_pairs": pairs,
            "step_time_discarded_pairs": discarded, "step_time_stopped_by": stopped_by}


def test_the_per_process_share_is_what_the_intervals_do_not_explain(stability):
    # The docstring's example: CV 3.0%, half-widths 2.0% (a standard error of 1.02%): 2.8% per process.
    assert stability.per_process_share(0.03, [0.019, 0.02, 0.021]) == pytest.approx(
        math.sqrt(0.03**2 - (0.02 / 1.96) ** 2))
    assert stability.per_process_share(0.005, [0.02]) == 0  # the intervals explain all of it
    assert stability.per_process_share(0.03, []) is None


def test_a_condition_is_summarized_over_its_fresh_processes(stability):
    runs = [run(1.00, 0.98, 1.02), run(1.02, 1.00, 1.04, seconds=7.0, pairs=20, discarded=4),
            run(0.98, stopped_by="cap", seconds=30.0)]
    summary = stability.condition_summary(runs)
    assert summary["median"] == 1.00 and (summary["low"], summary["high"]) == (0.98, 1.02)
    assert summary["cv"] == pytest.approx(0.02)  # sample standard deviation 0.02 over the mean 1.00
    assert summary["half_width"] == pytest.approx(0.0199, abs=1e-4)  # of the two runs with an interval
    assert (summary["seconds"], summary["process_s"], summary["pairs"]) == (7.0, 10.0, 12)
    assert (summary["discarded"], summary["imprecise"]) == (4, 1)


def summary_row(method, load, threads, median, cv):
    return {"pair": "a:b", "method": method, "load": load, "threads": threads, "median": median, "cv": cv}


def test_the_targets_are_judged_at_the_default_thread_count_after(stability):
    rows = [summary_row("after", "quiet", "default", 1.00, 0.015),
            summary_row("after", "co-tenant", "default", 1.02, 0.03),
            summary_row("after", "quiet", 1, 1.00, 0.05), summary_row("after", "co-tenant", 1, 1.10, 0.05),
            summary_row("before", "quiet", "default", 1.00, 0.09),
            summary_row("before", "co-tenant", "default", 1.2, 0.1)]
    moves = stability.co_tenant_moves(rows)
    assert {(move["method"], move["threads"]): round(move["move"], 6) for move in moves} == {
        ("after", "default"): 0.02, ("after", 1): 0.1, ("before", "default"): 0.2}
    verdict = stability.targets(rows, moves)
    assert verdict["met"] is True and "worst 1.5%" in verdict["text"] and "worst 2.0%" in verdict["text"]
    rows[0]["cv"] = 0.025
    assert stability.targets(rows, moves)["met"] is False
    assert stability.targets([row for row in rows if row["threads"] == 1], [])["met"] is None


def test_the_two_methods_are_the_old_fixed_budget_and_the_sequential_one(stability):
    args = argparse.Namespace(image_size=64, batch_size=8, repeats=7, precision=0.02, max_timing_s=30.0)
    before, after = stability.method_settings("before", args), stability.method_settings("after", args)
    assert before["precision"] is None and before["pairs"] == 7 and before["max_stall"] is None
    assert after == {"image_size": 64, "batch_size": 8, "precision": 0.02, "max_seconds": 30.0}


def test_one_measurement_in_a_fresh_process_is_the_campaign_s(stability):
    settings = {"image_size": 16, "batch_size": 2, "warmup": 1, "pairs": 2, "window_s": 0.01, "precision": None,
                "max_stall": None}
    measured = stability.measure_in_fresh_process("tiny", "tiny", settings, 1, "cpu")
    assert measured["threads"] == 1 and measured["device"].startswith("cpu")
    assert measured["step_time_stopped_by"] == "pairs" and measured["step_time_pairs"] == 2
    assert 0.5 < measured["step_time_ratio"] < 2 and measured["process_s"] > measured["step_time_measure_s"]
    with pytest.raises(RuntimeError, match="(?s)the measurement process failed .*no-such-preset"):
        stability.measure_in_fresh_process("no-such-preset", "tiny", settings, 1, "cpu")
