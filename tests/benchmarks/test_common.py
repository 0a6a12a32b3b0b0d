"""benchmarks/common.py: the rank statistics against values worked out by hand, the table renderer, the results
file that resumes, the worker pool and the --json convention."""

import argparse
import json
import math
import os

import pytest

from benchmarks import common

# --- rank statistics ------------------------------------------------------------------------------------------------

def test_average_ranks_share_the_mean_rank_of_a_tie():
    assert common.average_ranks([3, 1, 3, 2]) == [3.5, 1.0, 3.5, 2.0]
    assert common.average_ranks([5, 5, 5]) == [2.0, 2.0, 2.0]


def test_perfect_and_reversed_orders_depend_on_ranks_only():
    a = [0.1, 0.5, 0.3, 0.9, 0.7]
    same_order = [1.0, 5.0, 3.0, 90.0, 7.0]  # monotone, not linear
    assert common.spearman(a, same_order) == pytest.approx(1.0)
    assert common.kendall_tau_b(a, same_order) == pytest.approx(1.0)
    reversed_order = [-x for x in same_order]
    assert common.spearman(a, reversed_order) == pytest.approx(-1.0)
    assert common.kendall_tau_b(a, reversed_order) == pytest.approx(-1.0)


def test_spearman_with_ties_by_hand():
    # ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4): covariance 4.5, variances 4.5 and 5
    assert common.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(4.5 / 5))
    # ties on both sides: ranks (1.5, 1.5, 3, 4) and (3, 1.5, 1.5, 4), deviations from 2.5 (-1, -1, .5, 1.5) and
    # (.5, -1, -1, 1.5): covariance 2.25, both variances 4.5
    assert common.spearman([1, 1, 2, 3], [2, 1, 1, 3]) == pytest.approx(0.5)


