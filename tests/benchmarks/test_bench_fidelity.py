"""benchmarks/bench_fidelity.py: its top-k overlap, its job list, and tiny real runs that resume."""

import contextlib
import io
import json

import numpy as np
import pytest

from search_spaces import presets

from bench_support import script_module


@pytest.fixture(scope="module")
def bench():
    yield from script_module("bench_fidelity")


# --- top-k overlap (the rank statistics are benchmarks.common's: tests/benchmarks/test_common.py) ----------

def test_top_k_overlap(bench):
    reference = [0.9, 0.8, 0.7, 0.1, 0.2]
    assert bench.top_k(reference) == [0, 1, 2]
    assert bench.top_k_overlap(reference, reference) == 3
    assert bench.top_k_overlap([0.1, 0.8, 0.7, 0.9, 0.2], reference) == 2  # 0 fell out, 3 came in
    assert bench.top_k_overlap([0.1, 0.2, 0.3, 0.9, 0.8], reference) == 1
    assert bench.top_k([0.5, 0.5, 0.5, 0.5], 2) == [0, 1]  # ties: the earlier candidate first


def test_reward_balance_says_which_term_decides_the_ranking(bench):
    def measured(step_time_ratio):
        return bench.Measured({}, np.asarray(step_time_ratio), np.ones(len(step_time_ratio)), [], 0)

    # the docstring's example: 0.90 at S/S0 1 against 0.91 at S/S0 2
    table, balanced = bench.reward_balance(measured([1.0, 2.0]), np.array([0.90, 0.91]), scales=(1.0, 0.1))
    assert balanced == pytest.approx(np.log(0.91 / 0.90) / (0.07 * np.log(2)))
    assert list(table["w"]) == pytest.approx([-0.07, -0.007]) and list(table["v"]) == pytest.approx([-0.05, -0.005])
    assert list(table["Spearman reward vs A"]) == pytest.approx([-1.0, 1.0])  # the paper's: S decides; a tenth: A
    assert table["sd log (S/S0)^w (P/P0)^v"][0] == pytest.approx(0.07 * np.log(2) / 2)
    assert table["sd log A"][0] == pytest.approx(np.log(0.91 / 0.90) / 2)

    # a candidate without S/S0 (its timing failed), without A or at A 0 is left out, not a NaN in every column
    table, balanced = bench.reward_balance(measured([1.0, 2.0, np.nan, 1.5, 1.2]),
                                           np.array([0.90, 0.91, 0.95, np.nan, 0.0]))
    assert np.isfinite(table.to_numpy(dtype=float)).all() and balanced == pytest.approx(0.2277, abs=1e-3)
    table, balanced = bench.reward_balance(measured([1.0, 1.0]), np.array([0.90, 0.91]))  # equal S: A decides
    assert np.isnan(balanced) and list(table["Spearman reward vs A"]) == [1.0] * len(bench.EXPONENT_SCALES)


# --- candidates, jobs and the results file ------------------------------------------------------------------------

def test_candidates_are_distinct_with_the_baseline_first(bench):
    space = presets.get_space("tiny")
    specs = bench.candidates(space, 24, sample_seed=0)
    assert len(specs) == 24
    assert specs[0] == space.baseline
    assert len({spec.block_strings for spec in specs}) == 24
    assert bench.candidates(space, 24, sample_seed=0) == specs  # seeded
    assert bench.candidates(space, 24, sample_seed=1)[1:] != specs[1:]


def test_jobs_cover_every_candidate_seed_and_length_longest_first(bench):
    specs = bench.candidates(presets.get_space("tiny"), 3, sample_seed=0)
    jobs = bench.make_jobs(specs, [0, 1], [1, 3, 10], 40, proxy_image_size=24, data_image_size=28)
    assert len(jobs) == 3 * 2 * 4
    assert {(job.candidate, job.seed, job.column) for job in jobs} == {
        (c, s, col) for c in range(3) for s in (0, 1) for col in (1, 3, 10, "reference")}
    assert [job.column for job in jobs[:6]] == ["reference"] * 6
    assert all(job.image_size is None and job.epochs == 40 for job in jobs[:6])
    assert [job.epochs for job in jobs[6:]] == sorted((job.epochs for job in jobs[6:]), reverse=True)
    assert all(job.image_size == 24 for job in jobs[6:])
    assert jobs[0].block_strings == specs[0].block_strings and jobs[0].seed == 0


