"""The trial record: a result becomes study attributes and comes back unchanged; older studies still read."""

import math

import pytest

from nas import records
from nas.records import Baseline, EpochStats, EvalResult
from search_spaces import presets


def full_result() -> EvalResult:
    history = (EpochStats(1, 2, 2.25, 0.25, 900.0, 32), EpochStats(2, 2, 1.5, 0.5, 1000.0, 32))
    return EvalResult(status=records.STATUS_OK, accuracy=0.75, final_loss=1.5, step_time_s=0.012,
                      step_time_iqr_s=0.001, images_per_second=1000.0, parameters=123_456, macs=7_000_000,
                      peak_memory_bytes=2**20, wall_time_s=3.5, device="cpu (test)", epochs_completed=2,
                      history=history)


def test_a_result_travels_as_json_unchanged():
    result = full_result()
    assert EvalResult.from_json(result.to_json()) == result


def test_attributes_hold_every_measured_field_and_read_back():
    result = full_result()
    attributes = records.result_attributes(result)
    assert attributes[records.STEP_TIME_S] == 0.012 and attributes[records.WALL_TIME_S] == 3.5
    assert attributes[records.LOSS_HISTORY] == [2.25, 1.5] and "history" not in attributes
    assert records.result_from_attributes(attributes) == dataclass_without_history(result)


def dataclass_without_history(result: EvalResult) -> EvalResult:
    return EvalResult(**{**result.to_dict(), "history": ()})


def test_missing_and_nan_values_are_left_out():
    failed = EvalResult(status=records.STATUS_FAILED, failure_reason="non-finite loss: nan", final_loss=math.nan)
    attributes = records.result_attributes(failed)
    assert attributes == {"status": "failed", "failure_reason": "non-finite loss: nan", "epochs_completed": 0,
                          records.LOSS_HISTORY: []}


def test_a_trial_starts_with_its_role_spec_and_the_controller_that_proposed_it():
    spec = presets.get_space("tiny").baseline
    attributes = records.started_attributes(records.ROLE_CANDIDATE, spec, "rl")
    assert attributes == {records.ROLE: "candidate", records.SPEC: spec.to_dict(),
                          records.BLOCK_STRINGS: list(spec.block_strings), records.CONTROLLER: "rl"}
    baseline = records.started_attributes(records.ROLE_BASELINE, spec, "rl")
    assert records.CONTROLLER not in baseline and baseline[records.ROLE] == "baseline"  # no controller proposed it


def test_the_baseline_round_trips_and_a_study_without_one_has_none():
    baseline = Baseline(trial=0, step_time_s=0.02, parameters=1000, accuracy=0.5, macs=10, device="cpu",
                        block_strings=("fused_r1_k3_s1_e1_c16",))
    assert records.study_baseline({records.BASELINE: baseline.to_dict()}) == baseline
    assert records.study_baseline({}) is None


@pytest.mark.parametrize("old, new", [("step_time", "step_time_s"), ("wall_time", "wall_time_s")])
def test_studies_written_before_units_were_in_the_names_still_read(old, new):
    attributes = {"status": "ok", old: 0.5, "accuracy": 0.9}
    assert getattr(records.result_from_attributes(attributes), new) == 0.5
    stored = {"trial": 0, "step_time": 0.02, "parameters": 1000, "accuracy": 0.5}
    assert records.study_baseline({records.BASELINE: stored}).step_time_s == 0.02


def test_the_half_width_of_s_interval_is_relative_to_the_ratio():
    from nas.records import relative_half_width

    assert relative_half_width(0.5, (0.49, 0.52)) == pytest.approx(0.03)
    assert relative_half_width(0.5, None) is None