def test_kendall_tau_b_with_ties_by_hand():
    # Pairs of (1, 2, 2, 3) and (1, 3, 2, 2): (0,1) (0,2) (0,3) concordant, (1,3) discordant, (1,2) tied in a,
    # (2,3) tied in b. tau-b = (3 - 1) / sqrt((6 - 1) * (6 - 1)) = 0.4 (scipy.stats.kendalltau says the same).
    assert common.kendall_tau_b([1, 2, 2, 3], [1, 3, 2, 2]) == pytest.approx(0.4)
    # tau-a would be 2 / 6; the tie correction is what makes it tau-b
    assert common.kendall_tau_b([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(2 * 3))
    # (1, 1, 2, 3) and (2, 1, 1, 3): 3 concordant, 1 discordant, one pair tied on each side: 2 / 5
    assert common.kendall_tau_b([1, 1, 2, 3], [2, 1, 1, 3]) == pytest.approx(0.4)


@pytest.mark.parametrize("statistic", [common.spearman, common.kendall_tau_b])
def test_fewer_than_two_values_or_a_constant_side_give_nan(statistic):
    assert math.isnan(statistic([], []))
    assert math.isnan(statistic([1.0], [2.0]))
    assert math.isnan(statistic([1, 1, 1], [1, 2, 3]))
    assert math.isnan(statistic([1, 2, 3], [4, 4, 4]))


@pytest.mark.parametrize("statistic", [common.spearman, common.kendall_tau_b])
def test_unequal_lengths_and_nan_are_refused(statistic):
    with pytest.raises(ValueError, match="lengths 2 and 3"):
        statistic([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="finite"):
        statistic([1, math.nan], [1, 2])


# --- tables ---------------------------------------------------------------------------------------------------------

def test_the_bootstrap_interval_takes_the_central_share_of_resampled_values():
    values = [float(i) for i in range(10)]
    low, high = common.bootstrap_interval(lambda chosen: sum(values[i] for i in chosen) / len(chosen), 10,
                                          resamples=4000, confidence=0.9, seed=1)
    # the mean of 10 draws from 0..9: mean 4.5, sd 2.87 / sqrt(10) = 0.91, so about 4.5 -+ 1.645 x 0.91
    assert 2.8 < low < 3.2 and 5.8 < high < 6.2
    again = common.bootstrap_interval(lambda chosen: sum(values[i] for i in chosen) / len(chosen), 10,
                                      resamples=4000, confidence=0.9, seed=1)
    assert again == (low, high)  # seeded
    assert all(math.isnan(bound) for bound in common.bootstrap_interval(lambda chosen: 1.0, 1))  # one item
    nan_low, nan_high = common.bootstrap_interval(lambda chosen: math.nan, 5, resamples=10)
    assert math.isnan(nan_low) and math.isnan(nan_high)  # no finite value: no interval
    perfect = common.bootstrap_interval(lambda chosen: common.spearman(chosen, chosen), 8, resamples=200)
    assert perfect == (1.0, 1.0)  # a draw with one repeated candidate (NaN) is left out


def test_markdown_table_aligns_columns_and_escapes_bars():
    text = common.markdown_table(["name", "value"], [["a|b", 1.5], ["c", "-"]], align="lr")
    assert text == "| name | value |\n| --- | ---: |\n| a\\|b | 1.5 |\n| c | - |"
    assert common.markdown_table(["x"], []) == "| x |\n| --- |"


def test_markdown_table_refuses_a_row_or_alignment_of_the_wrong_width():
    with pytest.raises(ValueError, match="2 cells, the header 3"):
        common.markdown_table(["a", "b", "c"], [[1, 2]])
    with pytest.raises(ValueError, match="align"):
        common.markdown_table(["a", "b"], [], align="lc")


# --- JSONL results --------------------------------------------------------------------------------------------------

def run_pending(path, jobs):
    """Opens the results file, runs the jobs not in it (recording each) and returns the jobs it ran."""
    results = common.JsonlResults(path)
    ran = []
    for job in results.pending(jobs, key=str):
        ran.append(job)
        results.append({"key": str(job), "value": job * 10})
    return ran


def test_a_rerun_runs_only_the_jobs_not_in_the_file(tmp_path):
    path = tmp_path / "results.jsonl"
    run_pending(path, [1, 2])  # a run that stopped after 2 of the 4 jobs
    assert run_pending(path, [1, 2, 3, 4]) == [3, 4]
    assert run_pending(path, [1, 2, 3, 4]) == []
    assert [record["key"] for record in common.read_json_lines(path)] == ["1", "2", "3", "4"]


def test_the_last_record_of_a_key_wins(tmp_path):
    path = tmp_path / "results.jsonl"
    results = common.JsonlResults(path)
    results.append({"key": "a", "value": 1})
    results.append({"key": "a", "value": 2})
    assert common.JsonlResults(path).records == {"a": {"key": "a", "value": 2}}
    with pytest.raises(ValueError, match="'key'"):
        results.append({"name": "b"})


def test_a_truncated_last_line_is_skipped_and_its_job_runs_again(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    run_pending(path, [1, 2])
    with path.open("a") as file:
        file.write('{"key": "3", "val')  # the line in flight when the run was killed
    assert run_pending(path, [1, 2, 3]) == [3]
    assert "results.jsonl:3: skipping an unreadable line" in capsys.readouterr().err
    # the new record went on a line of its own, not glued to the fragment
    assert path.read_text().splitlines()[2:] == ['{"key": "3", "val', '{"key": "3", "value": 30}']
    assert set(common.JsonlResults(path).records) == {"1", "2", "3"}


def test_reading_a_missing_file_gives_nothing(tmp_path):
    assert common.read_json_lines(tmp_path / "none.jsonl") == []


# --- worker pools ---------------------------------------------------------------------------------------------------

def thread_settings(_task):
    """What a worker was given (a module-level function: spawned workers import it by name)."""
    import torch

    return os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()


def test_spawned_workers_get_the_thread_count_and_every_result():
    assert sorted(common.worker_results(math.sqrt, [1, 4, 9, 16], workers=2)) == [1, 2, 3, 4]
    assert list(common.worker_results(thread_settings, [0, 1], workers=2, threads=1)) == [("1", 1)] * 2


def test_one_worker_runs_in_this_process_in_order_after_the_initializer():
    calls = []
    results = common.worker_results(lambda task: (calls.copy(), task), [3, 1, 2], workers=1,
                                    initializer=calls.append, initargs=("ready",))
    assert list(results) == [(["ready"], 3), (["ready"], 1), (["ready"], 2)]


# --- command line ---------------------------------------------------------------------------------------------------

def test_the_device_default_and_the_json_convention(capsys):
    parser = argparse.ArgumentParser()
    common.add_device_argument(parser)
    common.add_json_argument(parser)
    args = parser.parse_args([])
    assert args.device == common.DEFAULT_DEVICE == "auto" and args.json is False
    with common.human_output(True):
        print("a table for people")
    common.print_json({"b": math.nan, "a": 1})
    captured = capsys.readouterr()
    assert captured.err == "a table for people\n"
    assert captured.out.count("\n") == 1 and json.loads(captured.out) == {"a": 1, "b": pytest.approx(math.nan,
                                                                                                     nan_ok=True)}
    with common.human_output(False):
        print("plain")
    assert capsys.readouterr().out == "plain\n"