def run_tiny(bench, results, *extra):
    """main() on 3 candidates x 2 seeds x {1-epoch proxy at 8px, 1-epoch reference at 16px}: its printed text."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bench.main(["--data", "synthetic:num_images=48,image_size=16", "--candidates", "3", "--proxy-epochs", "1",
                    "--reference-epochs", "1", "--proxy-image-size", "8", "--seeds", "0,1", "--timing-pairs", "1",
                    "--timing-precision", "0", "--timing-window-s", "0.01", "--timing-batch-size", "4", "--device",
                    "cpu", "--workers", "1", "--threads", "1", "--results", str(results), *extra])
    return out.getvalue()


def agreement_table(out):
    return out.split("rank agreement")[1].split("jobs:")[0]


@pytest.fixture(scope="module")
def tiny_run(bench, tmp_path_factory):
    results = tmp_path_factory.mktemp("fidelity") / "fidelity.jsonl"
    return results, run_tiny(bench, results)


def test_a_tiny_run_records_every_job_and_prints_the_tables(tiny_run):
    results, out = tiny_run
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert sum(record["kind"] == "timing" for record in records) == 3
    assert sum(record["kind"] == "train" for record in records) == 3 * 2 * 2
    assert all(record["status"] == "ok" for record in records), records
    assert records[3]["column"] == "reference"  # the timings, then the longest jobs first
    assert records[3]["recipe"]["epochs"] == 1 and records[3]["recipe"]["image_size"] is None

    for row in ("| proxy 1 ep vs reference | A | 3 |", "| proxy 1 ep vs reference | reward | 3 |",
                "| ceiling: reference, seed 0 vs 1 | A | 3 |", "| ceiling: reference, seed 0 vs 1 | reward | 3 |",
                "| ceiling: proxy 1 ep, seed 0 vs 1 | A | 3 |", "| ceiling: proxy 1 ep, seed 0 vs 1 | reward | 3 |"):
        assert row in out, out
    assert "| floor: S/S0 and P/P0 alone (A equal) | reward | 3 |" in out
    assert "| # | block strings | P/P0 | S/S0 | A 1 ep | A ref 1 ep | reward ref |" in out
    assert "| 0 | fused_r1_k3_s1_e1_c16 " in out and " | 1.000 | 1.000 | " in out  # the baseline is its own P0, S0
    assert "jobs: 12 of 12 in the results file, 0 failed" in out
    assert "target: the reference's seed-to-seed Spearman of A (the ceiling) >= 0.8: " in out
    assert "target: the 1-epoch proxy's Spearman of A against the reference >= 0.8: " in out
    assert "| comparison | quantity | n | Spearman | Spearman 90% CI | Kendall tau-b |" in out
    assert "| w | v | sd log A | sd log (S/S0)^w (P/P0)^v | Spearman reward vs A |" in out
    assert "| -0.0700 | -0.0500 | " in out and "x the paper's exponents: w " in out
    assert "device: cpu" in out and "at 8px" in out and "at 16px" in out and '"batch_size"' in out


def test_a_rerun_resumes_from_the_file_and_table_only_reprints(bench, tiny_run):
    results, out = tiny_run
    lines = len(results.read_text().splitlines())
    again = run_tiny(bench, results)
    assert "0 of 3 candidates to time" in again and "training: 0 of 12 jobs to run (12 in the results file)" in again
    assert len(results.read_text().splitlines()) == lines  # nothing ran again
    table_only = run_tiny(bench, results, "--table-only")
    assert "S/S0 and P:" not in table_only
    assert agreement_table(table_only) == agreement_table(out)


def test_a_rerun_runs_only_the_missing_jobs(bench, tiny_run, tmp_path):
    results, _ = tiny_run
    lines = results.read_text().splitlines()
    partial = tmp_path / "partial.jsonl"
    partial.write_text("\n".join(lines[:-2]) + "\n")  # as if killed before the last two jobs finished
    assert "2 job(s) not run yet" in run_tiny(bench, partial, "--table-only")
    out = run_tiny(bench, partial)
    assert "training: 2 of 12 jobs to run (10 in the results file)" in out
    assert len(partial.read_text().splitlines()) == len(lines)


def test_failed_jobs_are_counted_not_fatal(bench, tiny_run, tmp_path):
    results, _ = tiny_run
    records = [json.loads(line) for line in results.read_text().splitlines()]
    failed = next(record for record in records if record["kind"] == "train" and record["column"] == "reference"
                  and record["candidate"] == 2 and record["seed"] == 0)
    failed.update(status="failed", failure_reason="out of memory: test", accuracy=None)
    copy = tmp_path / "failed.jsonl"
    copy.write_text(results.read_text() + json.dumps(failed) + "\n")  # the last record of a key wins
    out = run_tiny(bench, copy, "--table-only")
    assert "jobs: 12 of 12 in the results file, 1 failed" in out
    assert "failed: reference 1 ep full size, candidate 2, seed 0: out of memory: test" in out
    assert "| ceiling: reference, seed 0 vs 1 | A | 2 |" in out  # the failed candidate leaves that comparison
    assert "| proxy 1 ep vs reference | A | 3 |" in out  # its mean comes from the seed that ran


def test_references_can_be_evaluated_on_a_test_set_while_proxies_keep_the_hold_out(bench, tmp_path):
    """--eval-data (issue 29): each reference trains on all of --data and is evaluated on the test split; a proxy,
    as a campaign's, on the hold-out of --data; the test set's references are other jobs than hold-out ones."""
    generator = np.random.default_rng(0)
    labels = np.arange(60) % 3
    images = (generator.integers(0, 60, (60, 16, 16)) + labels[:, None, None] * 80).astype(np.uint8)
    np.savez(tmp_path / "k.npz", x_train=images[:48], y_train=labels[:48], x_test=images[48:], y_test=labels[48:])
    test_set = f"npz:{tmp_path / 'k.npz'}?images=x_test&labels=y_test"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bench.main(["--data", f"npz:{tmp_path / 'k.npz'}", "--eval-data", test_set, "--candidates", "2",
                    "--proxy-epochs", "1", "--reference-epochs", "1", "--proxy-image-size", "8", "--seeds", "0",
                    "--timing-pairs", "1", "--timing-precision", "0", "--timing-window-s", "0.01",
                    "--timing-batch-size", "4", "--device", "cpu", "--results", str(tmp_path / "r.jsonl"),
                    "--bootstrap", "50"])
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    trained = [record for record in records if record["kind"] == "train"]
    assert all(record["status"] == "ok" for record in trained), trained
    references = [record for record in trained if record["column"] == "reference"]
    proxies = [record for record in trained if record["column"] != "reference"]
    assert [record["evaluated_on"] for record in references] == [{"data": test_set, "images": 12}] * 2
    assert all(record["evaluated_on"]["data"].startswith("the hold-out of npz:") for record in proxies)
    assert all('"eval_data"' in record["key"] for record in references)
    assert f"references train on all 48 and are evaluated on {test_set}" in out.getvalue()
